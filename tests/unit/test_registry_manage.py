"""Registry management on SQLite: duplicates, `latest`, bare-name resolution, archive, describe,
who registered, and the schema-change gate (real scikit-learn models)."""

import joblib
import numpy as np
import pandas as pd
import pytest
from inferq.common.db import make_engine
from inferq.common.errors import (
    AlreadyRegistered,
    InvalidInput,
    LifecycleRefused,
    ModelNotFound,
    ModelRetired,
    SchemaChangeRefused,
)
from inferq.common.rows.schema import Feature, InputSchema
from inferq.models import lifecycle, registry
from inferq.models.lifecycle import ServingState
from inferq.models.schema_diff import schema_changes
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


@pytest.fixture
def engine(sqlite_settings):
    eng = make_engine(sqlite_settings)
    yield eng
    eng.dispose()


def _frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"tenure": rng.integers(1, 60, n).astype(float), "spend": rng.normal(50, 10, n),
         "plan": rng.choice(["basic", "pro"], n)}
    )  # fmt: skip


def _classifier(tmp_path, name: str, columns=("tenure", "spend", "plan"), c: float = 1.0):
    """A churn classifier pipeline over ``columns`` (plan is text), dumped to tmp_path/name."""
    x = _frame()[list(columns)]
    numeric = [col for col in columns if col != "plan"]
    steps = [(StandardScaler(), numeric)] + (
        [(OneHotEncoder(), ["plan"])] if "plan" in columns else []
    )
    model = make_pipeline(make_column_transformer(*steps), LogisticRegression(C=c))
    model.fit(x, (x["tenure"] > 30).astype(int))
    path = tmp_path / name
    joblib.dump(model, path)
    return path


def _regressor(tmp_path, name: str, alpha: float = 1.0, width: int = 4):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, width))
    path = tmp_path / name
    joblib.dump(Ridge(alpha=alpha).fit(x, x.sum(axis=1)), path)
    return path


# ----- schema differences (pure) ---------------------------------------------------------------
def _schema(*features, named=True):
    return InputSchema(tuple(Feature(*f) if isinstance(f, tuple) else Feature(f) for f in features),
                       named=named)  # fmt: skip


def test_schema_changes_name_what_a_caller_would_notice():
    old = _schema(("age", "integer", True), "spend", ("plan", "category"))
    assert schema_changes(old, old) == []
    new = _schema(("age", "boolean", False), ("plan", "category"), "tenure")
    assert schema_changes(old, new) == [
        "added tenure",
        "removed spend",
        "kind changed: age integer -> boolean",
        "no longer accept missing values: age",
    ]
    reordered = _schema(("plan", "category"), ("age", "integer", True), "spend")
    (change,) = schema_changes(old, reordered)
    assert change.startswith("order changed (plan, age, spend moved")
    # accepting missing values where the old one did not is no change for a caller, nor is a
    # number where integers were (the other way round is)
    assert schema_changes(_schema("a"), _schema(("a", "number", True))) == []
    assert schema_changes(_schema(("a", "integer")), _schema("a")) == []
    assert schema_changes(_schema("a"), _schema(("a", "integer"))) == [
        "kind changed: a number -> integer"
    ]


def test_schema_changes_of_unnamed_models_are_by_position():
    old = InputSchema.numeric(3)
    assert schema_changes(old, InputSchema.numeric(3)) == []
    assert schema_changes(old, InputSchema.numeric(5)) == ["3 -> 5 features"]
    wider = _schema("x0", ("x1", "category"), "x2", named=False)
    assert schema_changes(old, wider) == ["kind changed: #1 number -> category"]
    assert schema_changes(old, InputSchema.numeric(3, ["a", "b", "c"]))[0] == (
        "column names: now named (3)"
    )


