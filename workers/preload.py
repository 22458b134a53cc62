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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from inferq.common.db import make_engine
from inferq.common.settings import Settings
from inferq.models import registry
from inferq.workers.deliveries import DeliveryCounter
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
        estimator = registry.load(self.settings.model_store_dir, mv)
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
                except Exception as exc:
                    # A broken artifact must not stop the worker serving the other models;
                    # its messages get error rows with this same message when they arrive.
                    self.preload_failures[mv.ref] = str(exc)
        finally:
            # IMPORTANT: close the parent's connections before fork; children open their own.
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        return loaded

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
            mv = registry.get_version(self.engine, name, version)
            log.warning("loading %s on demand in pid %d (not preloaded)", mv.ref, os.getpid())
            loaded = self._load(mv, preloaded=False)
            self._lazy[key] = loaded
            while len(self._lazy) > self.settings.max_loaded_models:
                self._lazy.popitem(last=False)
            return loaded
