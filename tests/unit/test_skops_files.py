"""skops model files: format detection, trusted types, registration reads and verified loads
(real scikit-learn models written with skops.io.dump)."""

from __future__ import annotations

import zipfile

import joblib
import numpy as np
import pytest
import sklearn
import skops.io as sio
from inferq.common.errors import ArtifactMismatch, NotAnEstimator, UntrustedTypes
from inferq.models.artifacts import (
    FORMATS,
    detect_format,
    load_verified,
    read_artifact,
    sha256_file,
    unneeded_trust,
    untrusted_types,
)
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from skops.io.exceptions import UntrustedTypesFoundException

from tests.unit.skops_helpers import log_abs

#: How skops 0.16 names the helper function: by its module path, never trusted by default.
FUNC = "tests.unit.skops_helpers.log_abs"


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    x = rng.randn(80, 4)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)


@pytest.fixture(scope="module")
def plain(data):
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(*data)


@pytest.fixture(scope="module")
def custom(data):
    return make_pipeline(FunctionTransformer(log_abs), LogisticRegression()).fit(*data)


def dump(model, path):
    sio.dump(model, path)
    return path


def test_plain_pipeline_is_trusted_by_default_and_loads(tmp_path, data, plain):
    path = dump(plain, tmp_path / "model.skops")
    assert FORMATS == ("joblib", "skops")
    assert detect_format(path) == "skops"
    assert untrusted_types(path) == []
    model, info = read_artifact(path)
    assert (info.task, info.estimator, info.n_features) == ("classifier", "Pipeline", 4)
    assert info.classes == ["0", "1"] and info.has_proba
    loaded = load_verified(path, sha256_file(path), sklearn.__version__, fmt="skops")
    np.testing.assert_array_equal(loaded.predict(data[0]), plain.predict(data[0]))
    np.testing.assert_array_equal(model.predict_proba(data[0]), plain.predict_proba(data[0]))
    assert unneeded_trust(path, ["x.y", "x.y"]) == ["x.y"]  # harmless, reported once


def test_custom_function_must_be_trusted_by_name(tmp_path, data, custom):
    path = dump(custom, tmp_path / "model.skops")
    assert untrusted_types(path) == [FUNC]
    with pytest.raises(UntrustedTypes) as info:
        read_artifact(path)
    assert info.value.types == [FUNC] and f"{FUNC}; review them" in str(info.value)
    assert "--trust TYPE" in str(info.value)
    with pytest.raises(UntrustedTypes):
        read_artifact(path, trusted=["builtins.eval"])  # trusting something else is not enough
    model, info2 = read_artifact(path, trusted=[FUNC, "builtins.eval"])
    assert info2.task == "classifier"
    np.testing.assert_array_equal(model.predict(data[0]), custom.predict(data[0]))
    assert unneeded_trust(path, ["builtins.eval", FUNC]) == ["builtins.eval"]


def test_worker_loads_with_exactly_the_recorded_trust(tmp_path, data, custom):
    path = dump(custom, tmp_path / "model.skops")
    digest, version = sha256_file(path), sklearn.__version__
    with pytest.raises(UntrustedTypesFoundException, match="log_abs"):
        load_verified(path, digest, version, fmt="skops", trusted=[])
    with pytest.raises(UntrustedTypesFoundException):
        load_verified(path, digest, version, fmt="skops")
    loaded = load_verified(path, digest, version, fmt="skops", trusted=[FUNC])
    np.testing.assert_array_equal(loaded.predict(data[0]), custom.predict(data[0]))
    with pytest.raises(ValueError, match="unknown artifact format"):
        load_verified(path, digest, version, fmt="onnx")