# ----- duplicates, latest, bare names ----------------------------------------------------------
def test_the_same_file_twice_is_refused_naming_the_version(engine, sqlite_settings, tmp_path):
    store = sqlite_settings.model_store_dir
    path = _classifier(tmp_path, "churn.joblib")
    first = registry.register(engine, store, path, "churn")
    with pytest.raises(AlreadyRegistered) as info:
        registry.register(engine, store, path, "churn")
    assert str(info.value) == (
        f"this file is already churn@1 (sha256 {first.sha256[:12]}); pass --force to register "
        "it again as a new version"
    )
    assert [m.version for m in registry.list_models(engine, "churn")] == [1]  # nothing stored
    assert not (store / "churn" / "2").exists()
    again = registry.register(engine, store, path, "churn", force=True)
    assert again.version == 2 and again.sha256 == first.sha256
    assert registry.register(engine, store, path, "other").ref == "other@1"  # another name: fine
    lifecycle.retire(engine, "churn", 1)
    with pytest.raises(AlreadyRegistered, match=r"already churn@2 "):  # the newest twin
        registry.register(engine, store, path, "churn")


def test_latest_follows_register_retire_and_archive(engine, sqlite_settings, tmp_path):
    store = sqlite_settings.model_store_dir
    paths = [_regressor(tmp_path, f"r{i}.joblib", alpha=float(i + 1)) for i in range(3)]
    v1 = registry.register(engine, store, paths[0], "reg")
    assert v1.aliases == ["latest"]
    assert registry.resolve(engine, "reg").version == 1  # no production: latest
    registry.register(engine, store, paths[1], "reg")
    registry.register(engine, store, paths[2], "reg")
    assert registry.resolve(engine, "reg").version == 3
    assert registry.find(engine, "reg:latest").version == 3
    with pytest.raises(ModelNotFound, match="has no alias 'production'"):
        registry.resolve(engine, "reg", alias="production")  # a named alias is never replaced
    registry.promote(engine, "reg", 1)
    assert registry.resolve(engine, "reg").version == 1  # production wins over latest
    assert registry.resolve(engine, "reg", alias="latest").version == 3

    lifecycle.retire(engine, "reg", 3)  # latest moves back instead of refusing
    assert registry.resolve(engine, "reg", alias="latest").version == 2
    lifecycle.archive(engine, "reg", 2)
    assert registry.resolve(engine, "reg", alias="latest").version == 1
    with pytest.raises(LifecycleRefused, match="alias production points at it"):
        lifecycle.archive(engine, "reg", 1)
    with pytest.raises(LifecycleRefused, match="'latest' alias is moved by the registry"):
        lifecycle.promote(engine, "reg", 1, alias="latest")
    with pytest.raises(LifecycleRefused, match="'latest' alias is moved by the registry"):
        registry.promote(engine, "reg", 1, alias="latest")


def test_a_model_with_every_version_retired_has_no_latest(engine, sqlite_settings, tmp_path):
    store = sqlite_settings.model_store_dir
    registry.register(engine, store, _regressor(tmp_path, "r.joblib"), "reg")
    lifecycle.retire(engine, "reg", 1)
    with pytest.raises(ModelNotFound, match="model 'reg' has no alias 'production'"):
        registry.resolve(engine, "reg")
    assert registry.find(engine, "reg").version == 1  # `models show reg` still shows it


def test_workers_preload_production_else_latest():
    from inferq.workers.preload import WorkerRuntime

    state = ServingState(
        aliases={("a", "production"): 2, ("a", "latest"): 3, ("b", "latest"): 1,
                 ("c", "staging"): 4},
    )  # fmt: skip
    rt = WorkerRuntime.__new__(WorkerRuntime)
    rt.settings = type("S", (), {"preload_specs": staticmethod(lambda: None)})()
    rt.preload_failures = {}
    assert rt._wanted(state) == {("a", 2), ("b", 1)}
    rt.settings = type("S", (), {"preload_specs": staticmethod(lambda: ["b", "a:latest", "c"])})()
    assert rt._wanted(state) == {("b", 1), ("a", 3)}
    assert rt.preload_failures == {"c": "model 'c' has no alias 'production'"}


