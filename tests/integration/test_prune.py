"""`inferq db prune` / `inferq db partitions` on the real PostgreSQL server: archive, detach
CONCURRENTLY and drop old days' partitions while a writer keeps inserting into today's."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from inferq.common import partitions
from inferq.common.db import make_engine
from inferq.common.errors import ArchiveMismatch
from inferq.common.settings import Settings
from inferq.ops import archive as arc
from inferq.ops import prune as ops

from inferq import migrations
from tests.conftest import make_settings, settings_env
from tests.unit.test_prune_logic import db_rows, file_rows, same_rows, seed, seed_small_tables

pytestmark = pytest.mark.integration

UTC = dt.UTC
TODAY = partitions.today()
D5, D4, D3 = (TODAY - dt.timedelta(days=d) for d in (5, 4, 3))
THREE_DAYS = dt.timedelta(days=3)  # D5 and D4 go; D3 (and later) stays
CONC = "CONCURRENTLY"


@pytest.fixture(scope="module")
def template(pg_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head once per module; each test gets a copy of it."""
    name = f"inferq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{pg_admin.rsplit('/', 1)[0]}/{name}"
    migrations.upgrade(make_settings(tmp_path_factory.mktemp("tpl"), database_url=url))
    yield name
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg(pg_admin: str, template: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh copy of the migrated database (dropped afterwards)."""
    name = f"inferq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (template,)
        )
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield make_settings(tmp_path, database_url=f"{pg_admin.rsplit('/', 1)[0]}/{name}")
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(pg: Settings) -> Iterator[sa.Engine]:
    engine = make_engine(pg)
    seed(engine, {D5: 40, D4: 30, D3: 20, TODAY: 10})
    yield engine
    engine.dispose()


def names(engine: sa.Engine) -> set[str]:
    """Every partition-named table, attached or not."""
    return {p.name for p in ops.partition_info(engine)}


def of_day(day: dt.date) -> set[str]:
    return {partitions.partition_name(t, day) for t in partitions.PARTITIONED}


def test_prune_with_archive_keeps_every_dropped_row_in_parquet(engine, tmp_path):
    seed_small_tables(engine, dt.datetime.now(UTC) - 2 * THREE_DAYS, dt.datetime.now(UTC))
    before = {(t, d): db_rows(engine, t, d) for t in arc.TABLES for d in (D5, D4)}
    plan = ops.plan(engine, THREE_DAYS)
    assert plan.days == [D5, D4]
    report = ops.prune(engine, plan, tmp_path / "archive", batch_rows=7)  # several batches

    assert names(engine).isdisjoint(of_day(D5) | of_day(D4))
    assert of_day(D3) | of_day(TODAY) <= names(engine)
    for p in report.partitions:
        assert p.dropped and p.exact and p.rows == len(before[p.table, p.day])
        assert same_rows(file_rows(p.archive), before[p.table, p.day]), p.name
        meta = pq.ParquetFile(p.archive).schema_arrow.metadata
        assert (meta[b"inferq.table"], meta[b"inferq.rows"]) == (
            p.table.encode(), str(p.rows).encode()
        )  # fmt: skip
        lineage = json.loads(meta[b"inferq.model_versions"])
        versions = [(m["name"], m["version"], m["sha256"], m["sklearn_version"]) for m in lineage]
        expected = [("m", 1, "sha-1", "1.9.1")] + (
            [("m", 2, "sha-2", "1.9.1")] if p.table == "shadow_predictions" else []
        )
        assert versions == expected
    assert len(db_rows(engine, "predictions", D3)) == 20
    assert {t.table: t.rows for t in report.tables} == {
        "drift_counts": 1, "accuracy_estimates": 1, "scoring_runs": 1
    }  # fmt: skip
    with engine.connect() as conn:
        chunks = conn.execute(sa.text("SELECT run_id FROM scoring_run_chunks")).scalars()
        assert set(chunks) == {"old-running", "new-done", "new-running"}  # cascade


def test_dry_run_changes_nothing_then_prune_without_archive(engine, tmp_path):
    existing = names(engine)
    plan = ops.plan(engine, THREE_DAYS)
    assert {p.name for p in plan.partitions} == of_day(D5) | of_day(D4)
    assert {p.rows for p in plan.partitions if p.table == "predictions"} == {40, 30}
    assert names(engine) == existing and len(db_rows(engine, "predictions", D5)) == 40
    with engine.begin() as conn:  # once analyzed, a dry run shows estimates, marked as such
        conn.execute(sa.text(f"ANALYZE {partitions.partition_name('predictions', D5)}"))
    item = next(p for p in ops.plan(engine, THREE_DAYS).partitions if p.name.startswith("predi"))
    assert (item.rows, item.exact) == (40, False)

    report = ops.prune(engine, plan, None)
    assert all(p.dropped and p.archive is None for p in report.partitions)
    assert names(engine) == existing - of_day(D5) - of_day(D4)
    assert not list(tmp_path.rglob("*.parquet"))


def test_today_and_the_future_are_never_planned(engine):
    for older_than, now in [
        (dt.timedelta(seconds=1), None),
        (dt.timedelta(days=1), dt.datetime.now(UTC) + dt.timedelta(days=30)),  # clock ahead
    ]:
        planned = {p.day for p in ops.plan(engine, older_than, now=now).partitions}
        assert planned and max(planned) < TODAY
    ops.prune(engine, ops.plan(engine, dt.timedelta(seconds=1)))
    assert of_day(TODAY) | of_day(TODAY + dt.timedelta(days=1)) <= names(engine)
    assert len(db_rows(engine, "predictions", TODAY)) == 10


def test_a_rerun_finishes_what_an_interrupted_prune_left(engine, pg, tmp_path):
    archive = tmp_path / "archive"
    plan = ops.plan(engine, THREE_DAYS)
    expected = {(t, d): db_rows(engine, t, d) for t in arc.TABLES for d in (D5, D4)}
    # Crash 1: a half-written (stale) file, its partition still attached.
    stale = arc.archive_path(archive, plan.partitions[0])
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not parquet")
    # Crash 2: a detach interrupted between its two transactions (pending).
    pending = partitions.partition_name("prediction_batches", D5)
    with psycopg.connect(pg.database_url) as reader:
        reader.execute("SELECT count(*) FROM prediction_batches")  # holds it: phase 2 waits
        with psycopg.connect(pg.database_url, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '300ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(
                    f"ALTER TABLE prediction_batches DETACH PARTITION {pending} CONCURRENTLY"
                )
    # Crash 3: detached, not dropped.
    leftover = partitions.partition_name("shadow_predictions", D4)
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE shadow_predictions DETACH PARTITION {leftover}"))

    states = {p.name: p.state for p in ops.plan(engine, THREE_DAYS).partitions}
    assert (states[pending], states[leftover]) == ("detach-pending", "detached")
    report = ops.prune(engine, ops.plan(engine, THREE_DAYS), archive)
    assert names(engine).isdisjoint(of_day(D5) | of_day(D4))
    for p in report.partitions:
        assert same_rows(file_rows(p.archive), expected[p.table, p.day]), p.name
    assert not list(archive.rglob("*.tmp"))


def test_rows_written_by_name_after_the_archive_are_archived_before_the_drop(
    engine, tmp_path, monkeypatch
):
    # Workers COPY straight into a day's partition: a late row can land after its archive.
    late = partitions.partition_name("predictions", D5)
    real_drop = ops._drop

    def late_write_then_drop(job, item):
        if item.name == late:
            with engine.begin() as conn:
                conn.execute(sa.text(
                    f"INSERT INTO {late} (job_id, day, model_name, model_version, status,"
                    " submitted_at, scored_at, worker, batch_id)"
                    f" VALUES ('late', '{D5}', 'm', 1, 'ok', now(), now(), 'w', 'b')"
                ))  # fmt: skip
        real_drop(job, item)

    monkeypatch.setattr(ops, "_drop", late_write_then_drop)
    report = ops.prune(engine, ops.plan(engine, THREE_DAYS), tmp_path)
    item = next(p for p in report.partitions if p.name == late)
    assert item.rows == 41 and "late" in file_rows(item.archive)
    assert late not in names(engine)


def test_an_archive_that_does_not_check_out_drops_nothing(engine, tmp_path, monkeypatch):
    real = pq.ParquetFile

    class Short:
        def __init__(self, path):
            self.metadata = real(path).metadata
            if "prediction_batches" in str(path):
                self.metadata = type("M", (), {"num_rows": self.metadata.num_rows - 1})()

    monkeypatch.setattr(arc.pq, "ParquetFile", Short)
    before = names(engine)
    with pytest.raises(ArchiveMismatch, match="nothing was dropped"):
        ops.prune(engine, ops.plan(engine, THREE_DAYS), tmp_path)
    assert names(engine) == before
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list((tmp_path / "prediction_batches").rglob("*.parquet"))


def test_writers_are_never_blocked_by_a_prune(engine, pg, tmp_path):
    seed(engine, {TODAY - dt.timedelta(days=d): 3000 for d in (7, 6)})  # a longer prune
    stop, errors, stamps = threading.Event(), [], []

    def writer() -> None:
        with psycopg.connect(pg.database_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '1s'")
            i = 0
            while not stop.is_set():
                try:
                    conn.execute(
                        "INSERT INTO predictions (job_id, day, model_name, model_version, status,"
                        " submitted_at, scored_at, worker, batch_id) VALUES"
                        " (%s, %s, 'm', 1, 'ok', now(), now(), 'w', 'b')",
                        (f"live-{i}", TODAY),
                    )
                except Exception as exc:
                    errors.append(exc)
                stamps.append(time.monotonic())
                i += 1
                time.sleep(0.005)

    def analyst(hold: float) -> None:
        # A long read of the parent: a plain DETACH would queue behind it, and every insert
        # behind the DETACH (lock timeout). DETACH ... CONCURRENTLY just waits for it to end.
        with psycopg.connect(pg.database_url) as conn:
            conn.execute("SELECT count(*) FROM predictions")
            time.sleep(hold)

    threads = [threading.Thread(target=writer), threading.Thread(target=analyst, args=(1.5,))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    report = ops.prune(engine, ops.plan(engine, THREE_DAYS), tmp_path / "archive")
    end = time.monotonic()
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    during = [s for s in stamps if start <= s <= end]
    gaps = [b - a for a, b in itertools.pairwise(stamps) if start <= b <= end]
    assert len(during) >= 20 and max(gaps) < 0.5, (len(during), max(gaps, default=None))
    assert end - start >= 1.0  # it did wait for the analyst's read, without blocking the writer
    assert report.partitions and all(p.dropped for p in report.partitions)
    assert len(db_rows(engine, "predictions", TODAY)) == 10 + len(stamps)


# ----- the CLI ---------------------------------------------------------------------------
def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferq", "db", *args],
        env={**settings_env(settings), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_cli_prune_and_partitions(engine, pg, tmp_path):
    out = cli(pg, "prune")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--older-than" in out.stderr and "INFERQ_RETENTION" in out.stderr

    dry = cli(pg, "prune", "--dry-run", "--json", INFERQ_RETENTION="3d")
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True and [d["day"] for d in doc["days"]] == [str(D5), str(D4)]
    assert doc["totals"]["partitions"] == 6 and names(engine) >= of_day(D5)

    refused = cli(pg, "prune", "--older-than", "3d")  # stdin is no terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr and names(engine) >= of_day(D5)

    done = cli(
        pg, "prune", "--older-than", "3d", "--archive", str(tmp_path / "a"), "--yes", "--json"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    dropped = [p for d in doc["days"] for p in d["partitions"]]
    assert doc["dry_run"] is False and len(dropped) == 6 and all(p["dropped"] for p in dropped)
    assert all(Path(p["archive"]).exists() for p in dropped)
    assert names(engine).isdisjoint(of_day(D5) | of_day(D4))

    listed = cli(pg, "partitions", "--json", "--create-ahead", "9")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    ahead = TODAY + dt.timedelta(days=9)
    assert partitions.partition_name("predictions", ahead) in doc["created"]
    days = {p["day"]: p for p in doc["tables"]["predictions"]}
    assert str(D5) not in days and days[str(D3)]["rows"] == 20 and days[str(ahead)]["size_bytes"]

    human = cli(pg, "partitions")
    assert human.returncode == 0 and partitions.partition_name("predictions", D3) in human.stdout
