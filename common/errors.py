"""One error hierarchy for inferq. Constructors take data and build the message.

Only :class:`TransientError` (and subclasses) is retried; everything else is a final answer
that is reported to the user (or written as an error row) as it is.
"""

from __future__ import annotations

from collections.abc import Sequence


class InferqError(Exception):
    """Base of every error inferq raises on purpose."""


class ConfigError(InferqError):
    """A setting is missing or wrong."""


class InvalidInput(InferqError):
    """Input rows or arguments cannot be accepted as given."""


class InvalidName(InvalidInput):
    """A model name, alias or id uses characters inferq does not accept."""

    def __init__(self, kind: str, value: str, rule: str) -> None:
        super().__init__(f"invalid {kind} {value!r}: {rule}")
        self.kind, self.value = kind, value


class MissingColumns(InvalidInput):
    """Input columns do not cover the model's feature names."""

    def __init__(self, model: str, missing: Sequence[str], available: Sequence[str]) -> None:
        shown = ", ".join(list(missing)[:20]) + (" ..." if len(missing) > 20 else "")
        super().__init__(
            f"input is missing {len(missing)} feature column(s) that model {model!r} needs: "
            f"{shown} (input has: {', '.join(list(available)[:20])})"
        )
        self.missing = list(missing)


class TooManyRows(InvalidInput):
    """A submission exceeds the configured row limit."""

    def __init__(self, n_rows: int, limit: int) -> None:
        super().__init__(
            f"submission of {n_rows} rows exceeds the limit of {limit} rows per call "
            f"(INFERQ_MAX_SUBMIT_ROWS); split it or use `inferq score` for bulk runs"
        )


class ModelNotFound(InferqError):
    """The requested model, version or alias is not registered."""

    def __init__(self, name: str, version: int | None = None, alias: str | None = None) -> None:
        if version is not None:
            what = f"model {name!r} version {version} is not registered"
        elif alias is not None:
            what = f"model {name!r} has no alias {alias!r}"
        else:
            what = f"model {name!r} is not registered"
        super().__init__(what + " (see `inferq models list`)")
        self.name, self.version, self.alias = name, version, alias


class ModelRetired(InferqError):
    """The requested model version was retired or archived (`inferq models retire/archive`):
    it is never served."""

    def __init__(
        self, name: str, version: int, current: int | None = None, archived: bool = False
    ) -> None:
        hint = (
            f"submit to {name} (it resolves to version {current})"
            if current is not None
            else "promote another version and submit to it"
        )
        state = "archived" if archived else "retired"
        super().__init__(f"model {name}@{version} is {state} and no longer served; {hint}")
        self.name, self.version, self.current = name, version, current


class LifecycleRefused(InvalidInput):
    """A registry change that would break serving or skip a check (promote, retire...)."""


class SchemaChangeRefused(LifecycleRefused):
    """A promote would change the features the alias's users send: it needs consent."""

    def __init__(self, candidate: str, current: str, alias: str, changes: Sequence[str]) -> None:
        super().__init__(
            f"promote refused: {candidate}'s features differ from {current} ({alias}): "
            f"{'; '.join(changes)} (--accept-schema-change to promote it anyway)"
        )
        self.changes = list(changes)


class AlreadyRegistered(InvalidInput):
    """The file offered to `register` is already a version of that model (same sha256)."""

    def __init__(self, ref: str, sha256: str, status: str = "active") -> None:
        state = "" if status == "active" else f", {status}"
        super().__init__(
            f"this file is already {ref} (sha256 {sha256[:12]}{state}); pass --force to "
            "register it again as a new version"
        )
        self.ref, self.sha256 = ref, sha256


class UntrustedTypes(InvalidInput):
    """A skops file needs types that are not trusted: name them with ``--trust``."""

    def __init__(self, path: str, types: Sequence[str]) -> None:
        listed = ", ".join(types)
        super().__init__(
            f"cannot register {path}: the skops file needs types skops does not trust: "
            f"{listed}; review them and pass --trust TYPE for each one you trust"
        )
        self.types = list(types)