# ----- archive -----------------------------------------------------------------------------------
def test_archive_retires_hides_and_undo_lists_again(engine, sqlite_settings, tmp_path):
    store = sqlite_settings.model_store_dir
    registry.register(engine, store, _classifier(tmp_path, "a.joblib"), "churn", "production")
    registry.register(engine, store, _classifier(tmp_path, "b.joblib", c=0.1), "churn")
    registry.register(engine, store, _classifier(tmp_path, "c.joblib", c=0.01), "churn")
    lifecycle.set_shadow(engine, "churn", 2)
    with pytest.raises(LifecycleRefused, match="cannot archive churn@2: it is churn's shadow"):
        lifecycle.archive(engine, "churn", 2)
    with pytest.raises(LifecycleRefused, match=r"cannot archive churn@1: alias production"):
        lifecycle.archive(engine, "churn", 1)
    lifecycle.set_shadow(engine, "churn", None)

    mv = lifecycle.archive(engine, "churn", 2)
    assert mv.archived and mv.status == "retired" and mv.retired_at == mv.archived_at
    assert [m.version for m in registry.list_models(engine, "churn", archived=False)] == [1, 3]
    assert [m.version for m in registry.list_models(engine, "churn")] == [1, 2, 3]
    assert ("churn", 2) in lifecycle.serving_state(engine).retired  # workers drop it
    with pytest.raises(ModelRetired, match=r"churn@2 is archived and no longer served; submit "
                       r"to churn \(it resolves to version 1\)"):  # fmt: skip
        lifecycle.check_servable(engine, mv)
    with pytest.raises(LifecycleRefused, match="churn@2 is archived: an alias cannot point"):
        lifecycle.promote(engine, "churn", 2, force=True)
    with pytest.raises(LifecycleRefused, match="churn@2 is archived: it cannot be a shadow"):
        lifecycle.set_shadow(engine, "churn", 2)

    back = lifecycle.archive(engine, "churn", 2, undo=True)
    assert not back.archived and back.status == "retired"  # listed again, never served again
    assert [m.version for m in registry.list_models(engine, "churn", archived=False)] == [1, 2, 3]
    # archiving the latest (no other alias) moves latest back
    lifecycle.archive(engine, "churn", 3)
    assert registry.resolve(engine, "churn", alias="latest").version == 1


# ----- description, tags, who --------------------------------------------------------------------
def test_description_tags_and_who_registered(engine, sqlite_settings, tmp_path, monkeypatch):
    store = sqlite_settings.model_store_dir
    tags = {"team": "risk", "k": "a=b"}
    mv = registry.register(
        engine,
        store,
        _regressor(tmp_path, "r.joblib"),
        "reg",
        description="ridge on 4 sums",
        tags=tags,
    )
    assert (mv.description, mv.tags) == ("ridge on 4 sums", {"team": "risk", "k": "a=b"})
    user, host = mv.registered_by.split("@")
    assert user and host

    mv = lifecycle.describe(engine, "reg", 1, tags={"team": "fraud", "ticket": "ML-7"},
                            untag=["k"])  # fmt: skip
    assert mv.tags == {"team": "fraud", "ticket": "ML-7"} and mv.description == "ridge on 4 sums"
    mv = lifecycle.describe(engine, "reg", 1, description="", untag=["team", "ticket"])
    assert mv.description is None and mv.tags == {}
    with pytest.raises(InvalidInput, match=r"reg@1 has no tag 'nope' \(tags: none\)"):
        lifecycle.describe(engine, "reg", 1, untag=["nope"])

    def no_user():
        raise OSError("No username set in the environment")

    monkeypatch.setattr("getpass.getuser", no_user)
    who = registry.registered_by()
    assert who.startswith("uid") and who.endswith("@" + host)
    again = registry.register(engine, store, _regressor(tmp_path, "r2.joblib", alpha=2.0), "reg")
    assert again.registered_by == who


