"""The registry's gates: validation checks on the reference sample, and ONNX optimization
behind a parity check. Both record their report on the version (models/lifecycle.record).

Imports scikit-learn (lazily): used by the CLI and by registration, never by the producer.
"""

from __future__ import annotations

from pathlib import Path

from inferq.common.errors import InvalidInput
from inferq.models import lifecycle, registry
from inferq.models.registry import ModelVersion
from sqlalchemy import Engine


def reference_path(mv: ModelVersion, given: Path | None) -> Path:
    """The sample to check ``mv`` on: ``given``, else the one recorded at registration."""
    if given is not None:
        return Path(given)
    recorded = (mv.reference or {}).get("path")
    if not recorded:
        raise InvalidInput(
            f"{mv.ref} was registered without a reference sample: pass --reference FILE "
            "(a CSV or Parquet sample of its input)"
        )
    path = Path(str(recorded))
    if not path.is_file():
        raise InvalidInput(f"{mv.ref}'s reference sample {path} is gone: pass --reference FILE")
    return path


def check_version(
    engine: Engine, store: Path, mv: ModelVersion, reference: Path | None, target: str | None
) -> ModelVersion:
    """Run the validation checks in a clean process and record them on the version."""
    from inferq.models.checks import run_checks

    report = run_checks(store, mv, reference_path(mv, reference), target)
    return lifecycle.record(engine, mv.name, mv.version, checks=report)


def optimize_version(
    engine: Engine,
    store: Path,
    mv: ModelVersion,
    reference: Path | None,
    *,
    max_abs_diff: float | None = None,
    min_label_agreement: float | None = None,
) -> ModelVersion:
    """Convert to ONNX, check parity on the reference sample, and serve it with onnxruntime
    only when parity holds; otherwise scikit-learn stays, with the reason recorded."""
    from inferq.models.artifacts import sha256_file
    from inferq.models.optimize import ParityThresholds, optimize
    from inferq.models.reference import read_reference, reference_features
    from inferq.workers.inference import ModelInfo

    path = reference_path(mv, reference)
    thresholds = ParityThresholds(
        **{
            k: v
            for k, v in {
                "max_abs_diff": max_abs_diff,
                "min_label_agreement": min_label_agreement,
            }.items()
            if v is not None
        }
    )
    text = [f.name for f in mv.schema.features if f.is_text]
    frame, _meta = read_reference(path, text=text)
    features = reference_features(frame, mv.n_features, mv.feature_names, str(path), mv.ref)
    model = registry.load(store, mv)
    info = ModelInfo.of(mv.name, mv.version, model, mv)
    onnx_bytes, report = optimize(model, info, features, thresholds)
    report = {**report, "reference": str(path)}
    if onnx_bytes is None:
        return lifecycle.record(engine, mv.name, mv.version, onnx=report, runtime="sklearn")
    rel = Path(mv.artifact).parent / "model.onnx"
    dest = store / rel
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(onnx_bytes)
    tmp.replace(dest)
    report = {**report, "artifact": rel.as_posix(), "sha256": sha256_file(dest)}
    return lifecycle.record(engine, mv.name, mv.version, onnx=report, runtime="onnx")


def baseline_version(
    engine: Engine, store: Path, mv: ModelVersion, reference: Path | None, target: str | None
) -> ModelVersion:
    """Freeze the drift baseline of ``mv`` from a reference sample (and, with ``target``, the
    calibration the accuracy estimate needs) and record it; workers count against it."""
    from inferq.models.baseline import build_baseline
    from inferq.models.reference import read_reference, reference_features
    from inferq.workers.inference import ModelInfo

    path = reference_path(mv, reference)
    text = [f.name for f in mv.schema.features if f.is_text]
    frame, _meta = read_reference(path, text=text)
    target_values = None
    if target is not None:
        if target not in frame.columns:
            shown = ", ".join(map(str, list(frame.columns)[:20]))
            raise InvalidInput(f"reference {path} has no column {target!r} (columns: {shown})")
        target_values = frame[target].to_numpy()
        frame = frame.drop(columns=[target])
    features = reference_features(frame, mv.n_features, mv.feature_names, str(path), mv.ref)
    model = registry.load(store, mv)
    info = ModelInfo.of(mv.name, mv.version, model, mv)
    base = build_baseline(model, info, features, target_values)
    return lifecycle.record(engine, mv.name, mv.version, baseline=base.to_json())


def deoptimize(engine: Engine, mv: ModelVersion) -> ModelVersion:
    """Serve the version with scikit-learn again (the ONNX report is kept)."""
    return lifecycle.record(engine, mv.name, mv.version, runtime="sklearn")
