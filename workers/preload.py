"""Worker runtime: models loaded in the parent before fork, and a per-process DB engine.

Prefork children share the parent's memory copy-on-write, so a model loaded in the parent
(``worker_init``) costs each child only the pages it writes (~10% of the model), while a
model loaded in a child costs its full size per child. Models a message asks for that were
not preloaded are loaded on demand in the child and kept in a small LRU cache.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from inferq.common.db import make_engine
from inferq.common.drift import Baseline, baseline_id
from inferq.common.errors import ModelRetired, ModelUnavailable
from inferq.common.settings import Settings
from inferq.models import registry
from inferq.models.lifecycle import ServingState, serving_sig, serving_state
from inferq.models.registry import DEFAULT_ALIAS
from inferq.workers.deliveries import DeliveryCounter
from inferq.workers.health import RETRY_LOAD_AFTER, HealthBoard, explain
from inferq.workers.inference import ModelInfo
from sqlalchemy import Engine

log = logging.getLogger("inferq.worker")


@dataclass(slots=True)
class LoadedModel:
    """A verified, unpickled estimator and what scoring needs to know about it."""

    info: ModelInfo
    estimator: Any
    preloaded: bool
    #: The version's serving runtime fingerprint (runtime, onnx sha256): a change reloads it.
    runtime_sig: tuple[str, ...] = ("sklearn", "", "")
    #: Verified ONNX bytes when the version is served with onnxruntime (models/optimize.py).
    onnx_bytes: bytes | None = None
    #: The version's drift baseline (common/drift.py), None without a reference sample.
    baseline: Any = None
    baseline_id: str = ""
    _session: Any = None
    _session_pid: int = 0

    @property
    def runtime(self) -> str:
        """'onnx' when an onnxruntime session serves this version, else 'sklearn'."""
        return "onnx" if self.onnx_bytes is not None else "sklearn"

    def scorer(self) -> Any:
        """What to call predict on: the onnxruntime session (created in this process, after
        fork: sessions do not survive fork) or the scikit-learn estimator."""
        if self.onnx_bytes is None:
            return self.estimator
        if self._session is None or self._session_pid != os.getpid():
            from inferq.models.optimize import OnnxModel

            info = self.info
            self._session = OnnxModel(self.onnx_bytes, info.schema, info.task, info.classes)
            self._session_pid = os.getpid()
        return self._session


def limit_threads() -> None:
    """Pin BLAS/OpenMP pools to one thread: parallelism comes from processes, not threads."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


