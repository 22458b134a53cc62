"""Pins every Celery/kombu/billiard/Flower internal inferq uses (common/compat.py).

An upgrade that moves one fails here, by name, and the worker's start-up check refuses to
run; the real-Redis half (kombu's unacked bookkeeping) is pinned in
tests/integration/test_recovery.py.
"""

import time
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
from inferq.common import compat
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_versions_pass_the_start_up_check():
    compat.check()


def test_a_missing_internal_is_named_at_start_up(monkeypatch):
    from kombu.transport import redis as kredis

    monkeypatch.delattr(kredis.QoS, "restore_by_tag")
    with pytest.raises(compat.IncompatibleInternals, match=r"QoS.restore_by_tag is gone.*kombu"):
        compat.check()


def test_the_redis_layout_is_read_from_kombus_transport():
    from kombu.transport.redis import Channel

    layout = compat.redis_layout()
    assert (layout.unacked, layout.unacked_index) == (Channel.unacked_key, "unacked_index")
    assert layout.queue_keys("q") == [
        "q" if p == 0 else f"q{Channel.sep}{p}" for p in Channel.priority_steps
    ]
    assert layout.queue_keys("q")[1] == "q\x06\x163"  # what Redis holds for priority 3


def test_free_process_reads_billiards_job_cache():
    from billiard.pool import Pool

    pool = Pool(1)
    try:
        view = SimpleNamespace(_pool=pool, num_processes=1)
        assert compat.free_process(view) is True
        job = pool.apply_async(time.sleep, (1.0,))
        assert compat.free_process(view) is False
        job.get(timeout=10)
    finally:
        pool.terminate()
    assert compat.free_process(object()) is None  # a pool we cannot see into


def test_channel_gone_follows_kombus_close_and_collect():
    live = SimpleNamespace(closed=False, connection=SimpleNamespace(client=object()))
    assert not compat.channel_gone(SimpleNamespace(message=SimpleNamespace(channel=live)))
    closed = SimpleNamespace(closed=True, connection=live.connection)
    assert compat.channel_gone(SimpleNamespace(message=SimpleNamespace(channel=closed)))
    collected = SimpleNamespace(closed=False, connection=SimpleNamespace(client=None))
    assert compat.channel_gone(SimpleNamespace(message=SimpleNamespace(channel=collected)))


def test_a_stalled_consumer_error_is_one_celery_treats_as_a_lost_connection():
    from kombu.transport.redis import Transport

    errors = Transport(SimpleNamespace(transport_options={})).connection_errors
    assert issubclass(compat.ConsumerStalled, errors)


def test_the_redis_hooks_patch_kombu_once():
    from kombu.transport import redis as kredis

    compat.install_redis_hooks()
    append, close = kredis.QoS.append, kredis.Channel.close
    compat.install_redis_hooks()
    assert kredis.QoS.append is append and kredis.Channel.close is close
    assert getattr(append, "_inferq", False)


def test_the_shutdown_fix_replaces_asynpool_flush_once_and_keeps_the_original_checkable():
    from celery.concurrency import asynpool

    compat.install_pool_shutdown_fix()
    flush = asynpool.AsynPool.flush
    compat.install_pool_shutdown_fix()
    assert asynpool.AsynPool.flush is flush and flush._inferq
    compat.check()  # pins the original flush's shape, not ours


def test_flowers_queue_list_is_where_inferq_widens_it():
    assert callable(compat.flower_handler().get_active_queue_names)


def test_kombu_is_capped_like_celery_and_the_installed_one_fits():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("kombu", "celery"):
        req = next(Requirement(d) for d in deps if Requirement(d).name == name)
        assert any(s.operator == "<" for s in req.specifier), f"{name} has no upper bound"
        assert req.specifier.contains(version(name)), f"installed {name} outside {req}"
