"""Model lifecycle against real workers: hot reload on promote (no restart, no failed job,
shared copy-on-write), retire, and shadow scoring. Real Redis, Postgres, celery workers."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import psutil
import pytest
from inferq.common.db import make_engine
from inferq.common.errors import LifecycleRefused, ModelRetired
from inferq.models import lifecycle, registry
from inferq.producer.client import InferenceClient
from sqlalchemy import text

from tests.conftest import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _forest(seed: int, folder: Path) -> tuple[Path, np.ndarray]:
    """A forest of a few tens of MB (deep trees), so memory per child is measurable."""
    from sklearn.ensemble import ExtraTreesClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6000, 8))
    y = (x[:, 0] + rng.normal(scale=1.0, size=len(x)) > 0).astype(int)
    model = ExtraTreesClassifier(n_estimators=60, random_state=seed).fit(x, y)
    path = folder / f"forest-{seed}.joblib"
    joblib.dump(model, path)
    return path, x


def _children(worker) -> list[psutil.Process]:
    return psutil.Process(worker.proc.pid).children()


def _uss_mb(procs: list[psutil.Process]) -> list[float]:
    return [p.memory_full_info().uss / 2**20 for p in procs]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_promote_reaches_running_workers_without_restart(tmp_path, pg_url, redis_url, start_worker):
    """Producers submit continuously while a promote happens: no error row, every row names
    the old or the new version, each thread switches once, and the new version is shared
    copy-on-write by the recycled pool processes (memory measured per child)."""
    from inferq import migrations

    settings = make_settings(
        tmp_path, database_url=pg_url, broker_url=redis_url, reload_interval=1.0,
        alias_cache_seconds=0.5, online_max_delay_ms=2,
    )  # fmt: skip
    migrations.upgrade(settings)
    engine = make_engine(settings)
    store = settings.model_store_dir
    p1, x = _forest(1, tmp_path)
    p2, _ = _forest(2, tmp_path)
    registry.register(engine, store, p1, "forest", "production")
    registry.register(engine, store, p2, "forest")
    model_mb = p2.stat().st_size / 2**20
    workers = [start_worker(settings, concurrency=2, name=f"n{i}") for i in range(2)]

    stop = threading.Event()
    submitted: dict[int, list[str]] = {t: [] for t in range(3)}
    failures: list[BaseException] = []

    def produce(t: int) -> None:
        rng = np.random.default_rng(t)
        try:
            with InferenceClient(settings) as client:
                while not stop.is_set():
                    rows = x[rng.integers(0, len(x), size=4)]
                    submitted[t].extend(client.submit("forest", rows))
                    time.sleep(0.02)
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    try:
        time.sleep(3)
        before = {w.hostname: _uss_mb(_children(w)) for w in workers}
        old_pids = {p.pid for w in workers for p in _children(w)}
        promoted_at = time.time()
        lifecycle.promote(engine, "forest", 2)
        # every node loads @2 in its main process and replaces its pool processes
        _wait(lambda: all("loaded forest@2" in w.output() for w in workers), 15, "reload logs")
        _wait(
            lambda: all(
                len(_children(w)) == 2 and not {p.pid for p in _children(w)} & old_pids
                for w in workers
            ),
            15,
            "recycled pool processes",
        )
        time.sleep(4)  # keep submitting to the new processes
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    assert not failures, failures
    after = {w.hostname: _uss_mb(_children(w)) for w in workers}

    all_ids = [j for ids in submitted.values() for j in ids]
    with InferenceClient(settings) as client:
        results = {r.job_id: r for r in client.wait(all_ids, timeout=60)}
    assert len(results) == len(all_ids) > 300
    assert [r.error for r in results.values() if not r.ok] == []
    assert {r.model_version for r in results.values()} == {1, 2}
    for t, ids in submitted.items():
        versions = [results[j].model_version for j in ids]
        switches = sum(1 for a, b in itertools.pairwise(versions) if a != b)
        assert switches == 1 and versions[0] == 1 and versions[-1] == 2, (t, versions)
    # both nodes served the new version, within seconds of the promote
    with engine.connect() as conn:
        first_new = dict(
            conn.execute(
                text(
                    "SELECT split_part(worker, ':', 1), extract(epoch FROM min(scored_at)) "
                    "FROM predictions WHERE model_version = 2 GROUP BY 1"
                )
            ).all()
        )
    assert len(first_new) == 2
    lag = max(float(v) for v in first_new.values()) - promoted_at
    print(f"promote -> both nodes serving @2: {lag:.2f} s; child USS MB before {before} after "
          f"{after}; model file {model_mb:.1f} MB")  # fmt: skip
    assert lag <= 10
    for w in workers:
        # A message for @2 that reached an old pool process before its recycle was served by
        # a load in that process; that copy went away with it. No process alive now has one.
        lazy = {int(p) for p in re.findall(r"on demand in pid (\d+)", w.output())}
        assert not lazy & {p.pid for p in _children(w)}, "a live pool process holds its own copy"
        # extra memory per child after the promote: at most a quarter of the model
        assert max(after[w.hostname]) <= max(before[w.hostname]) + 0.25 * model_mb, (
            before,
            after,
            model_mb,
        )


def test_retire_refuses_submits_answers_queued_jobs_and_guards_aliases(
    tmp_path, pg_url, redis_url, binary_model, start_worker
):
    """A retired version: submits refused, queued jobs answered with a clear error row,
    aliases and shadows cannot point at it, and the production version cannot be retired."""
    from inferq import migrations

    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url,
                             reload_interval=0.5)  # fmt: skip
    migrations.upgrade(settings)
    engine = make_engine(settings)
    store = settings.model_store_dir
    registry.register(engine, store, binary_model.path, "churn", "production")
    registry.register(engine, store, binary_model.path, "churn", force=True)
    x = binary_model.x.head(5)
    with InferenceClient(settings) as client:
        queued = client.submit("churn", x, version=1)  # no worker yet: waits in the queue
        lifecycle.promote(engine, "churn", 2)
        with pytest.raises(LifecycleRefused, match="alias production points at it"):
            lifecycle.retire(engine, "churn", 2)
        mv = lifecycle.retire(engine, "churn", 1)
        assert mv.status == "retired" and mv.retired_at is not None
        with pytest.raises(LifecycleRefused, match="retired"):
            lifecycle.promote(engine, "churn", 1, force=True)
        with pytest.raises(LifecycleRefused, match="retired"):
            lifecycle.set_shadow(engine, "churn", 1)
        with InferenceClient(settings) as fresh, pytest.raises(ModelRetired, match="churn@1"):
            fresh.submit("churn", x, version=1)
        start_worker(settings, concurrency=1)
        results = client.wait(queued, timeout=60)
        current = client.wait(client.submit("churn", x), timeout=60)
    assert {r.error_code for r in results} == {"retired"}
    assert all("churn@1 is retired" in (r.error or "") for r in results)
    assert all(r.ok and r.model_version == 2 for r in current)
    listed = {m.version: m.status for m in registry.list_models(engine, "churn")}
    assert listed == {1: "retired", 2: "active"}


def test_shadow_scores_beside_primary_and_never_touches_it(
    tmp_path, pg_url, redis_url, binary_model, start_worker
):
    """A shadow version scores the same rows (online and bulk): its outputs land in
    shadow_predictions, the primary rows are unchanged, compare agrees with a recount, and a
    shadow that fails on every row (another input width) leaves every primary row ok."""
    from inferq.models.compare import compare
    from inferq.workers.shadow import PROBE_ROWS
    from sklearn.linear_model import LogisticRegression

    from inferq import migrations

    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url,
                             reload_interval=0.5, shadow_max_ms=1000)  # fmt: skip
    migrations.upgrade(settings)
    engine = make_engine(settings)
    store = settings.model_store_dir
    registry.register(engine, store, binary_model.path, "churn", "production")
    other = LogisticRegression(C=0.01, max_iter=3000).fit(
        binary_model.x, binary_model.model.predict(binary_model.x)
    )
    other_path = tmp_path / "other.joblib"
    joblib.dump(other, other_path)
    registry.register(engine, store, other_path, "churn")  # v2: same features, other weights
    narrow = LogisticRegression().fit(np.random.default_rng(0).normal(size=(50, 3)), [0, 1] * 25)
    narrow_path = tmp_path / "narrow.joblib"
    joblib.dump(narrow, narrow_path)
    registry.register(engine, store, narrow_path, "churn")  # v3: 3 unnamed features
    lifecycle.set_shadow(engine, "churn", 2)
    start_worker(settings, concurrency=1)
    x = binary_model.x.head(60)
    with InferenceClient(settings) as client:
        # The shadow's first call scores at most PROBE_ROWS rows (it has no cost estimate
        # yet); after that, every row of a batch fits its (generous) budget here.
        warm = client.submit("churn", x.head(40))
        assert len(client.wait(warm, timeout=60)) == 40
        _wait(lambda: _shadow_rows(engine, warm) == PROBE_ROWS, 20, "the shadow's probe rows")
        window_start = dt.datetime.now(dt.UTC)
        ids = client.submit("churn", x)
        primary = client.wait(ids, timeout=60)
        assert all(r.ok and r.model_version == 1 for r in primary)
        _wait(lambda: _shadow_rows(engine, ids) == len(ids), 20, "shadow rows")
        with engine.connect() as conn:
            shadow = {
                r.job_id: r
                for r in conn.execute(
                    text("SELECT * FROM shadow_predictions WHERE model_version = 2")
                )
            }
        expected = other.predict_proba(x)[:, 1]
        got = np.array([shadow[j].score for j in ids])
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        assert all(shadow[j].primary_version == 1 for j in ids)
        agreement = np.mean([shadow[j].label == r.label for j, r in zip(ids, primary, strict=True)])
        diffs = np.abs(got - np.array([r.score for r in primary]))
        (pair,) = compare(engine, "churn", primary[0].scored_at.replace(year=2000))
        assert pair.rows == len(ids) + PROBE_ROWS and pair.shadow_version == 2
        (pair,) = compare(engine, "churn", window_start)
        assert pair.rows == len(ids)
        assert pair.label_agreement == pytest.approx(agreement)
        assert pair.score_diff_max == pytest.approx(diffs.max())
        assert pair.score_diff_mean == pytest.approx(diffs.mean())
        assert pair.labelled == 0 and pair.primary_accuracy is None
        # ground truth for half of the jobs: both versions' accuracy on those rows
        truth = binary_model.model.predict(x)[::-1][:30]  # not the primary's labels
        client.feedback(ids[:30], [str(t) for t in truth])
        (pair,) = compare(engine, "churn", window_start)
        assert pair.labelled == 30
        assert pair.primary_accuracy == pytest.approx(
            np.mean([r.label == str(t) for r, t in zip(primary[:30], truth, strict=True)])
        )
        assert pair.shadow_accuracy == pytest.approx(
            np.mean([shadow[j].label == str(t) for j, t in zip(ids[:30], truth, strict=True)])
        )

        lifecycle.set_shadow(engine, "churn", 3)  # fails on every row: other width
        time.sleep(2)  # the worker follows within reload_interval
        ids3 = client.submit("churn", x)
        again = client.wait(ids3, timeout=60)
    assert all(r.ok and r.model_version == 1 for r in again)
    with engine.connect() as conn:
        errors = conn.execute(
            text(
                "SELECT count(*) FROM shadow_predictions WHERE model_version = 3 "
                "AND error IS NOT NULL"
            )
        ).scalar()
    assert errors == PROBE_ROWS  # its first call: a probe; every probed row an error row


def _shadow_rows(engine, ids: list[str]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM shadow_predictions WHERE job_id = ANY(:ids)"),
                {"ids": ids},
            ).scalar()
        )


def test_onnx_and_skops_versions_are_served_by_workers(tmp_path, pg_url, redis_url, start_worker):
    """A mixed-type pipeline optimized to ONNX (parity held) is served with onnxruntime,
    a skops forest with its recorded trusted types, and HistGradientBoosting, which does not
    convert, stays on scikit-learn with the reason recorded. Rows name their runtime."""
    import pandas as pd
    import skops.io as sio
    from inferq.models import gates
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from inferq import migrations

    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url)
    migrations.upgrade(settings)
    engine = make_engine(settings)
    store = settings.model_store_dir
    rng = np.random.default_rng(11)
    n = 600
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(1, 72, n).astype(float),
            "spend": rng.normal(70, 20, n),
            "plan": rng.choice(["basic", "plus", "pro"], n).astype(object),
            "region": rng.choice(["north", "south", "east", "west"], n).astype(object),
        }
    )
    frame.loc[rng.random(n) < 0.1, "spend"] = np.nan
    y = ((frame.tenure < 25) ^ (rng.random(n) < 0.1)).astype(int)
    mixed = make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
            (make_pipeline(SimpleImputer(), StandardScaler()), ["tenure", "spend"]),
        ),
        LogisticRegression(max_iter=1000),
    ).fit(frame, y)
    ref = tmp_path / "reference.csv"
    frame.to_csv(ref, index=False)
    joblib.dump(mixed, tmp_path / "mixed.joblib")
    mv = registry.register(engine, store, tmp_path / "mixed.joblib", "churn", "production",
                           reference=ref)  # fmt: skip
    mv = gates.optimize_version(engine, store, mv, None)
    assert mv.runtime == "onnx" and mv.onnx["status"] == "ok", mv.onnx
    assert mv.onnx["parity"]["label_agreement"] == 1.0

    x = rng.normal(size=(300, 6))
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, x[:, 0] > 0)
    sio.dump(forest, tmp_path / "forest.skops")
    registry.register(engine, store, tmp_path / "forest.skops", "forest", "production",
                      trusted=["sklearn.tree._tree.Tree"])  # fmt: skip
    hgb = HistGradientBoostingClassifier(max_iter=10).fit(x, x[:, 1] > 0)
    joblib.dump(hgb, tmp_path / "hgb.joblib")
    pd.DataFrame(x, columns=[f"x{j}" for j in range(6)]).to_csv(tmp_path / "x.csv", index=False)
    hv = registry.register(engine, store, tmp_path / "hgb.joblib", "hgb", "production",
                           reference=tmp_path / "x.csv")  # fmt: skip
    hv = gates.optimize_version(engine, store, hv, None)
    assert hv.runtime == "sklearn" and hv.onnx["status"] == "failed"
    assert "HistGradientBoostingClassifier" in hv.onnx["reason"]

    start_worker(settings, concurrency=1)
    rows = frame.head(80)
    with InferenceClient(settings) as client:
        churn = client.wait(client.submit("churn", rows), timeout=60)
        trees = client.wait(client.submit("forest", x[:50]), timeout=60)
        boosted = client.wait(client.submit("hgb", x[:20]), timeout=60)
    assert all(r.ok and r.runtime == "onnx" for r in churn)
    np.testing.assert_allclose([r.score for r in churn], mixed.predict_proba(rows)[:, 1], atol=1e-4)
    assert [r.label for r in churn] == [str(v) for v in mixed.predict(rows)]
    assert all(r.ok and r.runtime == "sklearn" for r in trees + boosted)
    np.testing.assert_array_equal([r.score for r in trees], forest.predict_proba(x[:50])[:, 1])


def test_a_first_version_registered_without_alias_is_served_by_its_bare_name(
    tmp_path, pg_url, redis_url, binary_model, regressor_model, start_worker
):
    """A new user registers a classifier pipeline and a regressor with no --alias: a worker
    preloads both (their `latest`) and scores `NAME`; a new version moves `latest` and the
    running worker follows; archiving it moves `latest` back and refuses submits to it."""
    from sklearn.linear_model import Ridge

    from inferq import migrations
    from tests.unit.test_cli import run

    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url,
                             reload_interval=0.5, alias_cache_seconds=0)  # fmt: skip
    migrations.upgrade(settings)
    for path, name in ((binary_model.path, "churn"), (regressor_model.path, "reg")):
        out = run(settings, "models", "register", str(path), "-n", name)
        assert out.returncode == 0 and f"registered {name}@1" in out.stdout, out.stderr
    engine = make_engine(settings)
    worker = start_worker(settings, concurrency=1)
    assert "preloaded 2 model(s) before fork: churn@1, reg@1" in worker.output()
    churn_x, reg_x = binary_model.x.head(20), regressor_model.x[:20]
    with InferenceClient(settings) as client:
        churn = client.wait(client.submit("churn", churn_x), timeout=60)
        first = client.wait(client.submit("reg", reg_x), timeout=60)
        assert all(r.ok and r.model_version == 1 for r in churn + first)
        assert [r.label for r in churn] == [str(v) for v in binary_model.model.predict(churn_x)]
        np.testing.assert_allclose([r.score for r in first], regressor_model.model.predict(reg_x))

        stiffer = Ridge(alpha=50.0).fit(regressor_model.x, regressor_model.model.predict(
            regressor_model.x))  # fmt: skip
        joblib.dump(stiffer, tmp_path / "reg2.joblib")
        assert registry.register(engine, settings.model_store_dir, tmp_path / "reg2.joblib",
                                 "reg").aliases == ["latest"]  # fmt: skip
        _wait(lambda: "loaded reg@2" in worker.output(), 15, "the worker to load reg@2")
        second = client.wait(client.submit("reg", reg_x), timeout=60)
        assert all(r.ok and r.model_version == 2 for r in second)
        np.testing.assert_allclose([r.score for r in second], stiffer.predict(reg_x))

        lifecycle.archive(engine, "reg", 2)
        assert registry.resolve(engine, "reg").version == 1
        back = client.wait(client.submit("reg", reg_x), timeout=60)
        assert all(r.ok and r.model_version == 1 for r in back)
        # (a client that already holds reg@2 sends on; the worker answers `retired` rows)
        with (
            InferenceClient(settings) as fresh,
            pytest.raises(ModelRetired, match="reg@2 is archived"),
        ):
            fresh.submit("reg", reg_x, version=2)
    engine.dispose()
