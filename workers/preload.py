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
from inferq.common.errors import ModelUnavailable
from inferq.common.settings import Settings
from inferq.models import registry
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
        self.deliveries = DeliveryCounter(settings.broker_url, settings.inflight_ledger)
        self.preload_failures: dict[str, str] = {}
        #: Registered versions this worker cannot load (its environment): ref -> problem.
        self.unservable: dict[str, ModelUnavailable] = {}
        self._failed: dict[tuple[str, int], tuple[ModelUnavailable, float]] = {}
        self.health = HealthBoard(settings.broker_url)

    @property
    def engine(self) -> Engine:
        """The engine of this process (a forked child never reuses the parent's connections)."""
        if self._engine is None or self._engine_pid != os.getpid():
            if self._engine is not None:
                self._engine.dispose(close=False)  # parent's pool: forget, don't close
            self._engine = make_engine(self.settings)
            self._engine_pid = os.getpid()
        return self._engine

    def _load(self, mv: registry.ModelVersion, preloaded: bool) -> LoadedModel:
        """Load and describe ``mv``; a failure of this environment raises ModelUnavailable."""
        try:
            estimator = registry.load(self.settings.model_store_dir, mv)
        except Exception as exc:
            raise explain(mv.ref, exc, self.settings.model_store_dir) from exc
        return LoadedModel(ModelInfo.of(mv.name, mv.version, estimator, mv), estimator, preloaded)

    def preload(self) -> list[str]:
        """Load the configured models (default: every 'production' alias); returns their refs."""
        specs = self.settings.preload_specs()
        loaded = []
        try:
            targets: list[registry.ModelVersion] = []
            if specs is None:
                for name, pinned in registry.alias_targets(self.engine):
                    targets.append(registry.get_version(self.engine, name, pinned))
            for spec in specs or []:
                try:
                    name, version, alias = registry.parse_ref(spec)
                    targets.append(registry.resolve(self.engine, name, version, alias))
                except Exception as exc:  # one bad INFERQ_PRELOAD entry must not stop the rest
                    self.preload_failures[spec] = str(exc)
            for mv in targets:
                try:
                    self._preloaded[(mv.name, mv.version)] = self._load(mv, preloaded=True)
                    loaded.append(mv.ref)
                except ModelUnavailable as problem:
                    # Not the jobs' fault: their messages are requeued (never answered) until
                    # a worker that can load the model takes them.
                    self.unservable[mv.ref] = problem
                    self._failed[(mv.name, mv.version)] = (problem, time.monotonic())
            if specs is not None:  # also check what the aliases point at (not preloaded)
                self._check_alias_targets()
        finally:
            # IMPORTANT: close the parent's connections before fork; children open their own.
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        return loaded

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

    @property
    def preloaded_refs(self) -> list[str]:
        """``name@version`` of the models loaded before fork."""
        return [f"{n}@{v}" for n, v in self._preloaded]

    def get_model(self, name: str, version: int) -> LoadedModel:
        """The model for (name, version): preloaded, cached, or loaded now (may raise)."""
        key = (name, version)
        found = self._preloaded.get(key)
        if found is not None:
            return found
        with self._lock:
            if key in self._lazy:
                self._lazy.move_to_end(key)
                return self._lazy[key]
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[1] < RETRY_LOAD_AFTER:
                raise failed[0]  # failed moments ago: don't re-read a big file per message
            mv = registry.get_version(self.engine, name, version)
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
