"""Model artifacts on disk: inspect a fitted estimator, verify and load a stored artifact.

Two formats: joblib (a pickle: runs code on load, so workers load it only after a sha256
check) and skops (a zip that skops loads without unpickling, only if every type it names
is trusted by default or listed by the user; a listed function's module is imported).
This module imports scikit-learn (lazily) and is used by the registry's write side and by
workers; the producer never imports it.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferq.common.errors import ArtifactMismatch, NotAnEstimator, UntrustedTypes

#: Artifact formats, as recorded in the registry.
FORMATS = ("joblib", "skops")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: What a registered version does with a row: its `model_versions.task`.


@dataclass(frozen=True, slots=True)
class EstimatorInfo:
    """What the registry records about a fitted estimator."""

    task: str  # classifier | regressor | outlier | cluster
    estimator: str
    #: Labels as text: classifier classes, "-1"/"1" for outlier detectors, cluster ids.
    classes: list[str] | None
    n_features: int
    feature_names: list[str] | None
    has_proba: bool


@contextmanager
def _strict_versions() -> Iterator[None]:
    """Raise scikit-learn's InconsistentVersionWarning as an error inside the block."""
    from sklearn.exceptions import InconsistentVersionWarning

    # skops restores estimators through __setstate__ too, so it emits the same warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        yield


def _joblib_load_strict(source: Path | io.BytesIO) -> Any:
    """joblib.load that turns scikit-learn's version warning into an error."""
    import joblib

    with _strict_versions():
        return joblib.load(source)


def _is_skops(source: Path | io.BytesIO) -> bool:
    """Whether ``source`` is a zip archive holding skops' schema.json (reading runs no code)."""
    try:
        if not zipfile.is_zipfile(source):
            return False
        with zipfile.ZipFile(source) as archive:
            return "schema.json" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def detect_format(path: Path) -> str:
    """'skops' for a zip archive with skops' schema.json, whatever its suffix, else 'joblib'."""
    # By content, not suffix: a skops file renamed .joblib still gets skops' type checks.
    return "skops" if _is_skops(path) else "joblib"


def _skops_bytes(path: Path) -> bytes:
    """The bytes of a skops file; NotAnEstimator if it is missing or not a skops file."""
    if not path.is_file():
        raise NotAnEstimator(str(path), "no such file")
    data = path.read_bytes()
    if not _is_skops(io.BytesIO(data)):
        raise NotAnEstimator(str(path), "not a skops file (no zip archive with skops' schema)")
    return data


def _skops_untrusted(data: bytes, path: Path) -> list[str]:
    """skops' untrusted types in ``data``; NotAnEstimator if skops cannot parse it."""
    import skops.io as sio

    try:
        return sorted(sio.get_untrusted_types(data=data))
    except Exception as exc:  # zip, JSON and schema errors of a damaged (or crafted) file
        raise NotAnEstimator(
            str(path), f"not a readable skops file ({type(exc).__name__}: {exc})"
        ) from None


def untrusted_types(path: Path) -> list[str]:
    """Types in a skops file that skops does not trust by default (sorted)."""
    return _skops_untrusted(_skops_bytes(path), path)


def unneeded_trust(path: Path, trusted: list[str]) -> list[str]:
    """Names in ``trusted`` the file does not need (all of them for a joblib file), in order."""
    needed = set(untrusted_types(path)) if detect_format(path) == "skops" else set()
    return [name for name in dict.fromkeys(trusted) if name not in needed]


def _read_skops(path: Path, trusted: list[str] | None) -> Any:
    """Load a skops file whose untrusted types are all in ``trusted`` (else UntrustedTypes)."""
    import skops.io as sio

    data = _skops_bytes(path)  # audit and load the same bytes
    needed = _skops_untrusted(data, path)
    missing = [name for name in needed if name not in (trusted or [])]
    if missing:
        raise UntrustedTypes(str(path), missing)
    with _strict_versions():
        return sio.loads(data, trusted=needed)  # only what the file needs and the user listed


def _estimator_type(obj: Any) -> str | None:
    """scikit-learn's estimator type ("classifier", "clusterer", "outlier_detector", ...)."""
    try:
        from sklearn.utils import get_tags  # scikit-learn >= 1.6
    except ImportError:  # older releases keep it as an attribute (Pipelines delegate it)
        return getattr(obj, "_estimator_type", None)
    try:
        return get_tags(obj).estimator_type
    except Exception:  # a third-party estimator with broken tags: no type
        return getattr(obj, "_estimator_type", None)


def _final(obj: Any) -> Any:
    """The last step of a (nested) Pipeline, else the object itself."""
    while hasattr(obj, "steps") and obj.steps:
        obj = obj.steps[-1][1]
    return obj


def _task(obj: Any, path: str) -> str:
    """The task of a scoring estimator; NotAnEstimator with the reason for anything else."""
    from sklearn.base import is_classifier, is_regressor

    name, final = type(obj).__name__, _final(obj)
    kind = _estimator_type(obj)
    can_predict = hasattr(obj, "predict")  # available_if hides predict where it cannot work
    if is_classifier(obj):
        return "classifier"
    if is_regressor(obj):
        return "regressor"
    if kind == "outlier_detector":
        if can_predict:
            return "outlier"
        if type(final).__name__ == "LocalOutlierFactor":
            raise NotAnEstimator(
                path,
                f"{name} cannot score new rows: a LocalOutlierFactor fitted with "
                "novelty=False has no predict (it only labels its training data); fit it "
                "with novelty=True",
            )
        raise NotAnEstimator(path, f"{name} is an outlier detector without predict")
    if kind == "clusterer":
        if can_predict:
            return "cluster"
        raise NotAnEstimator(
            path,
            f"{name} is a clusterer that cannot assign new rows: it has no predict "
            "(use one that has, e.g. KMeans, Birch or GaussianMixture, or fit a classifier "
            "on its labels_)",
        )
    if kind == "density_estimator" and can_predict and hasattr(final, "means_"):
        return "cluster"  # mixture models: predict assigns a component, like a clusterer
    if hasattr(obj, "transform") or hasattr(obj, "fit_transform"):
        raise NotAnEstimator(
            path,
            f"{name} is a transformer: it cannot score rows (register a classifier, "
            "regressor, outlier detector or clusterer)",
        )
    raise NotAnEstimator(
        path,
        f"{name} is not a classifier, regressor, outlier detector or clusterer with predict: "
        "it cannot score rows",
    )


