"""The validation gate of a model version: checks on its reference sample before promotion.

The version must load in a clean process (a pickle that needs a module importable only from
the registering script's directory fails there, as it would on a worker), score every
reference row through the worker's own path (models/sample.py), give outputs of its
registered kind and classes, and, given a target column, get its metric recorded.

Only the standard library is imported at module level: the registry calls ``run_checks``
without paying for scikit-learn; the child process imports it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferq.models.registry import ModelVersion

#: Columns listed when the target column is not in the reference.
MAX_LISTED_COLUMNS = 20
#: Tolerance of "probabilities sum to 1" (float32 models drift a little).
PROBA_SUM_TOLERANCE = 1e-4
#: What the child is told about the version (besides the artifact and reference paths).
CHILD_FIELDS = ("sha256", "sklearn_version", "format", "trusted", "name", "version", "task",
                "classes", "has_proba", "n_features", "feature_names", "input_schema")  # fmt: skip


def run_checks(
    model_store: Path,
    mv: ModelVersion,
    reference: Path,
    target: str | None = None,
    *,
    timeout: float = 300,
) -> dict:
    """Run the checks in a clean subprocess (`python -m inferq.models.checks`); its report."""
    started = time.perf_counter()
    params = {k: getattr(mv, k, None) for k in CHILD_FIELDS}
    params.update(  # absolute paths: the child runs in a scratch directory
        artifact=str((Path(model_store) / mv.artifact).resolve()),
        reference=str(Path(reference).resolve()),
        target=target,
    )
    # -P and a scratch cwd keep the caller's directory off the child's sys.path; a new
    # session lets a timeout kill whatever the model spawned (joblib workers) with it.
    with tempfile.TemporaryDirectory(prefix="inferq-checks-") as scratch:
        cmd, pipe = [sys.executable, "-P", "-m", "inferq.models.checks"], subprocess.PIPE
        proc = subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=pipe, text=True,
                                cwd=scratch, start_new_session=True)  # fmt: skip
        try:
            out, err = proc.communicate(json.dumps(params), timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            why = f"the check process did not finish within {timeout:g} s and was killed"
            return _failed(why, err, target, started)
    try:
        report = json.loads(out)
    except ValueError:
        report = None
    if isinstance(report, dict) and "passed" in report and "checks" in report:
        report["seconds"] = round(time.perf_counter() - started, 3)  # interpreter start too
        return report
    if proc.returncode:
        code = proc.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return _failed(f"the check process {how}", err, target, started)
    return _failed(f"the check process printed no report ({out[:200]!r})", err, target, started)


def _failed(why: str, stderr: str, target: str | None, started: float) -> dict:
    """The report of a child that gave none, with its last stderr line."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    detail = f"{why}; last stderr line: {lines[-1][:500]}" if lines else f"{why} (no stderr)"
    return _report([_check("clean process", False, detail)], None, target, {}, started)


def _check(name: str, passed: bool, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _report(checks: list, rows: int | None, target: str | None, metrics: dict, t0: float) -> dict:
    """The report dict; passed and reason follow from the checks."""
    failing = [c["detail"] for c in checks if not c["passed"]]
    return {
        "passed": not failing,
        "ran_at": dt.datetime.now(dt.UTC).isoformat(),
        "rows": rows,
        "target": target,
        "checks": checks,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 3),
        "reason": failing[0] if failing else None,
    }


def check_in_process(model: Any, mv_like: Any, frame: Any, target_values: Any = None) -> dict:
    """The checks themselves on a loaded model (what the child runs; usable in tests)."""
    from inferq.common.errors import InvalidInput
    from inferq.models.reference import reference_features
    from inferq.models.sample import score_sample
    from inferq.workers.inference import ModelInfo

    started = time.perf_counter()
    target = None if target_values is None else str(getattr(target_values, "name", "target"))
    checks = [_check("loads", True, "given a loaded model")]
    info = ModelInfo.of(mv_like.name, mv_like.version, model, mv_like)
    try:
        names, ref = info.feature_names, info.ref
        features = reference_features(frame, info.n_features, names, ref, "sample")
    except InvalidInput as exc:  # its message is worded for registration
        detail = str(exc).replace(f"cannot register {info.ref}: ", "")
        checks.append(_check("predicts every row", False, detail))
        return _report(checks, len(frame), target, {}, started)
    scored = score_sample(model, info, features)
    n, failed = len(frame), sorted(scored.errors)
    if failed:
        first = str(scored.errors[failed[0]])
        first = first if first.startswith("row ") else f"row {failed[0]}: {first}"
        detail = f"{len(failed)} of {n} rows failed; first: {first}"
    else:
        detail = f"{n} of {n} rows scored"
    checks.append(_check("predicts every row", not failed, detail))
    checks.append(_outputs_check(model, mv_like, info, scored))
    metrics: dict = {}
    if target_values is not None:
        check, metrics = _metric_check(info, scored, target_values)
        checks.append(check)
    return _report(checks, n, target, metrics, started)


