"""`inferq models` registry management from the command line: show, register's description,
tags, duplicate and schema-change checks, archive, describe (embedded backend)."""

import json

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.unit.test_cli import run
from tests.unit.test_cli_models import _churn_model


def _one_line_error(out, words: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_show_register_metadata_duplicates_and_schema_changes(sqlite_settings, tmp_path):
    path, ref = _churn_model(tmp_path)
    out = run(sqlite_settings, "models", "register", str(path), "-n", "churn", "-a", "production",
              "--reference", str(ref), "-d", "churn pipeline, Q3 data", "--tag", "team=risk",
              "-t", "ticket=ML-7")  # fmt: skip
    assert out.returncode == 0, out.stderr

    shown = run(sqlite_settings, "models", "show", "churn")
    assert shown.returncode == 0, shown.stderr
    lines = {line.split("  ")[0].strip(): line for line in shown.stdout.splitlines()}
    assert "churn@1" in lines["version"] and "latest, production" in lines["version"]
    assert "churn pipeline, Q3 data" in lines["description"]
    assert "team=risk, ticket=ML-7" in lines["tags"]
    assert " by " in lines["registered"] and "@" in lines["registered"].split(" by ")[1]
    assert "checks: passed on 40 rows" in shown.stdout and "drift baseline:" in shown.stdout
    data = json.loads(run(sqlite_settings, "models", "show", "churn:latest", "--json").stdout)
    assert data["sha256"] in shown.stdout and len(data["sha256"]) == 64
    assert data["size_bytes"] == path.stat().st_size and data["format"] == "joblib"
    assert data["runtime"] == "sklearn" and data["status"] == "active" and not data["archived"]
    assert data["tags"] == {"team": "risk", "ticket": "ML-7"}
    assert data["aliases"] == ["latest", "production"] and data["registered_by"]
    assert data["checks_passed"] is True and data["metrics"] == data["checks"]["metrics"]
    assert data["baseline_summary"] == {"features": 3, "reference_rows": 40, "calibrated": False}
    assert [f["name"] for f in data["schema"]["features"]] == ["age", "spend", "city"]

    again = run(sqlite_settings, "models", "register", str(path), "-n", "churn")
    _one_line_error(again, f"this file is already churn@1 (sha256 {data['sha256'][:12]}); pass "
                    "--force to register it again as a new version")  # fmt: skip
    bad_tag = run(sqlite_settings, "models", "register", str(path), "-n", "churn", "-t", "team")
    _one_line_error(bad_tag, "--tag expects KEY=VALUE (e.g. team=risk), got 'team'")

    # v2: spend and age only (no city): flagged at registration, refused at promote
    rng = np.random.default_rng(1)
    x = pd.DataFrame({"spend": rng.normal(size=40), "age": rng.integers(18, 80, 40)})
    narrow = tmp_path / "narrow.joblib"
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression()).fit(x, np.arange(40) % 2),
                narrow)  # fmt: skip
    out = run(sqlite_settings, "models", "register", str(narrow), "-n", "churn", "--json")
    assert out.returncode == 0, out.stderr
    assert "warning: churn@2's features differ from churn@1 (production): removed city" in (
        out.stderr
    )
    assert json.loads(out.stdout)["schema_changes"]["changes"][0] == "removed city"
    assert "schema change  vs churn@1" in run(sqlite_settings, "models", "show", "churn@2").stdout
    refused = run(sqlite_settings, "models", "promote", "churn", "2", "--force")
    # v1 imputes missing values (SimpleImputer), v2 does not; age: integer (v1's reference) ->
    # number (v2's model) is no change for a caller
    _one_line_error(refused, "promote refused: churn@2's features differ from churn@1 "
                    "(production): removed city; order changed (spend, age moved; matters for "
                    "rows sent as lists); no longer accept missing values: spend, age "
                    "(--accept-schema-change to promote it anyway)")  # fmt: skip
    out = run(sqlite_settings, "models", "promote", "churn", "2", "--force",
              "--accept-schema-change", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    promoted = json.loads(out.stdout)
    assert promoted["version"] == 2 and any(
        "schema change accepted" in n for n in promoted["notes"]
    )


def test_archive_describe_and_list_all(sqlite_settings, regressor_model):
    reg = str(regressor_model.path)
    assert run(sqlite_settings, "models", "register", reg, "-n", "reg", "-a", "production"
               ).returncode == 0  # fmt: skip
    out = run(sqlite_settings, "models", "register", reg, "-n", "reg", "--force", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["aliases"] == ["latest"]

    _one_line_error(run(sqlite_settings, "models", "archive", "reg@1"),
                    "cannot archive reg@1: alias production points at it")  # fmt: skip
    _one_line_error(run(sqlite_settings, "models", "archive", "reg"),
                    "name the version: reg@VERSION (or reg VERSION)")  # fmt: skip
    out = run(sqlite_settings, "models", "archive", "reg", "2", "--json")
    assert out.returncode == 0, out.stderr
    archived = json.loads(out.stdout)
    assert archived["status"] == "retired" and archived["archived_at"] and archived["aliases"] == []

    listed = run(sqlite_settings, "models", "list", "--json")
    assert [m["version"] for m in json.loads(listed.stdout)] == [1]
    assert "1 archived version(s) not shown (--all lists them)" in listed.stderr
    listed = json.loads(run(sqlite_settings, "models", "list", "--all", "--json").stdout)
    assert [(m["version"], m["aliases"]) for m in listed] == [
        (1, ["latest", "production"]),
        (2, []),
    ]
    assert "archived" in run(sqlite_settings, "models", "list", "--all").stdout

    out = run(sqlite_settings, "models", "archive", "reg@2", "--undo", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["archived_at"] is None
    assert json.loads(out.stdout)["status"] == "retired"

    out = run(sqlite_settings, "models", "describe", "reg@1", "-d", "ridge, diabetes",
              "-t", "owner=ana", "-t", "k=a=b", "--json")  # fmt: skip
    assert json.loads(out.stdout) == {"model": "reg@1", "description": "ridge, diabetes",
                                      "tags": {"owner": "ana", "k": "a=b"}}  # fmt: skip
    out = run(sqlite_settings, "models", "describe", "reg", "1", "--untag", "k")
    assert out.returncode == 0 and "reg@1: ridge, diabetes" in out.stdout
    assert "owner=ana" in out.stdout and "k=a=b" not in out.stdout
    _one_line_error(run(sqlite_settings, "models", "describe", "reg@1", "--untag", "nope"),
                    "reg@1 has no tag 'nope' (tags: owner)")  # fmt: skip
