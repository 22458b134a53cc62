"""Model artifacts on disk: inspect a fitted estimator, verify and load a stored artifact.

This module imports scikit-learn (lazily) and is used by the registry's write side and by
workers; the producer never imports it.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferq.common.errors import ArtifactMismatch, NotAnEstimator


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class EstimatorInfo:
    """What the registry records about a fitted estimator."""

    task: str  # 'classifier' | 'regressor'
    estimator: str
    classes: list[str] | None
    n_features: int
    feature_names: list[str] | None
    has_proba: bool


def _joblib_load_strict(source: Path | io.BytesIO) -> Any:
    """joblib.load that turns scikit-learn's version warning into an error."""
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        return joblib.load(source)


def inspect_estimator(obj: Any, path: str = "<object>") -> EstimatorInfo:
    """Check that ``obj`` is a fitted single-output scikit-learn estimator and describe it."""
    from sklearn.base import BaseEstimator, is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(obj, BaseEstimator):
        raise NotAnEstimator(
            path, f"it holds a {type(obj).__name__}, not a scikit-learn estimator or Pipeline"
        )
    name = type(obj).__name__
    if is_classifier(obj):
        task = "classifier"
    elif is_regressor(obj):
        task = "regressor"
    else:
        raise NotAnEstimator(
            path, f"{name} is neither a classifier nor a regressor (transformers cannot score)"
        )
    try:
        check_is_fitted(obj)
    except NotFittedError:
        raise NotAnEstimator(path, f"{name} is not fitted; call fit() before saving it") from None
    final = obj.steps[-1][1] if hasattr(obj, "steps") else obj
    coef_shape: tuple[int, ...] = getattr(getattr(final, "coef_", None), "shape", ())
    multi = getattr(final, "n_outputs_", 1) > 1 or (
        task == "regressor" and len(coef_shape) == 2 and coef_shape[0] > 1
    )
    if multi:
        raise NotAnEstimator(path, f"{name} predicts several outputs per row; not supported")
    n_features = getattr(obj, "n_features_in_", None)
    if not isinstance(n_features, int | float) or n_features < 1:
        raise NotAnEstimator(path, f"{name} does not record n_features_in_")
    classes = None
    if task == "classifier":
        raw = getattr(obj, "classes_", None)
        if raw is None or getattr(raw, "ndim", 1) != 1:
            raise NotAnEstimator(path, f"{name}: multi-output classifiers are not supported")
        classes = [str(c) for c in raw]
    names = getattr(obj, "feature_names_in_", None)
    return EstimatorInfo(
        task=task,
        estimator=name,
        classes=classes,
        n_features=int(n_features),
        feature_names=[str(n) for n in names] if names is not None else None,
        has_proba=task == "classifier" and hasattr(obj, "predict_proba"),
    )


def read_artifact(path: Path) -> tuple[Any, EstimatorInfo]:
    """Unpickle a user-supplied joblib file for registration and inspect it."""
    if not path.is_file():
        raise NotAnEstimator(str(path), "no such file")
    from sklearn.exceptions import InconsistentVersionWarning

    try:
        obj = _joblib_load_strict(path)
    except InconsistentVersionWarning as warning:
        raise NotAnEstimator(
            str(path),
            f"it was saved with scikit-learn {warning.original_sklearn_version} but this "
            f"environment has {warning.current_sklearn_version}; re-fit and save it with "
            f"{warning.current_sklearn_version}",
        ) from None
    except Exception as exc:  # joblib raises many kinds for a file that is not a pickle
        raise NotAnEstimator(
            str(path), f"not a readable joblib file ({type(exc).__name__}: {exc})"
        ) from None
    return obj, inspect_estimator(obj, str(path))


def load_verified(path: Path, sha256: str, sklearn_version: str) -> Any:
    """Load a stored artifact after checking sha256 and scikit-learn version (before unpickling)."""
    # NOTE: hash and unpickle the same bytes, so the file cannot change between check and load.
    return _joblib_load_strict(io.BytesIO(verify_artifact(path, sha256, sklearn_version)))


def verify_artifact(path: Path, sha256: str, sklearn_version: str) -> bytes:
    """The artifact's bytes, once its scikit-learn version and sha256 match the registry's."""
    import sklearn

    if sklearn.__version__ != sklearn_version:
        raise ArtifactMismatch(
            str(path), "scikit-learn version", sklearn_version, sklearn.__version__
        )
    if not path.is_file():
        raise ArtifactMismatch(str(path), "file", f"sha256 {sha256[:12]}...", "no file")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise ArtifactMismatch(str(path), "sha256", sha256, found)
    return data
