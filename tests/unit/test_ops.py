"""Pure logic of ops/: the scale-out arithmetic, Flower's command line and queue list."""

from __future__ import annotations

import math

import pytest
from inferq.common.settings import Settings
from inferq.ops.flower import FlowerAuthMissing, flower_command, queue_names
from inferq.ops.scale import QueueLoad, Throughput, build_loads, plan_processes
from pydantic import ValidationError


def _load(queue="bulk", messages=0, per=None, default=10_000, rate=None):
    return QueueLoad(queue, messages, per, default, rate)


def test_backlog_divided_by_throughput_and_target():
    # 30 messages x 10,000 rows = 300k rows at 1,000 rows/s/process = 300 process-seconds.
    plan = plan_processes([_load(messages=30, per=10_000, rate=1000.0)], target_seconds=60)
    assert plan.processes == 5 and plan.exact and plan.backlog_rows == 300_000
    q = plan.queues[0]
    assert q.process_seconds == 300 and q.list_length_per_process == 6  # 60 s x 1000 / 10,000
    # Exactly divisible work is not rounded up by float noise; a little more is.
    assert plan_processes([_load(messages=6, per=100, rate=1.0)], 300).processes == 2
    assert plan_processes([_load(messages=6, per=100, rate=0.999)], 300).processes == 3


def test_queues_add_up_in_process_seconds():
    online = _load("online", messages=100, per=1, default=1000, rate=200.0)  # 0.5 s
    bulk = _load("bulk", messages=3, per=10_000, rate=20_000.0)  # 1.5 s
    plan = plan_processes([online, bulk], target_seconds=1)
    assert plan.processes == 2 and [q.process_seconds for q in plan.queues] == [0.5, 1.5]


def test_empty_queues_need_no_process_even_without_measurements():
    plan = plan_processes([_load("online"), _load("bulk")], 300)
    assert plan.processes == 0 and plan.exact and plan.notes == []


def test_backlog_without_measured_throughput_asks_for_at_least_one():
    plan = plan_processes([_load(messages=4)], 300)
    assert plan.processes == 1 and not plan.exact
    assert plan.queues[0].rows_estimate == 40_000  # configured rows/message used
    assert plan.queues[0].process_seconds is None and "no throughput" in plan.notes[0]
    # A zero rate (nothing but idle) counts as unmeasured, never as a division by zero.
    assert plan_processes([_load(messages=4, rate=0.0)], 300).processes == 1


def test_measured_rows_per_message_beat_the_configured_size():
    plan = plan_processes([_load("online", messages=10, per=1.5, default=1000, rate=3.0)], 1)
    assert plan.backlog_rows == 15 and plan.processes == 5


def test_target_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        plan_processes([], 0)


def test_build_loads_maps_ledger_measurements_to_queues():
    s = Settings(online_queue="on", bulk_queue="bk", batch_size=500, bulk_chunk_size=2000)
    loads = build_loads(s, {"bk": 7}, {"on": Throughput(batches=4, rows=10, busy_seconds=0.5)})
    on, bk = loads
    assert (on.queue, on.messages, on.rows_per_message, on.rows_per_process_second) == (
        "on",
        0,
        2.5,
        20.0,
    )
    assert (bk.messages, bk.rows_per_message, bk.rows_per_process_second, bk.rows) == (
        7,
        None,
        None,
        14_000,
    )
    assert math.isclose(Throughput(0, 0, 0).rows_per_process_second or 0, 0)


def test_flower_command_keeps_the_password_off_the_command_line():
    s = Settings(flower_basic_auth="ops:pa ss:w0rd")
    argv, env = flower_command(s, port=5600, base_env={"FLOWER_UNAUTHENTICATED_API": "true"})
    assert argv[1:] == ["-m", "inferq.ops.flower", "-A", "inferq.workers.app", "flower",
                        "--address=127.0.0.1", "--port=5600"]  # fmt: skip
    assert env["FLOWER_BASIC_AUTH"] == "ops:pa ss:w0rd"
    assert "FLOWER_UNAUTHENTICATED_API" not in env  # an inherited opt-out cannot open the API
    assert not any("pa ss" in a for a in argv)


def test_flower_refuses_no_auth_unless_explicitly_insecure():
    with pytest.raises(FlowerAuthMissing, match="INFERQ_FLOWER_BASIC_AUTH"):
        flower_command(Settings(), base_env={"FLOWER_BASIC_AUTH": "a:b"})
    _, env = flower_command(
        Settings(), insecure_no_auth=True, base_env={"FLOWER_BASIC_AUTH": "a:b"}
    )
    assert env["FLOWER_UNAUTHENTICATED_API"] == "true" and "FLOWER_BASIC_AUTH" not in env


@pytest.mark.parametrize("value", ["nopassword", ":pw", "user:", "a:b,broken"])
def test_flower_basic_auth_setting_must_be_user_colon_password(value):
    with pytest.raises(ValidationError, match="user:password") as info:
        Settings(flower_basic_auth=value)
    assert "pw" not in str(info.value).replace("password", "")  # never echoes the secret


def test_flower_queue_list_always_includes_the_configured_queues():
    workers = {"online@h": {"active_queues": [{"name": "online"}]}, "gone@h": {}}
    assert queue_names(workers, ["online", "bulk"]) == ["bulk", "online"]
    assert queue_names({"x@h": {"active_queues": [{"name": "extra"}]}}, ["online"]) == [
        "extra", "online"
    ]  # fmt: skip
