"""Worker-side helpers: which database errors are retried, NUL and odd payloads."""

import datetime as dt

import numpy as np
import psycopg
import pytest
from inferq.common import contract
from inferq.common.errors import ContractError
from inferq.producer.runs import job_ids_for, run_token
from inferq.workers.copybin import copy_payload
from inferq.workers.inference import error_batch
from inferq.workers.tasks import _transient
from sqlalchemy.exc import OperationalError as SAOperationalError


def test_connection_loss_and_deadlocks_are_transient_constraint_errors_are_not():
    assert _transient(psycopg.OperationalError("server closed the connection"))
    assert _transient(psycopg.errors.DeadlockDetected("deadlock"))
    assert _transient(psycopg.errors.AdminShutdown("shutting down"))
    assert _transient(SAOperationalError("x", {}, psycopg.OperationalError("down")))
    assert not _transient(psycopg.errors.UniqueViolation("dup"))
    assert not _transient(psycopg.errors.UndefinedTable("no table"))
    assert not _transient(ValueError("bug"))


def test_nul_characters_never_reach_postgres():
    batch = contract.Batch(model="m", version=1, job_ids=["j"], x=np.zeros((1, 1)),
                           keys=["a\x00b"])  # fmt: skip
    payload = copy_payload(
        error_batch(batch, "bad\x00value", code="invalid_value"), "w", dt.datetime.now(dt.UTC)
    )
    assert b"a\x00b" not in payload and b"bad\x00value" not in payload
    assert "a\ufffdb".encode() in payload
    assert "bad\ufffdvalue".encode() in payload
    (jid,) = job_ids_for("run", ["x\x00y"])
    assert "\x00" not in jid and jid.startswith(run_token("run") + "~")


@pytest.mark.parametrize(
    "field, value",
    [("keys", [1, 2]), ("submitted_at", "yesterday"), ("row_offset", "3")],
)
def test_payload_field_types_are_contract_errors(field, value):
    payload = contract.encode_batch(
        contract.Batch(model="m", version=1, job_ids=["a", "b"], x=np.zeros((2, 1)))
    )
    payload[field] = value
    with pytest.raises(ContractError):
        contract.decode_batch(payload)


def test_watchdog_rule_needs_waiting_work_free_capacity_and_silence():
    from inferq.workers.watchdog import stalled

    assert stalled(waiting=5, free_process=True, idle_for=61, limit=60)
    assert not stalled(waiting=0, free_process=True, idle_for=600, limit=60)  # nothing to do
    assert not stalled(waiting=5, free_process=False, idle_for=600, limit=60)  # busy, not stuck
    assert not stalled(waiting=5, free_process=True, idle_for=59, limit=60)  # not long enough
    assert not stalled(waiting=5, free_process=True, idle_for=600, limit=0)  # turned off