def _outputs_check(model: Any, mv_like: Any, info: Any, scored: Any) -> dict:
    """Outputs of the registered kind: known labels, finite values, probabilities that sum to 1."""
    import numpy as np
    from inferq.models.artifacts import inspect_estimator

    name = "outputs"
    try:  # the model as it loads now must be what was registered
        now = inspect_estimator(model, info.ref)
    except Exception as exc:  # NotAnEstimator, or a non-scikit-learn object
        return _check(name, False, f"not a registered kind of model any more: {exc}")
    if now.task != mv_like.task:
        return _check(name, False, f"the model is a {now.task}, registered as a {mv_like.task}")
    if (now.classes or None) != (mv_like.classes or None):
        extra = [c for c in now.classes or [] if c not in (mv_like.classes or [])]
        why = f"the model's classes {now.classes} differ from the registered {mv_like.classes}"
        more = f"; it can predict unregistered label {extra[0]!r}" if extra else ""
        return _check(name, False, why + more)
    ok = scored.ok  # labels need no check: the worker's path maps them onto info.classes
    if scored.proba is not None and ok.any():
        proba = scored.proba[ok]
        if proba.shape[1] != len(info.classes or []) or not np.isfinite(proba).all():
            return _check(name, False, "probabilities are not finite, one per class")
        worst = float(np.abs(proba.sum(axis=1) - 1).max())
        if worst > PROBA_SUM_TOLERANCE:
            return _check(name, False, f"probabilities of a row sum to 1 ± {worst:.3g}")
    if scored.scores is not None and ok.any():
        values = scored.scores[ok]
        # Regressors must give a number; other tasks may have no score (NaN), never inf.
        bad = ~np.isfinite(values) if info.task == "regressor" else np.isinf(values)
        if bad.any():
            row = int(np.flatnonzero(ok)[np.argmax(bad)])
            return _check(name, False, f"row {row}: the prediction is {values[bad][0]}")
    if info.task == "regressor":
        return _check(name, True, "every prediction finite")
    return _check(name, True, f"labels within the registered classes {info.classes}")


def _metric_check(info: Any, scored: Any, target_values: Any) -> tuple[dict, dict]:
    """The "metric" check and the metrics: accuracy/ROC AUC or R²/MAE on the scored rows."""
    import numpy as np
    import pandas as pd

    name, n = "metric", len(scored.ok)
    if info.task not in ("classifier", "regressor"):
        what = {"outlier": "an outlier detector: its -1/1", "cluster": "a clusterer: its arbitrary"}
        why = f"no metric for {what.get(info.task, info.task)} labels are not a target"
        return _check(name, True, why), {}
    y = pd.Series(list(target_values), dtype=object)
    if len(y) != n:
        return _check(name, False, f"the target has {len(y)} values for {n} rows"), {}
    missing = y.isna().to_numpy()
    use = scored.ok & ~missing
    notes = [f"{int(missing.sum())} rows without a target skipped"] if missing.any() else []
    if (~scored.ok & ~missing).any():
        notes.append(f"{int((~scored.ok & ~missing).sum())} rows that failed to score left out")
    if not use.any():
        return _check(name, False, "no scored row has a target value"), {}
    if info.task == "regressor":
        truth = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
        bad = use & ~np.isfinite(truth)
        if bad.any():
            i = int(np.argmax(bad))
            return _check(name, False, f"row {i}: target {y[i]!r} is not a number"), {}
        from sklearn.metrics import mean_absolute_error, r2_score

        pred, truth = scored.scores[use], truth[use]
        metrics = {"r2": float(r2_score(truth, pred))} if len(truth) > 1 else {}  # R² needs 2
        metrics["mae"] = float(mean_absolute_error(truth, pred))
    else:
        metrics, more = _classification(info, scored, y, use)
        notes += more
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    tail = f" ({'; '.join(notes)})" if notes else ""
    return _check(name, True, f"{shown} on {int(use.sum())} rows{tail}"), metrics


