"""The CLI on the embedded backend: JSON output and clear errors (exit code 2)."""

import json
import subprocess
import sys

import joblib

from tests.conftest import settings_env


def run(settings, *args):
    return subprocess.run(
        [sys.executable, "-m", "inferq", *args],
        env={**settings_env(settings), "COLUMNS": "160"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_models_register_list_promote_json(sqlite_settings, regressor_model):
    out = run(sqlite_settings, "models", "register", str(regressor_model.path), "--name", "reg",
              "--alias", "production", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 1
    run(sqlite_settings, "models", "register", str(regressor_model.path), "-n", "reg", "--force")
    out = run(sqlite_settings, "models", "promote", "reg", "2", "--json")
    assert json.loads(out.stdout)["aliases"] == ["latest", "production"]
    listed = json.loads(run(sqlite_settings, "models", "list", "--json").stdout)
    assert [(m["version"], m["aliases"]) for m in listed] == [
        (1, []),
        (2, ["latest", "production"]),
    ]
    table = run(sqlite_settings, "models", "list").stdout
    assert "reg" in table and "production" in table


def test_register_non_estimator_is_a_clear_error(sqlite_settings, tmp_path):
    bad = tmp_path / "weights.joblib"
    joblib.dump([1, 2, 3], bad)
    out = run(sqlite_settings, "models", "register", str(bad), "--name", "x")
    assert out.returncode == 2
    assert "cannot register" in out.stderr and "not a scikit-learn estimator" in out.stderr
    assert "Traceback" not in out.stderr


def test_promote_unknown_version_is_a_clear_error(sqlite_settings):
    out = run(sqlite_settings, "models", "promote", "ghost", "3")
    assert out.returncode == 2 and "model 'ghost' version 3 is not registered" in out.stderr


def test_db_current_reports_head(sqlite_settings):
    from inferq import migrations

    head = migrations.head_revision(sqlite_settings)
    out = run(sqlite_settings, "db", "current", "--json")
    assert json.loads(out.stdout) == {"current": head, "head": head, "up_to_date": True}
    assert head is not None and head >= "0002"


def test_bad_setting_is_named(sqlite_settings):
    env = {**settings_env(sqlite_settings), "INFERQ_BATCH_SIZE": "lots"}
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "config"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "invalid settings" in out.stderr and "INFERQ_BATCH_SIZE" in out.stderr
    assert "Traceback" not in out.stderr