def test_forest_trees_are_untrusted_in_skops_0_16(tmp_path, data):
    # skops 0.16 no longer trusts sklearn.tree._tree.Tree by default (raw node indices).
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(*data)
    path = dump(forest, tmp_path / "forest.skops")
    assert untrusted_types(path) == ["sklearn.tree._tree.Tree"]
    with pytest.raises(UntrustedTypes, match=r"sklearn\.tree\._tree\.Tree"):
        read_artifact(path)
    assert read_artifact(path, trusted=["sklearn.tree._tree.Tree"])[1].estimator == (
        "RandomForestClassifier"
    )


def test_joblib_files_are_unchanged(tmp_path, data, plain):
    path = tmp_path / "model.joblib"
    joblib.dump(plain, path)
    assert detect_format(path) == "joblib"
    _, info = read_artifact(path, trusted=["ignored.for.joblib"])
    assert info.estimator == "Pipeline"
    loaded = load_verified(path, sha256_file(path), sklearn.__version__)
    np.testing.assert_array_equal(loaded.predict(data[0]), plain.predict(data[0]))
    assert unneeded_trust(path, ["a.b"]) == ["a.b"]  # a joblib file needs no trust
    with pytest.raises(NotAnEstimator, match="not a skops file"):
        untrusted_types(path)


def test_a_skops_suffixed_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.skops"
    path.write_bytes(f"cbuiltins\nopen\n(S'{marker}'\nS'w'\ntR.".encode())  # opens = creates
    assert detect_format(path) == "joblib"
    with pytest.raises(NotAnEstimator, match=r"has the \.skops suffix but is not a skops file"):
        read_artifact(path)
    assert not marker.exists()
    with pytest.raises(NotAnEstimator, match="not a skops file"):
        untrusted_types(path)


def test_damaged_skops_files_are_clear_errors(tmp_path):
    other = tmp_path / "other.skops"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    assert detect_format(other) == "joblib"
    with pytest.raises(NotAnEstimator, match="is not a skops file"):
        read_artifact(other)
    broken = tmp_path / "broken.skops"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("schema.json", "{not json")
    assert detect_format(broken) == "skops"
    with pytest.raises(NotAnEstimator, match=r"not a readable skops file \(JSONDecodeError"):
        read_artifact(broken)
    with pytest.raises(NotAnEstimator, match="no such file"):
        read_artifact(tmp_path / "missing.skops")


def test_a_skops_file_named_joblib_is_read_as_skops(tmp_path, custom):
    path = dump(custom, tmp_path / "model.joblib")
    assert detect_format(path) == "skops"
    with pytest.raises(UntrustedTypes):  # skops' audit ran: it was not unpickled
        read_artifact(path)
    assert read_artifact(path, trusted=[FUNC])[1].estimator == "Pipeline"


def test_wrong_sha256_is_refused_before_skops_parses(tmp_path, plain, monkeypatch):
    path = dump(plain, tmp_path / "model.skops")

    def never(*args, **kwargs):
        raise AssertionError("skops parsed an unverified file")

    monkeypatch.setattr(sio, "loads", never)
    monkeypatch.setattr(sio, "get_untrusted_types", never)
    monkeypatch.setattr(zipfile, "ZipFile", never)
    with pytest.raises(ArtifactMismatch, match="sha256 mismatch"):
        load_verified(path, "0" * 64, sklearn.__version__, fmt="skops")


def test_other_sklearn_version_inside_a_skops_file_is_refused(tmp_path, plain):
    path = dump(plain, tmp_path / "model.skops")
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    mark = f'\\"{sklearn.__version__}\\"'.encode()
    assert mark in files["schema.json"]
    files["schema.json"] = files["schema.json"].replace(mark, b'\\"1.2.0\\"')
    old = tmp_path / "old.skops"
    with zipfile.ZipFile(old, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    with pytest.raises(NotAnEstimator, match=r"saved with scikit-learn 1\.2\.0"):
        read_artifact(old)
    with pytest.raises(InconsistentVersionWarning):
        load_verified(old, sha256_file(old), sklearn.__version__, fmt="skops")