class NotAnEstimator(InvalidInput):
    """A file offered to the registry is not a fitted scikit-learn estimator."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot register {path}: {reason}")


class ArtifactMismatch(InferqError):
    """A stored model artifact does not match what was registered (refused before unpickling)."""

    def __init__(self, path: str, what: str, expected: str, found: str) -> None:
        super().__init__(
            f"refusing to load {path}: {what} mismatch (expected {expected}, found {found})"
        )
        self.path, self.what, self.expected, self.found = path, what, expected, found


class ModelUnavailable(InferqError):
    """This worker cannot load a registered model for a reason of its own environment.

    Not the data's fault and not final: the message is requeued (never answered with error
    rows) until a worker that can load the model takes it.
    """

    def __init__(self, ref: str, reason: str, fix: str) -> None:
        super().__init__(f"cannot serve {ref} on this worker: {reason}; {fix}")
        self.ref, self.reason, self.fix = ref, reason, fix


class ContractError(InvalidInput):
    """A queue message does not follow the inferq message contract."""


class TransientError(InferqError):
    """A temporary failure (database or broker unavailable); safe to retry."""


class EnqueueError(TransientError):
    """The broker did not accept a message; the jobs were NOT enqueued."""

    def __init__(
        self, n_jobs: int, cause: BaseException, enqueued_job_ids: Sequence[str] = ()
    ) -> None:
        super().__init__(
            f"could not enqueue {n_jobs} job(s): {type(cause).__name__}: {cause}. "
            "They were not accepted; submit them again."
        )
        #: Jobs of the same call that did reach the broker (they will be scored).
        self.enqueued_job_ids = list(enqueued_job_ids)


class NotReplicated(EnqueueError):
    """The broker took the jobs, but not enough replicas confirmed them in time (Redis WAIT).

    They will most likely be scored; a failover right now could lose them. Submitting them
    again with the same job ids (``job_ids=``, or re-running a bulk run) is safe.
    """

    def __init__(self, job_ids: Sequence[str], confirmed: int, wanted: int, ms: int) -> None:
        InferqError.__init__(
            self,
            f"{len(job_ids)} job(s) reached the broker but only {confirmed} of {wanted} "
            f"replica(s) confirmed them within {ms} ms (INFERQ_BROKER_WAIT_REPLICAS): they "
            "will probably be scored, but a failover now could lose them; submit them again "
            "with the same job ids to be sure (that never scores a job twice)",
        )
        self.enqueued_job_ids = list(job_ids)


class ResultsTimeout(InferqError, TimeoutError):
    """wait() gave up before every job had a result."""

    def __init__(self, missing: int, total: int, timeout: float) -> None:
        super().__init__(
            f"{missing} of {total} job(s) have no result after {timeout:g}s "
            "(are workers running? see `inferq worker`)"
        )
        self.missing, self.total = missing, total


class DatabaseError(InferqError):
    """The results database refused or failed an operation (see the message for the fix)."""


class SchemaNotReady(DatabaseError):
    """The database has no inferq tables yet, or is at an older migration."""

    def __init__(self, url: str, detail: str = "") -> None:
        super().__init__(
            f"the database at {url} has no inferq tables or is not up to date"
            f"{' (' + detail + ')' if detail else ''}: run `inferq db upgrade`"
        )
        self.url = url


class DatabaseUnavailable(DatabaseError, TransientError):
    """The results database cannot be reached or refused the connection."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the database at {url}: {reason} "
            "(check INFERQ_DATABASE_URL and that the server is running)"
        )
        self.url, self.reason = url, reason


class BrokerUnavailable(TransientError):
    """The broker (Redis) cannot be reached or refused the connection."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the broker at {url}: {reason} "
            "(check INFERQ_BROKER_URL and that Redis is running)"
        )
        self.url, self.reason = url, reason


class UnknownSettingWarning(UserWarning):
    """An ``INFERQ_*`` environment variable is not a setting (a typo is otherwise ignored)."""


class ArchiveMismatch(InferqError):
    """An archive file does not hold exactly the rows of its partition: nothing was dropped."""

    def __init__(self, name: str, path: object, expected: int, found: int) -> None:
        super().__init__(
            f"archive {path} holds {found} rows but partition {name} has {expected}: "
            "nothing was dropped; check the archive folder (disk full?) and run again"
        )
