"""Models a worker cannot serve for a reason of its own environment, said loudly and at once.

An error row means "this row's data, or the model's answer for it, was the problem". When a
worker cannot load a registered model because of *its own* environment (artifact missing
from its model store, another scikit-learn version, a module the pickle needs not
installed, store unreadable) the jobs are not the problem: they are requeued, never answered,
until a worker that can load the model takes them. This module turns a load failure into a
:class:`ModelUnavailable` with the reason and the fix, and publishes the worker's
unservable models to Redis, where ``inferq metrics`` exports them
(``inferq_model_unservable``) and ``inferq workers``-style tools can read them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from inferq.common import redisconn
from inferq.common.errors import ArtifactMismatch, ModelUnavailable
from inferq.common.settings import Settings

log = logging.getLogger("inferq.worker")

#: Redis key prefix: ``inferq:unservable:<node>:<name@version>`` -> JSON {reason, fix, since}.
KEY_PREFIX = "inferq:unservable:"
#: A report lives this long unless refreshed by another failure (or deleted by a success).
REPORT_TTL = 300
#: A process retries loading a model that failed after this many seconds (the store may
#: have been mounted or fixed meanwhile); until then its messages are requeued at once.
RETRY_LOAD_AFTER = 10.0


def explain(ref: str, exc: BaseException, model_store: Path) -> ModelUnavailable:
    """The reason a registered model could not be loaded here, and what fixes it."""
    if isinstance(exc, ModelUnavailable):
        return exc
    if isinstance(exc, ArtifactMismatch):
        if exc.what == "file":
            return ModelUnavailable(
                ref,
                f"its artifact {exc.path} is not in this worker's model store ({model_store})",
                "set INFERQ_MODEL_STORE to the store the model was registered into "
                "(or mount it there) and restart the worker",
            )
        if exc.what == "scikit-learn version":
            return ModelUnavailable(
                ref,
                f"it was registered with scikit-learn {exc.expected}, this worker has {exc.found}",
                f"install scikit-learn=={exc.expected} in the worker's environment",
            )
        return ModelUnavailable(
            ref,
            f"the file {exc.path} differs from the registered one (sha256 {exc.found[:12]}..., "
            f"expected {exc.expected[:12]}...)",
            "restore the registered file in the model store, or register the model again",
        )
    if type(exc).__name__ == "UntrustedTypesFoundException":  # skops, without importing it
        return ModelUnavailable(
            ref,
            f"its skops file needs types this worker's skops does not trust ({exc})",
            "install the skops version the model was registered with (newer releases trust "
            "fewer types), or register it again with --trust for those types",
        )
    if isinstance(exc, ModuleNotFoundError):
        return ModelUnavailable(
            ref,
            f"unpickling it needs the module {exc.name!r}, which is not installed here",
            f"install the package that provides {exc.name!r} in the worker's environment",
        )
    if isinstance(exc, ImportError | AttributeError):
        return ModelUnavailable(
            ref,
            f"unpickling it needs code this environment lacks ({type(exc).__name__}: {exc})",
            "install the same versions of the model's libraries as where it was registered",
        )
    if isinstance(exc, OSError):
        return ModelUnavailable(
            ref,
            f"the model store is unreadable ({type(exc).__name__}: {exc})",
            f"check that {model_store} is mounted and readable by the worker's user",
        )
    return ModelUnavailable(
        ref,
        f"loading failed ({type(exc).__name__}: {exc})",
        "check the worker's environment against the one the model was registered in",
    )


class HealthBoard:
    """Publishes (and clears) this worker's unservable models in Redis (Redis brokers only)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._url = settings.broker_url if redisconn.is_redis(settings.broker_url) else None
        self._client: Any = None
        self.node = "local"

    def _redis(self) -> Any:
        if self._client is None:
            assert self._url is not None
            self._client = redisconn.broker_client(self._settings)
        return self._client

    def forget_connection(self) -> None:
        """After fork: the child opens its own connection."""
        self._client = None

    def report(self, problem: ModelUnavailable, since: float | None = None) -> None:
        """Publish ``problem`` for REPORT_TTL seconds (never raises)."""
        if self._url is None:
            return
        now = time.time()
        value = {"reason": problem.reason, "fix": problem.fix, "since": since or now, "at": now}
        try:
            self._redis().set(self._key(problem.ref), json.dumps(value), ex=REPORT_TTL)
        except Exception as exc:  # the report is advisory; serving goes on without it
            log.warning("could not publish that %s is unservable: %s", problem.ref, exc)

    def client(self) -> Any:
        """The Redis client (None without a Redis broker)."""
        return None if self._url is None else self._redis()

    def reported_at(self, ref: str) -> float | None:
        """When this node last reported ``ref`` unservable (None: no live report)."""
        if self._url is None:
            return None
        try:
            raw = self._redis().get(self._key(ref))
            return None if raw is None else float(json.loads(raw).get("at", 0.0))
        except Exception:
            return None

    def clear(self, ref: str) -> None:
        """This worker serves ``ref`` again."""
        if self._url is None:
            return
        try:
            self._redis().delete(self._key(ref))
        except Exception as exc:
            log.warning("could not clear the unservable report of %s: %s", ref, exc)

    def _key(self, ref: str) -> str:
        return f"{KEY_PREFIX}{self.node}:{ref}"


def read_reports(client: Any) -> list[dict[str, Any]]:
    """Every live report: {worker, model, reason, fix, since} (for metrics and the CLI)."""
    out = []
    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=500):
        raw = client.get(key)
        if raw is None:
            continue
        rest = (key.decode() if isinstance(key, bytes) else key)[len(KEY_PREFIX) :]
        node, _, ref = rest.rpartition(":")
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        out.append({"worker": node, "model": ref, **data})
    return sorted(out, key=lambda r: (r["worker"], r["model"]))


# ----- parked messages (workers/parking.py parks and claims them; read here too, so that
# `inferq metrics` does not import the worker runtime)
META = "inferq:parked:meta"
BODY = "inferq:parked:body"


@dataclass(frozen=True, slots=True)
class Parked:
    """One parked message's record (without its payload)."""

    batch_id: str
    ref: str  # name@version
    queue: str  # the queue it was taken from
    parked_at: float
    by: str  # worker node that parked it
    reason: str


def parked(client: Any) -> list[Parked]:
    """Every parked record (payloads are not read)."""
    out = []
    for raw_id, raw in client.hgetall(META).items():
        try:
            m = msgpack.unpackb(raw, raw=False)
            batch_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            out.append(Parked(batch_id, m["ref"], m["q"], float(m["t"]), m["by"], m["why"]))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda p: p.parked_at)


def counts_by_model(client: Any) -> dict[str, int]:
    """Parked messages per model version (for metrics)."""
    counts: dict[str, int] = {}
    for p in parked(client):
        counts[p.ref] = counts.get(p.ref, 0) + 1
    return counts
