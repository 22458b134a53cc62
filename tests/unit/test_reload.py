"""How a worker's main process follows the registry (workers/reload.py, WorkerRuntime),
in-process on the embedded SQLite registry with real models: what is loaded, kept, dropped,
and when the pool is recycled."""

from __future__ import annotations

import pytest
from inferq.common.db import make_engine
from inferq.common.errors import ModelRetired
from inferq.models import gates, lifecycle, registry
from inferq.models.lifecycle import serving_state
from inferq.workers import runtime
from inferq.workers.preload import WorkerRuntime
from inferq.workers.reload import ModelWatcher


class _Pool:
    def __init__(self) -> None:
        self.restarts = 0

    def restart(self) -> None:
        self.restarts += 1


class _Worker:
    def __init__(self) -> None:
        self.pool = _Pool()


@pytest.fixture
def setup(sqlite_settings, binary_model):
    engine = make_engine(sqlite_settings)
    store = sqlite_settings.model_store_dir
    for _ in range(4):
        registry.register(engine, store, binary_model.path, "churn", force=True)
    registry.promote(engine, "churn", 1)
    rt = runtime.install(WorkerRuntime(sqlite_settings))
    yield engine, store, rt
    runtime.install(None)  # type: ignore[arg-type]


def test_preload_then_follow_promotes_keeping_one_previous_version(setup):
    engine, _store, rt = setup
    assert rt.preload() == ["churn@1"]
    assert rt.preload_error is None and not rt.unservable
    assert rt.get_model("churn", 1).preloaded
    assert rt.apply_state(serving_state(engine)) is False  # nothing changed: no recycle

    lifecycle.promote(engine, "churn", 2)
    assert rt.apply_state(serving_state(engine)) is True
    assert rt.preloaded_refs == ["churn@1", "churn@2"]  # the previous one stays
    lifecycle.promote(engine, "churn", 3)
    assert rt.apply_state(serving_state(engine)) is True
    assert rt.preloaded_refs == ["churn@2", "churn@3"]  # two promotes old: dropped


def test_retire_shadow_and_baseline_changes(setup, tmp_path, binary_model):
    engine, store, rt = setup
    rt.preload()
    lifecycle.retire(engine, "churn", 4)
    lifecycle.set_shadow(engine, "churn", 2)
    assert rt.apply_state(serving_state(engine)) is True
    with pytest.raises(ModelRetired, match="churn@4 is retired"):
        rt.get_model("churn", 4)
    assert rt.shadow_model("churn", 1).info.version == 2
    assert rt.shadow_model("churn", 2) is None  # a version is never its own shadow
    assert rt.preloaded_refs == ["churn@1", "churn@2"]

    ref = tmp_path / "ref.csv"
    binary_model.x.head(300).to_csv(ref, index=False)
    before = rt.get_model("churn", 1)
    assert before.baseline is None
    gates.baseline_version(engine, store, registry.get_version(engine, "churn", 1), ref, None)
    assert rt.apply_state(serving_state(engine)) is True  # a new baseline reloads the version
    assert rt.get_model("churn", 1).baseline is not None


def test_watcher_recycles_the_pool_only_on_a_change(setup):
    engine, _store, rt = setup
    rt.preload()
    watcher, worker = ModelWatcher.__new__(ModelWatcher), _Worker()
    watcher.failing = False
    assert watcher.round(worker) is False and worker.pool.restarts == 0
    lifecycle.promote(engine, "churn", 2)
    assert watcher.round(worker) is True and worker.pool.restarts == 1
    assert watcher.round(worker) is False and worker.pool.restarts == 1


def test_a_pinned_preload_with_a_baseline_is_not_reloaded_every_round(
    setup, tmp_path, binary_model
):
    """INFERQ_PRELOAD=churn@3 (no alias points at it) with a drift baseline: a change elsewhere
    reloads nothing pinned, so the pool is not recycled at every look at the registry."""
    engine, store, _rt = setup
    ref = tmp_path / "ref.csv"
    binary_model.x.head(300).to_csv(ref, index=False)
    gates.baseline_version(engine, store, registry.get_version(engine, "churn", 3), ref, None)
    rt = runtime.install(WorkerRuntime(_rt.settings.model_copy(update={"preload": "churn@3"})))
    assert rt.preload() == ["churn@3"] and rt.get_model("churn", 3).baseline is not None
    lifecycle.set_shadow(engine, "churn", 2)  # a change the watcher sees
    assert rt.apply_state(serving_state(engine)) is True  # churn@2 loaded as the shadow
    lifecycle.set_shadow(engine, "churn", None)
    held = rt.get_model("churn", 3)
    rt.apply_state(serving_state(engine))
    assert rt.get_model("churn", 3) is held  # not reloaded