def _classification(info: Any, scored: Any, y: Any, use: Any) -> tuple[dict, list[str]]:
    """Accuracy (a target label outside the classes counts as wrong) and ROC AUC if scores."""
    import numpy as np

    classes = list(info.classes or [])
    known = set(classes)

    def as_label(v: Any) -> str:
        # Targets read as numbers: an int column with gaps is read as floats (1.0 for "1").
        if isinstance(v, float) and v.is_integer() and str(v) not in known:
            return str(int(v))
        return str(v)

    rows = np.flatnonzero(use)
    truth = np.array([as_label(y[i]) for i in rows], dtype=object)
    pred = np.array([scored.labels[i] for i in rows], dtype=object)
    metrics = {"accuracy": float((truth == pred).mean())}
    notes = []
    inside = np.array([t in known for t in truth], dtype=bool)
    if not inside.all():
        first = truth[~inside][0]
        notes.append(f"{int((~inside).sum())} target labels not among the classes (first "
                     f"{first!r}) counted wrong and left out of ROC AUC")  # fmt: skip
    rows, truth = rows[inside], truth[inside]
    why = "the model gives no class scores"
    if not len(rows):
        why = "no target label is among the classes"
    elif len(classes) == 2 and scored.scores is not None and np.isfinite(scored.scores[rows]).all():
        why = _auc(metrics, truth == classes[1], scored.scores[rows])  # classes[1]: positive
    elif len(classes) > 2 and scored.proba is not None:
        why = _auc(metrics, truth, scored.proba[rows], multi_class="ovr", labels=classes)
    if why:
        notes.append(f"no ROC AUC: {why}")
    return metrics, notes


def _auc(metrics: dict, truth: Any, score: Any, **kw: Any) -> str:
    """Put roc_auc in ``metrics``; else why not (e.g. one class only among the targets)."""
    from sklearn.metrics import roc_auc_score

    try:
        metrics["roc_auc"] = float(roc_auc_score(truth, score, **kw))
    except ValueError as exc:
        return str(exc)
    return ""


def check_reference(model: Any, mv_like: Any, reference: Path, target: str | None = None) -> dict:
    """Read the reference (and its target column) and run the checks on ``model``."""
    from inferq.common.errors import InvalidInput
    from inferq.models.reference import read_reference

    started = time.perf_counter()
    schema = mv_like.schema
    text = [f.name for f in schema.features if f.is_text] if schema.named else []
    try:
        frame, _meta = read_reference(Path(reference), text)
    except InvalidInput as exc:
        loads = _check("loads", True, "given a loaded model")
        return _report([loads, _check("reference", False, str(exc))], None, target, {}, started)
    if target is None:
        return check_in_process(model, mv_like, frame)
    columns = [str(c) for c in frame.columns]
    if target in (mv_like.feature_names or []):
        why = f"target column {target!r} is a feature of the model; name another column"
    elif target not in columns:
        shown = ", ".join(columns[:MAX_LISTED_COLUMNS])
        if len(columns) > MAX_LISTED_COLUMNS:
            shown += f" ... ({len(columns)} in all)"
        why = f"the reference has no target column {target!r}; its columns: {shown}"
    else:
        j = columns.index(target)  # never a feature: the model gets the other columns
        values = frame.iloc[:, j].rename(target)
        return check_in_process(model, mv_like, frame.drop(columns=frame.columns[j]), values)
    report = check_in_process(model, mv_like, frame)  # still say whether it predicts
    checks = [*report["checks"], _check("metric", False, why)]
    return _report(checks, report["rows"], target, {}, started)


def _child(params: dict) -> dict:
    """What the clean process does with its parameters."""
    from inferq.common.rows.schema import InputSchema
    from inferq.models.artifacts import load_verified

    started = time.perf_counter()
    mv_like = SimpleNamespace(**params)
    doc, n, names = params.get("input_schema"), params["n_features"], params["feature_names"]
    mv_like.schema = InputSchema.from_json(doc) if doc else InputSchema.numeric(n, names)
    path, fmt = Path(params["artifact"]), params.get("format") or "joblib"
    extra: dict[str, Any] = (
        {"fmt": fmt, "trusted": list(params.get("trusted") or [])} if fmt != "joblib" else {}
    )
    try:
        model = load_verified(path, params["sha256"], params["sklearn_version"], **extra)
    except Exception as exc:  # a mismatch, a missing module, a corrupt file: all refusals
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ImportError):
            detail += " (the pickle needs a module workers cannot import: install it as a package)"
        return _report([_check("loads", False, detail)], None, params.get("target"), {}, started)
    loaded = f"{fmt} artifact loaded in a clean process in {time.perf_counter() - started:.2f} s"
    report = check_reference(model, mv_like, Path(params["reference"]), params.get("target"))
    report["checks"][0]["detail"] = loaded
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def main() -> None:
    """The clean process: parameters as JSON on stdin, the report as JSON on stdout."""
    # Whatever the model prints (Python or C level) goes to stderr: stdout is only the report.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    started = time.perf_counter()
    params: Any = {}
    try:
        params = json.load(sys.stdin)
        report = _child(params)
    except Exception as exc:  # a report is always better than a traceback the parent parses
        why = f"the check process failed: {type(exc).__name__}: {exc}"
        target = params.get("target") if isinstance(params, dict) else None
        report = _report([_check("clean process", False, why)], None, target, {}, started)
    out.write(json.dumps(report))
    out.flush()


if __name__ == "__main__":
    main()
