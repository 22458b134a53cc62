"""InferenceClient: submit rows for scoring and read their results. Never imports scikit-learn.

>>> client = InferenceClient.from_env()
>>> ids = client.submit("churn", rows, keys=customer_ids)
>>> results = client.wait(ids, timeout=60)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from inferq.common import contract, inflight, redisconn
from inferq.common.celery import InferqCelery, create_celery, send_score
from inferq.common.db import make_engine
from inferq.common.errors import (
    EnqueueError,
    InvalidInput,
    NotReplicated,
    ResultsTimeout,
    TooManyRows,
)
from inferq.common.failures import boundary, translated
from inferq.common.rows.coerce import to_columns
from inferq.common.settings import Settings, get_settings
from inferq.models import registry
from inferq.models.lifecycle import check_servable
from inferq.producer.coalesce import Coalescer
from inferq.producer.feedback import FeedbackReport, load_pairs
from inferq.producer.results import Result, fetch_results
from sqlalchemy import Engine

#: Written (and replicated) after each publish when waiting for replicas; see _wait_for_replicas.
WAIT_MARK = "inferq:wait-mark"


class InferenceClient:
    """Publishes score messages to the broker and reads results from the results database.

    Public methods raise inferq errors only (``from inferq import ...``): database and broker
    failures arrive as SchemaNotReady, DatabaseUnavailable, DatabaseError, BrokerUnavailable
    or EnqueueError, never as SQLAlchemy, psycopg, redis or kombu exceptions.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        app: InferqCelery | None = None,
        engine: Engine | None = None,
        redis_client: Any = None,
        linger_ms: float | None = None,
    ) -> None:
        """``redis_client``: for the in-flight ledger (default: built from the broker URL).

        ``linger_ms`` overrides ``INFERQ_SUBMIT_LINGER_MS`` for this client (0 = off).
        """
        if linger_ms is not None and linger_ms < 0:
            raise InvalidInput(f"linger_ms must be >= 0, got {linger_ms}")
        self.settings = settings
        self.linger_ms = settings.submit_linger_ms if linger_ms is None else linger_ms
        self.app = app or create_celery(settings)
        self._engine = engine
        # Registered versions never change: cache them. Aliases move: cache briefly.
        self._versions: dict[tuple[str, int], registry.ModelVersion] = {}
        self._aliases: dict[tuple[str, str], tuple[int, float]] = {}
        self._redis: Any = redis_client
        # Many threads may share one client: lazy resources and registry lookups are made
        # once under this lock (a second engine would leak a pool; a thundering herd of
        # alias lookups would hit the database when the cache expires).
        self._lock = threading.RLock()
        self._coalescer: Coalescer | None = None
        self._submitting = 0  # threads inside submit() right now

    @classmethod
    def from_env(cls) -> InferenceClient:
        """A client configured from ``INFERQ_*`` environment variables (ConfigError if wrong)."""
        with translated():
            settings = get_settings()
        return cls(settings)

    @property
    def engine(self) -> Engine:
        """The results/registry database engine (created on first use)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = make_engine(self.settings)
        return self._engine

    def close(self) -> None:
        """Publish pending coalesced submits, then release broker and database connections."""
        with self._lock:
            coalescer, self._coalescer = self._coalescer, None
        if coalescer is not None:
            coalescer.close()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        self.app.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- submit ---------------------------------------------------------------------
    @boundary
    def resolve(
        self, model: str, version: int | None = None, alias: str | None = None
    ) -> registry.ModelVersion:
        """The registered version a submission goes to: a pinned version, else ``alias``, else
        (no alias) the model's production version, or its latest when it has no production."""
        if version is None:
            key = (model, alias or "")  # "": production, else latest
            hit = self._aliases.get(key)
            if hit is None or hit[1] < time.monotonic():
                with self._lock:
                    hit = self._aliases.get(key)  # another thread may have looked it up
                    if hit is None or hit[1] < time.monotonic():
                        mv = registry.resolve(self.engine, model, None, alias or None)
                        self._versions[(mv.name, mv.version)] = mv
                        ttl = self.settings.alias_cache_seconds
                        self._aliases[key] = (mv.version, time.monotonic() + ttl)
                        return mv
            version = hit[0]
        found = self._versions.get((model, int(version)))
        if found is None:
            with self._lock:
                found = self._versions.get((model, int(version)))
                if found is None:
                    found = registry.get_version(self.engine, model, int(version))
                    check_servable(self.engine, found)  # ModelRetired: refused at once
                    self._versions[(model, found.version)] = found
        return found

    @boundary
    def build_batches(
        self,
        model: str,
        rows: Any,
        *,
        version: int | None = None,
        alias: str | None = None,
        job_ids: Sequence[str] | None = None,
        keys: Sequence[Any] | None = None,
        run_id: str | None = None,
        rescore_errors: bool = False,
    ) -> list[contract.Batch]:
        """Validate and encode a submission into messages of ``batch_size`` rows (no broker I/O)."""
        if rescore_errors and job_ids is None:
            raise InvalidInput("rescore_errors=True needs the job_ids whose error rows to replace")
        mv = self.resolve(model, version, alias)
        schema = mv.schema
        cols = to_columns(rows, schema, mv.ref)
        x, row_errors, text = cols.x, cols.errors, cols.text
        n = x.shape[0]
        if n == 0:
            raise InvalidInput("no rows to submit (got 0 rows)")
        if n > self.settings.max_submit_rows:
            raise TooManyRows(n, self.settings.max_submit_rows)
        ids = _check_job_ids(job_ids, n)
        key_list = _check_keys(keys, n)
        now = time.time()
        size = self.settings.batch_size
        batches = []
        for start in range(0, n, size):
            stop = min(start + size, n)
            batches.append(
                contract.Batch(
                    model=mv.name,
                    version=mv.version,
                    job_ids=ids[start:stop],
                    x=x[start:stop],
                    keys=key_list[start:stop] if key_list is not None else None,
                    row_errors={i - start: m for i, m in row_errors.items() if start <= i < stop},
                    run_id=run_id,
                    submitted_at=now,
                    row_offset=start,
                    rescore=rescore_errors,
                    ids_given=job_ids is not None,
                    text=None if text is None else [c[start:stop] for c in text],
                    text_positions=schema.text_positions if text is not None else (),
                    width=schema.width if text is not None else None,
                )
            )
        return batches

    @boundary
    def publish(
        self, batches: Sequence[contract.Batch], queue: str | None = None, batched: bool = False
    ) -> list[str]:
        """Send batches over one broker connection; raises EnqueueError naming what was sent.

        ``batched=True`` sends them in one kombu producer batch (one Redis pipeline): much
        faster, but all-or-nothing, so on error no job id is reported as enqueued.
        """
        queue = queue or self.settings.online_queue
        payloads = [contract.encode_batch(b) for b in batches]
        ledger = self._ledger()
        sent_at = time.time()
        if ledger is not None:
            records = [
                inflight.Record(b.batch_id, queue, p, b.describe())
                for b, p in zip(batches, payloads, strict=True)
            ]
            try:
                inflight.record(ledger, records, sent_at)
            except Exception as exc:  # the broker's Redis is unreachable: nothing was sent
                raise EnqueueError(sum(b.n_rows for b in batches), exc, []) from exc
        done = 0  # batches the broker took
        try:
            with self.app.producer_or_acquire() as producer, contextlib.ExitStack() as stack:
                if batched:
                    stack.enter_context(producer.batch(max_size=max(1, len(batches))))
                for i, (batch, payload) in enumerate(zip(batches, payloads, strict=True)):
                    at = inflight.send_time(sent_at, i)
                    send_score(self.app, producer, queue, payload, batch.describe(), at)
                    done = i + 1
        except Exception as exc:
            if batched:
                done = 0
            if ledger is not None:  # reported as not enqueued: must not be re-sent later
                with contextlib.suppress(Exception):
                    inflight.forget(ledger, [b.batch_id for b in batches[done:]])
            sent = [j for b in batches[:done] for j in b.job_ids]
            total = sum(b.n_rows for b in batches)
            raise EnqueueError(total - len(sent), exc, sent) from exc
        ids = [j for b in batches for j in b.job_ids]
        if self.settings.broker_wait_replicas and redisconn.is_redis(self.settings.broker_url):
            self._wait_for_replicas(ids)
        return ids

    def _wait_for_replicas(self, job_ids: list[str]) -> None:
        """Return once INFERQ_BROKER_WAIT_REPLICAS replicas hold what was just published.

        Redis WAIT covers the writes of the connection it is sent on, and kombu publishes
        through a pool; but the replication stream is ordered, so one write of our own on
        this connection after the publish, then WAIT for it, covers the publish too.
        """
        wanted, ms = self.settings.broker_wait_replicas, self.settings.broker_wait_timeout_ms
        try:
            pipe = self._broker_redis().pipeline(transaction=False)
            pipe.incr(WAIT_MARK)
            pipe.execute_command("WAIT", wanted, ms)
            confirmed = int(pipe.execute()[1])
        except Exception as exc:
            raise NotReplicated(job_ids, 0, wanted, ms) from exc
        if confirmed < wanted:
            raise NotReplicated(job_ids, confirmed, wanted, ms)

    def _ledger(self) -> Any:
        """Redis client for the in-flight ledger, or None (disabled or not a Redis broker)."""
        if not (self.settings.inflight_ledger and redisconn.is_redis(self.settings.broker_url)):
            return None
        return self._broker_redis()

    def _broker_redis(self) -> Any:
        """This client's own connection to the broker's Redis (ledger, replica waits)."""
        if self._redis is None:
            with self._lock:
                if self._redis is None:
                    self._redis = redisconn.broker_client(
                        self.settings, socket_timeout=10, socket_connect_timeout=5
                    )
        return self._redis

    @boundary
    def submit(
        self,
        model: str,
        rows: Any,
        *,
        version: int | None = None,
        alias: str | None = None,
        job_ids: Sequence[str] | None = None,
        keys: Sequence[Any] | None = None,
        rescore_errors: bool = False,
    ) -> list[str]:
        """Enqueue rows for scoring; returns one job id per row, in row order.

        ``rows``: 2-D numpy array, pandas DataFrame (columns matched to the model's feature
        names by name), or a list of lists/dicts. ``version`` pins a version, otherwise
        ``alias`` (default: ``production``, else ``latest``) is resolved now. ``keys`` are
        your own row ids, stored in ``predictions.key``. A row that is not numeric is still
        accepted and answered with an error row; a submission that cannot be read at all raises.
        With coalescing on, a call that has the client to itself (no other thread inside
        ``submit``, nothing waiting to be merged) is published at once: lingering only pays
        when another caller could share the message.
        ``rescore_errors=True`` (with ``job_ids``): jobs that already have an *error* row are
        scored again and the new result replaces it; an ok row is never replaced.
        """
        if rescore_errors:  # never merged with other callers' rows: sent as they are
            return self.publish(
                self.build_batches(model, rows, version=version, alias=alias, job_ids=job_ids,
                                   keys=keys, rescore_errors=True)
            )  # fmt: skip
        with self._lock:
            self._submitting += 1
            alone = self._submitting == 1 and (self._coalescer is None or self._coalescer.idle())
        try:
            if alone or self.linger_ms <= 0:
                batches = self.build_batches(
                    model, rows, version=version, alias=alias, job_ids=job_ids, keys=keys
                )
                return self.publish(batches)
            future = self.submit_async(
                model, rows, version=version, alias=alias, job_ids=job_ids, keys=keys
            )
            return future.result()
        finally:
            with self._lock:
                self._submitting -= 1

    @boundary
    def submit_async(
        self,
        model: str,
        rows: Any,
        *,
        version: int | None = None,
        alias: str | None = None,
        job_ids: Sequence[str] | None = None,
        keys: Sequence[Any] | None = None,
    ) -> Future[list[str]]:
        """Like :meth:`submit`, without waiting for the broker: a future of the job ids.

        Bad input raises here, at once. The future resolves once the broker accepted every
        message carrying these rows, or raises :class:`EnqueueError` naming this call's jobs.
        Done-callbacks run on the client's flush thread: they may call ``submit_async`` but
        must not block on ``submit`` (that thread would wait for itself).
        """
        batches = self.build_batches(
            model, rows, version=version, alias=alias, job_ids=job_ids, keys=keys
        )
        if self.linger_ms > 0:
            return self._coalesce(batches)
        future: Future[list[str]] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(self.publish(batches))
        except EnqueueError as exc:
            future.set_exception(exc)
        return future

    def _coalesce(self, batches: Sequence[contract.Batch]) -> Future[list[str]]:
        """Hand validated batches to this client's coalescer (created on first use)."""
        with self._lock:
            if self._coalescer is None:
                self._coalescer = Coalescer(
                    lambda b, q: self.publish(b, queue=q), self.settings.batch_size, self.linger_ms
                )
            coalescer = self._coalescer
        return coalescer.put(batches, self.settings.online_queue)

    # ----- results --------------------------------------------------------------------
    @boundary
    def results(self, job_ids: Sequence[str]) -> list[Result]:
        """Results available now for ``job_ids``, in the order given (missing ones skipped)."""
        found = fetch_results(self.engine, job_ids)
        return [found[j] for j in job_ids if j in found]

    @boundary
    def wait(
        self, job_ids: Sequence[str], timeout: float = 60.0, poll_interval: float | None = None
    ) -> list[Result]:
        """Block until every job has a result (in the order given); ResultsTimeout otherwise."""
        deadline = time.monotonic() + timeout
        interval = poll_interval or self.settings.poll_interval
        found: dict[str, Result] = {}
        pending = list(dict.fromkeys(job_ids))
        while True:
            found.update(fetch_results(self.engine, pending))
            pending = [j for j in pending if j not in found]
            if not pending:
                return [found[j] for j in job_ids]
            if time.monotonic() >= deadline:
                raise ResultsTimeout(len(pending), len(set(job_ids)), timeout)
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 1.0)

    # ----- ground truth ---------------------------------------------------------------
    @boundary
    def feedback(
        self,
        ids_or_keys: Sequence[Any],
        labels: Sequence[Any],
        *,
        by: str = "job",
        model: str | None = None,
    ) -> FeedbackReport:
        """Load true labels (classifiers) or values (regressors) for scored jobs.

        ``by="job"``: ``ids_or_keys`` are job ids (any model, or only ``model``'s);
        ``by="key"``: they are your row keys and ``model`` is required (keys are only unique
        within a model). Loading the same labels again changes nothing; a new label for the
        same ref replaces the old one. See the `model_accuracy_daily` view.
        """
        return load_pairs(self.engine, ids_or_keys, labels, by=by, model=model)


def _check_job_ids(job_ids: Sequence[str] | None, n: int) -> list[str]:
    if job_ids is None:
        return [contract.new_id() for _ in range(n)]
    ids = [contract.check_job_id(j) for j in job_ids]
    if len(ids) != n:
        raise InvalidInput(f"got {len(ids)} job ids for {n} rows")
    if len(set(ids)) != n:
        from collections import Counter

        dup = Counter(ids).most_common(1)[0][0]
        raise InvalidInput(f"job id {dup!r} appears more than once in this submission")
    return ids


def _check_keys(keys: Sequence[Any] | None, n: int) -> list[str | None] | None:
    if keys is None:
        return None
    out = [None if k is None else str(k) for k in keys]
    if len(out) != n:
        raise InvalidInput(f"got {len(out)} keys for {n} rows")
    long = next((k for k in out if k is not None and len(k) > contract.MAX_KEY_LEN), None)
    if long is not None:
        raise InvalidInput(f"key {long[:40]!r}... is longer than {contract.MAX_KEY_LEN} characters")
    return out
