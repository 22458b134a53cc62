"""`inferq models register/list/show` with input schemas, on the embedded backend."""

import json

import joblib
import numpy as np
import pandas as pd

from tests.unit.test_cli import run


def _churn_model(tmp_path):
    """A pipeline over text and numbers, and a reference CSV with an extra column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    x = pd.DataFrame(
        {"age": rng.integers(18, 80, 40), "spend": rng.normal(size=40),
         "city": rng.choice(["berlin", "paris"], 40)}
    )  # fmt: skip
    ct = ColumnTransformer(
        [("text", OneHotEncoder(), ["city"]), ("num", SimpleImputer(), ["age", "spend"])]
    )
    model = make_pipeline(ct, LogisticRegression()).fit(x, np.arange(40) % 2)
    path, ref = tmp_path / "churn.joblib", tmp_path / "ref.csv"
    joblib.dump(model, path)
    x.assign(note="ignored").to_csv(ref, index=False)
    return path, ref


def test_register_with_reference_then_list_and_show(sqlite_settings, tmp_path):
    path, ref = _churn_model(tmp_path)
    out = run(sqlite_settings, "models", "register", str(path), "-n", "churn", "-a", "production",
              "--reference", str(ref))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "schema: 3 features: 1 integer, 1 number, 1 category; missing values accepted by 2" in (
        out.stdout
    )
    assert "reference:" in out.stdout and "40 rows" in out.stdout
    out = run(sqlite_settings, "models", "register", str(path), "-n", "churn", "--force",
              "--feature-type", "spend=int", "--feature-type", "age=number", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    kinds = {f["name"]: f["kind"] for f in json.loads(out.stdout)["input_schema"]["features"]}
    assert kinds == {"age": "number", "spend": "integer", "city": "category"}

    listed = run(sqlite_settings, "models", "list").stdout
    assert "3: 1 int, 1 num, 1 cat, 2 missing-ok" in listed and "classifier" in listed
    assert json.loads(run(sqlite_settings, "models", "list", "--json").stdout)[0]["input_schema"]

    shown = run(sqlite_settings, "models", "show", "churn")  # production: version 1
    assert shown.returncode == 0, shown.stderr
    assert "churn@1" in shown.stdout and "berlin, paris" in shown.stdout
    assert "kinds from the reference sample" in shown.stdout
    table = [line for line in shown.stdout.splitlines() if " city " in line]
    assert table and "category" in table[0] and " no " in table[0]  # OneHotEncoder: no NaN
    shown = run(sqlite_settings, "models", "show", "churn@2", "--json").stdout
    data = json.loads(shown)
    assert data["version"] == 2 and data["reference"] is None
    assert [f["missing"] for f in data["schema"]["features"]] == [True, True, False]
    (tmp_path / "schema.json").write_text(shown)  # `show --json` output is a schema file
    out = run(sqlite_settings, "models", "register", str(path), "-n", "churn", "--force",
              "--schema", str(tmp_path / "schema.json"), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["input_schema"]["features"] == data["schema"]["features"]


def test_register_and_show_errors_are_one_line(sqlite_settings, tmp_path):
    path, ref = _churn_model(tmp_path)
    pd.read_csv(ref).drop(columns=["city"]).to_csv(ref, index=False)
    cases = [
        (["models", "register", str(path), "-n", "m", "--reference", str(ref)],
         "has no column 'city'"),
        (["models", "register", str(path), "-n", "m", "--feature-type", "town=text"],
         "unknown feature(s) 'town'"),
        (["models", "register", str(path), "-n", "m", "--feature-type", "city"],
         "--feature-type expects NAME=KIND"),
        (["models", "show", "ghost"], "model 'ghost' is not registered"),
    ]  # fmt: skip
    for args, words in cases:
        out = run(sqlite_settings, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no models registered" in run(sqlite_settings, "models", "list").stdout
