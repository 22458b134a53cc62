"""Picklable helpers for tests/unit/test_checks.py (a lambda cannot be pickled)."""

import numpy as np

#: Values above this make `fail_above` raise.
THRESHOLD = 2.5


def fail_above(x):
    """Identity, except that it raises for any value above THRESHOLD (a model that fails on
    some rows)."""
    values = np.asarray(x, dtype=float)
    if (values > THRESHOLD).any():
        raise ValueError(f"a value above {THRESHOLD}")
    return x
