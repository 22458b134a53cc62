"""A test model that kills the process scoring it when a row's first feature is 666.

Simulates a message that crashes its worker every time (segfault, OOM). Importable by worker
subprocesses as `tests.killer_model` (they run from the repository root).
"""

import os
import signal

import numpy as np
from sklearn.linear_model import LogisticRegression


class KillerModel(LogisticRegression):
    """LogisticRegression whose predict_proba SIGKILLs its own process on a marked row
    (only while the file ``kill_switch_`` exists, when that attribute is set)."""

    def predict_proba(self, X):
        switch = getattr(self, "kill_switch_", None)
        if (np.asarray(X)[:, 0] == 666).any() and (switch is None or os.path.exists(switch)):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().predict_proba(X)


def register_killer(settings, folder, seed: int, kill_switch=None):
    """Fit and register a KillerModel as ``killer`` (production); returns (engine, x)."""
    import joblib
    from inferq.common.db import make_engine
    from inferq.models import registry

    x = np.random.default_rng(seed).normal(size=(200, 4))
    model = KillerModel().fit(x, (x[:, 0] > 0).astype(int))
    if kill_switch is not None:
        model.kill_switch_ = str(kill_switch)
    joblib.dump(model, folder / "killer.joblib")
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, folder / "killer.joblib", "killer",
                      "production")  # fmt: skip
    return engine, x