class WorkerRuntime:
    """Per-worker state: settings, model cache, and a DB engine owned by the current process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._preloaded: dict[tuple[str, int], LoadedModel] = {}
        self._lazy: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._engine: Engine | None = None
        self._engine_pid = 0
        self._lock = threading.Lock()
        self.preload_error: str | None = None
        self.deliveries = DeliveryCounter(settings)
        self.preload_failures: dict[str, str] = {}
        #: Registered versions this worker cannot load (its environment): ref -> problem.
        self.unservable: dict[str, ModelUnavailable] = {}
        self._failed: dict[tuple[str, int], tuple[ModelUnavailable, float]] = {}
        self.health = HealthBoard(settings)
        #: From the registry's serving tables (models/lifecycle.py), followed by
        #: workers/reload.py: retired versions are never served; shadows score beside.
        self.retired: frozenset[tuple[str, int]] = frozenset()
        self.shadows: dict[str, int] = {}
        self.state_fingerprint = ""
        self._targets: set[tuple[str, int]] = set()

    @property
    def engine(self) -> Engine:
        """The engine of this process (a forked child never reuses the parent's connections)."""
        if self._engine is None or self._engine_pid != os.getpid():
            if self._engine is not None:
                self._engine.dispose(close=False)  # parent's pool: forget, don't close
            self._engine = make_engine(self.settings)
            self._engine_pid = os.getpid()
        return self._engine

    def dispose_parent_engine(self) -> None:
        """Close the main process's connections before children are forked again."""
        if self._engine is not None and self._engine_pid == os.getpid():
            self._engine.dispose()
            self._engine = None

    def _load(self, mv: registry.ModelVersion, preloaded: bool) -> LoadedModel:
        """Load and describe ``mv``; a failure of this environment raises ModelUnavailable."""
        store = self.settings.model_store_dir
        try:
            estimator = registry.load(store, mv)
            onnx = registry.load_onnx(store, mv) if mv.runtime == "onnx" else None
        except Exception as exc:
            raise explain(mv.ref, exc, store) from exc
        info = ModelInfo.of(mv.name, mv.version, estimator, mv)
        loaded = LoadedModel(info, estimator, preloaded, serving_sig(mv), onnx)
        if mv.baseline:
            try:
                loaded.baseline = Baseline.from_json(mv.baseline)
                loaded.baseline_id = baseline_id(mv.baseline)
            except Exception as exc:  # monitoring must never stop serving
                log.error("%s: drift baseline unreadable, not counted: %s", mv.ref, exc)
        return loaded

    def _wanted(self, state: ServingState) -> set[tuple[str, int]]:
        """The versions to hold in the main process: INFERQ_PRELOAD (aliases followed), else
        what each model's bare name resolves to (production, else latest); plus the shadows of
        those models."""
        specs = self.settings.preload_specs()
        wanted: set[tuple[str, int]] = set()
        per_model: dict[str, dict[str, int]] = {}
        for (n, a), v in state.aliases.items():
            per_model.setdefault(n, {})[a] = v
        if specs is None:
            targets = {n: registry.default_target(held) for n, held in per_model.items()}
            wanted = {(n, v) for n, v in targets.items() if v is not None}
        for spec in specs or []:
            try:
                name, version, alias = registry.parse_ref(spec)
            except Exception as exc:  # one bad INFERQ_PRELOAD entry must not stop the rest
                self.preload_failures[spec] = str(exc)
                continue
            held = per_model.get(name, {})
            target = (
                version
                if version is not None
                else held.get(alias)
                if alias
                else registry.default_target(held)
            )
            if target is None:
                self.preload_failures[spec] = (
                    f"model {name!r} has no alias {alias or DEFAULT_ALIAS!r}"
                )
            else:
                wanted.add((name, target))
        names = {n for n, _ in wanted}
        wanted |= {(n, v) for n, v in state.shadows.items() if n in names}
        return wanted - state.retired

    def preload(self) -> list[str]:
        """Load the configured models (default: each model's production, else latest version);
        returns their refs."""
        try:
            self.apply_state(serving_state(self.engine))
            if self.settings.preload_specs() is not None:  # also check the other alias targets
                self._check_alias_targets()
        finally:
            # IMPORTANT: close the parent's connections before fork; children open their own.
            self.dispose_parent_engine()
        return self.preloaded_refs

    def apply_state(self, state: ServingState) -> bool:
        """Follow the registry (main process): load what is now wanted, drop what is retired
        or two promotes old. True when children must be recycled to share the change."""
        changed = state.retired != self.retired or state.shadows != self.shadows
        self.retired, self.shadows = state.retired, dict(state.shadows)
        self.state_fingerprint = state.fingerprint
        wanted = self._wanted(state)
        for key in sorted(wanted):
            held = self._preloaded.get(key)
            mv = None
            expected = state.runtimes.get(key)
            if held is not None and expected is None:
                # Pinned by INFERQ_PRELOAD (NAME@VERSION) and no alias or shadow target: the
                # serving state does not carry its signature, so read it (only on a change).
                mv = registry.get_version(self.engine, *key)
                expected = serving_sig(mv)
            if held is not None and held.runtime_sig == expected:
                continue
            failed = self._failed.get(key)
            if held is None and failed and time.monotonic() - failed[1] < RETRY_LOAD_AFTER:
                continue  # failed moments ago: don't re-read a big file every round
            mv = mv or registry.get_version(self.engine, *key)
            try:
                self._preloaded[key] = self._load(mv, preloaded=True)
                self.unservable.pop(mv.ref, None)
                self._failed.pop(key, None)
            except ModelUnavailable as problem:
                # Not the jobs' fault: their messages are parked or requeued (never answered)
                # until a worker that can load the model takes them.
                self.unservable[mv.ref] = problem
                self._failed[key] = (problem, time.monotonic())
                self.health.report(problem)
                continue
            changed = True
        # NOTE: the previous targets stay loaded (jobs resolved just before a promote, and
        # bulk runs pinned to the old version, keep sharing it); older ones are dropped.
        keep = (wanted | self._targets) - state.retired
        for key in [k for k in self._preloaded if k not in keep]:
            del self._preloaded[key]
            changed = True
        self._targets = wanted
        return changed

    def _check_alias_targets(self) -> None:
        """Verify (file, sha256, scikit-learn version; no unpickling) every alias target."""
        from inferq.models.artifacts import verify_artifact

        store = self.settings.model_store_dir
        for mv in registry.alias_versions(self.engine):
            if (mv.name, mv.version) in self._preloaded or mv.ref in self.unservable:
                continue
            try:
                verify_artifact(store / mv.artifact, mv.sha256, mv.sklearn_version)
            except Exception as exc:
                self.unservable[mv.ref] = explain(mv.ref, exc, store)

    @property
    def preloaded_keys(self) -> set[tuple[str, int]]:
        """(name, version) of the models loaded before fork."""
        return set(self._preloaded)

    def loaded_models(self) -> list[tuple[tuple[str, int], LoadedModel]]:
        """((name, version), model) of the models loaded before fork (a copy)."""
        return list(self._preloaded.items())

    @property
    def preloaded_refs(self) -> list[str]:
        """``name@version`` of the models loaded before fork."""
        return [f"{n}@{v}" for n, v in sorted(self._preloaded)]

    def shadow_model(self, name: str, version: int) -> LoadedModel | None:
        """The shadow version of ``name`` to score beside ``version``, if any and loadable."""
        shadow = self.shadows.get(name)
        if shadow is None or shadow == version or self.settings.shadow_max_ms <= 0:
            return None
        try:
            return self.get_model(name, shadow)
        except Exception as exc:  # a shadow never fails the primary
            log.warning("shadow %s@%d not available: %s", name, shadow, exc)
            return None

    def get_model(self, name: str, version: int) -> LoadedModel:
        """The model for (name, version): preloaded, cached, or loaded now (may raise)."""
        key = (name, version)
        found = self._preloaded.get(key)
        if found is not None:
            return found
        if key in self.retired:
            raise ModelRetired(name, version)
        with self._lock:
            if key in self._lazy:
                self._lazy.move_to_end(key)
                return self._lazy[key]
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[1] < RETRY_LOAD_AFTER:
                raise failed[0]  # failed moments ago: don't re-read a big file per message
            mv = registry.get_version(self.engine, name, version)
            if mv.status == "retired":
                raise ModelRetired(name, version)
            log.warning("loading %s on demand in pid %d (not preloaded)", mv.ref, os.getpid())
            try:
                loaded = self._load(mv, preloaded=False)
            except ModelUnavailable as problem:
                log.error("%s", problem)
                self._failed[key] = (problem, time.monotonic())
                self.health.report(problem)
                raise
            if self._failed.pop(key, None) is not None:
                log.warning("%s can be served again in pid %d", mv.ref, os.getpid())
                self.health.clear(mv.ref)
            self._lazy[key] = loaded
            while len(self._lazy) > self.settings.max_loaded_models:
                self._lazy.popitem(last=False)
            return loaded