# ----- the schema-change gate -----------------------------------------------------------------
def test_promote_refuses_a_schema_change_unless_accepted(engine, sqlite_settings, tmp_path):
    store = sqlite_settings.model_store_dir
    registry.register(engine, store, _classifier(tmp_path, "a.joblib"), "churn", "production")
    same = registry.register(engine, store, _classifier(tmp_path, "b.joblib", c=0.1), "churn")
    assert same.schema_changes is None
    narrow = registry.register(
        engine, store, _classifier(tmp_path, "c.joblib", columns=("spend", "tenure")), "churn"
    )
    assert narrow.schema_changes == {
        "against": "churn@1",
        "changes": ["removed plan", "order changed (spend, tenure moved; matters for rows sent as "
                    "lists)"],
    }  # fmt: skip
    with pytest.raises(SchemaChangeRefused) as info:
        lifecycle.promote(engine, "churn", 3)
    assert str(info.value) == (
        "promote refused: churn@3's features differ from churn@1 (production): removed plan; "
        "order changed (spend, tenure moved; matters for rows sent as lists) "
        "(--accept-schema-change to promote it anyway)"
    )
    assert registry.resolve(engine, "churn").version == 1
    # --force (the checks gate) does not cover a schema change
    with pytest.raises(SchemaChangeRefused):
        lifecycle.promote(engine, "churn", 3, force=True)
    assert lifecycle.promote(engine, "churn", 2).notes == []  # same features: as before
    done = lifecycle.promote(engine, "churn", 3, accept_schema_change=True)
    assert done.promoted.aliases == ["latest", "production"]
    assert done.notes == [
        "schema change accepted (churn@2 -> churn@3): removed plan; order changed (spend, "
        "tenure moved; matters for rows sent as lists)"
    ]
    # another alias compares with its own current target; a new alias has nothing to differ from
    assert lifecycle.promote(engine, "churn", 1, alias="staging").previous is None
    with pytest.raises(SchemaChangeRefused, match=r"differ from churn@1 \(staging\): removed plan"):
        lifecycle.promote(engine, "churn", 3, alias="staging")


def test_a_regressor_of_another_width_is_flagged_at_registration(engine, sqlite_settings, tmp_path):
    store = sqlite_settings.model_store_dir
    registry.register(engine, store, _regressor(tmp_path, "a.joblib"), "reg", "production")
    wider = registry.register(engine, store, _regressor(tmp_path, "b.joblib", width=6), "reg")
    assert wider.schema_changes == {"against": "reg@1", "changes": ["4 -> 6 features"]}
    with pytest.raises(SchemaChangeRefused, match="4 -> 6 features"):
        lifecycle.promote(engine, "reg", 2)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migration_0011_gives_existing_models_a_latest_alias(tmp_path, backend, request):
    from sqlalchemy import text

    from inferq import migrations
    from tests.conftest import make_settings

    extra = {"database_url": request.getfixturevalue("pg_url")} if backend == "postgres" else {}
    settings = make_settings(tmp_path, **extra)
    migrations.upgrade(settings, "0010")
    engine = make_engine(settings)
    row = ("'{n}', {v}, 'sha', '1.9', 'regressor', 'Ridge', 10, 0, 'a', 1, CURRENT_TIMESTAMP, "
           "'{s}'")  # fmt: skip
    with engine.begin() as conn:
        for name, version, status in [("a", 1, "active"), ("a", 2, "active"),
                                      ("a", 3, "retired"), ("b", 1, "retired"),
                                      ("c", 1, "active"), ("c", 2, "active")]:  # fmt: skip
            conn.execute(text(
                "INSERT INTO model_versions (name, version, sha256, sklearn_version, task, "
                "estimator, n_features, has_proba, artifact, size_bytes, created_at, status) "
                f"VALUES ({row.format(n=name, v=version, s=status)})"))  # fmt: skip
        conn.execute(text("INSERT INTO model_aliases VALUES ('c', 'latest', 1, CURRENT_TIMESTAMP)"))
    migrations.upgrade(settings)
    with engine.connect() as conn:
        aliases = conn.execute(text("SELECT name, alias, version FROM model_aliases")).all()
    assert sorted(aliases) == [("a", "latest", 2), ("c", "latest", 1)]  # c's own is kept
    mv = registry.get_version(engine, "a", 2)
    assert (mv.description, mv.tags, mv.registered_by, mv.archived_at) == (None, {}, None, None)
    migrations.upgrade(settings)  # a no-op at head
    engine.dispose()
