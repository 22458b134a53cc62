"""Benchmark inputs: 20 float features, a cheap pipeline, a 100-tree forest, a large forest."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd

FEATURES = [f"f{i}" for i in range(20)]
#: The mixed-type benchmark: 5 text categories + 15 numbers (2% missing in three of them).
MIXED_TEXT = [f"c{i}" for i in range(5)]
MIXED_NUMBERS = [f"n{i}" for i in range(15)]
MIXED_FEATURES = MIXED_TEXT + MIXED_NUMBERS
_VOCAB = ["lyon", "paris", "berlin", "madrid", "rome", "oslo", "porto", "gent"]


def make_mixed_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """n mixed-type rows (text categories, numbers with a few missing) plus a unique `id`."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.choice(_VOCAB, n) for c in MIXED_TEXT})
    for j, c in enumerate(MIXED_NUMBERS):
        values = rng.normal(size=n)
        if j < 3:
            values[rng.random(n) < 0.02] = np.nan
        frame[c] = values
    frame.insert(0, "id", np.char.add("m", np.arange(n).astype(str)))
    return frame


def _mixed_model(rows: int) -> object:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train = make_mixed_rows(rows, seed=1)
    y = ((train.n0.fillna(0) + (train.c0 == "paris") - (train.c1 == "rome")) > 0).astype(int)
    prep = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), MIXED_TEXT),
            ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), MIXED_NUMBERS),
        ]
    )
    return make_pipeline(prep, LogisticRegression(max_iter=500)).fit(train[MIXED_FEATURES], y)


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """n rows of 20 standard-normal features plus a unique `id` column."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, len(FEATURES))), columns=FEATURES)
    frame.insert(0, "id", np.char.add("r", np.arange(n).astype(str)))
    return frame


def _labels(x: pd.DataFrame) -> np.ndarray:
    return ((x.f0 + 0.5 * x.f1 - x.f2 + np.sin(x.f3)) > 0).astype(int).to_numpy()


def train_models(folder: Path, big_trees: int = 300, big_rows: int = 50_000) -> dict[str, Path]:
    """Fit the benchmark models, dump them with joblib; returns name -> path."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = make_rows(20_000, seed=1)[FEATURES]
    y = _labels(train)
    big = make_rows(big_rows, seed=2)[FEATURES]
    models = {
        "cheap": make_pipeline(StandardScaler(), LogisticRegression()).fit(train, y),
        "mixed": _mixed_model(20_000),
        "forest": RandomForestClassifier(n_estimators=100, max_depth=12, random_state=0,
                                         n_jobs=-1).fit(train, y),
    }  # fmt: skip
    if big_trees > 0:  # only the memory scenario needs it
        models["bigforest"] = RandomForestClassifier(
            n_estimators=big_trees, random_state=0, n_jobs=-1
        ).fit(big, _labels(big))
    paths = {}
    for name, model in models.items():
        if hasattr(model, "n_jobs"):
            model.set_params(n_jobs=1)  # scoring parallelism comes from worker processes
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(model, paths[name])
    return paths