def _cluster_ids(obj: Any) -> list[str] | None:
    """The ids ``predict`` of a fitted clusterer can return, as text sorted numerically."""
    import numpy as np

    final = _final(obj)
    ids: Any = None
    if hasattr(final, "means_") and isinstance(getattr(final, "n_components", None), int):
        ids = range(final.n_components)  # mixture models
    elif getattr(final, "subcluster_labels_", None) is not None:
        ids = np.unique(final.subcluster_labels_)  # Birch predicts subcluster labels
    elif getattr(final, "cluster_centers_", None) is not None and len(final.cluster_centers_):
        ids = range(len(final.cluster_centers_))
    elif getattr(final, "labels_", None) is not None:
        ids = np.unique(final.labels_)
    elif isinstance(getattr(final, "n_clusters", None), int):
        ids = range(final.n_clusters)
    if ids is None:
        return None
    return [str(i) for i in sorted(int(i) for i in ids)]


def inspect_estimator(obj: Any, path: str = "<object>") -> EstimatorInfo:
    """Check that ``obj`` is a fitted single-output scikit-learn predictor and describe it."""
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(obj, BaseEstimator):
        raise NotAnEstimator(
            path, f"it holds a {type(obj).__name__}, not a scikit-learn estimator or Pipeline"
        )
    name = type(obj).__name__
    task = _task(obj, path)
    try:
        check_is_fitted(obj)
    except NotFittedError:
        raise NotAnEstimator(path, f"{name} is not fitted; call fit() before saving it") from None
    final = _final(obj)
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
    elif task == "outlier":
        classes = ["-1", "1"]  # scikit-learn's convention: -1 outlier, 1 inlier
    elif task == "cluster":
        classes = _cluster_ids(obj)
    names = getattr(obj, "feature_names_in_", None)
    return EstimatorInfo(
        task=task,
        estimator=name,
        classes=classes,
        n_features=int(n_features),
        feature_names=[str(n) for n in names] if names is not None else None,
        # Classifiers and mixture models give per-class (per-component) probabilities.
        has_proba=task in ("classifier", "cluster") and hasattr(obj, "predict_proba"),
    )


def read_artifact(path: Path, *, trusted: list[str] | None = None) -> tuple[Any, EstimatorInfo]:
    """Load a user-supplied joblib or skops file for registration and inspect it."""
    if not path.is_file():
        raise NotAnEstimator(str(path), "no such file")
    from sklearn.exceptions import InconsistentVersionWarning

    fmt = detect_format(path)
    if fmt == "joblib" and path.suffix.lower() == ".skops":
        # Never unpickle a file named as skops: whoever offers it expects no code to run.
        raise NotAnEstimator(
            str(path),
            "it has the .skops suffix but is not a skops file (not a zip archive with "
            "skops' schema.json); save the model with skops.io.dump",
        )
    try:
        obj = _read_skops(path, trusted) if fmt == "skops" else _joblib_load_strict(path)
    except (NotAnEstimator, UntrustedTypes):
        raise
    except InconsistentVersionWarning as warning:
        raise NotAnEstimator(
            str(path),
            f"it was saved with scikit-learn {warning.original_sklearn_version} but this "
            f"environment has {warning.current_sklearn_version}; re-fit and save it with "
            f"{warning.current_sklearn_version}",
        ) from None
    except Exception as exc:  # joblib and skops raise many kinds for a damaged file
        raise NotAnEstimator(
            str(path), f"not a readable {fmt} file ({type(exc).__name__}: {exc})"
        ) from None
    return obj, inspect_estimator(obj, str(path))


def load_verified(
    path: Path,
    sha256: str,
    sklearn_version: str,
    *,
    fmt: str = "joblib",
    trusted: list[str] | None = None,
) -> Any:
    """Load a stored artifact after checking sha256 and scikit-learn version (before parsing)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r} (expected one of {FORMATS})")
    # NOTE: hash and load the same bytes, so the file cannot change between check and load.
    data = verify_artifact(path, sha256, sklearn_version)
    if fmt == "joblib":
        return _joblib_load_strict(io.BytesIO(data))
    import skops.io as sio

    # Exactly the types recorded at registration: skops refuses a file that needs others.
    with _strict_versions():
        return sio.loads(data, trusted=list(trusted or []))


def verify_artifact(path: Path, sha256: str, sklearn_version: str) -> bytes:
    """The artifact's bytes, once its scikit-learn version and sha256 match the registry's."""
    import sklearn

    if sklearn.__version__ != sklearn_version:
        raise ArtifactMismatch(
            str(path), "scikit-learn version", sklearn_version, sklearn.__version__
        )
    return read_verified(path, sha256)


def read_verified(path: Path, sha256: str) -> bytes:
    """A stored file's bytes, once they hash to the ``sha256`` the registry recorded."""
    if not path.is_file():
        raise ArtifactMismatch(str(path), "file", f"sha256 {sha256[:12]}...", "no file")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise ArtifactMismatch(str(path), "sha256", sha256, found)
    return data
