"""`inferq metrics`: a Prometheus exporter for what Flower's /metrics lacks.

App-side, no worker instrumentation: queue depth and the age of the oldest waiting message
come from Redis (one Lua call per scrape), rows, errors, batch sizes and latencies from the
`prediction_batches` ledger the workers already write in the same transaction as their
results. Scrapes are cheap and bounded: the ledger is read incrementally (keyset on
``(committed_at, batch_id)``, at most ``max_rows`` rows per scrape; the rest on the next one).

The ledger is read ``settle_seconds`` behind the clock: a worker stamps ``committed_at`` just
before its commit, so a row becomes visible a little after its timestamp. A row that takes
longer than that to commit (or a worker clock that far behind) is not counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from inferq.common import compat, redisconn
from inferq.common.inflight import SENT_HEADER, queue_keys
from inferq.common.schema import model_versions, prediction_batches
from inferq.common.settings import Settings
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, or_, select

log = logging.getLogger("inferq.metrics")

#: Every metric this exporter serves (README "Prometheus metrics" lists the same).
METRICS = {
    "inferq_queue_messages": "gauge{queue}: messages waiting (priority sub-queues included)",
    "inferq_queue_rows_estimate": "gauge{queue}: rows waiting (messages x rows/message)",
    "inferq_queue_oldest_age_seconds": "gauge{queue}: age of the oldest waiting message",
    "inferq_unacked_messages": "gauge: messages delivered to workers, not yet acked",
    "inferq_rows_scored_total": "counter{model,queue}: rows answered (ok + error)",
    "inferq_error_rows_total": "counter{model,queue}: rows answered with an error",
    "inferq_batches_total": "counter{model,queue}: messages committed",
    "inferq_batch_rows": "histogram{queue}: rows per committed message",
    "inferq_predict_seconds": "histogram{model}: model time per message (validate + predict)",
    "inferq_batch_latency_seconds": "histogram{queue}: submit to commit, per message",
    "inferq_model_unservable": "gauge{worker,model,reason}: 1 while a worker cannot load a "
    "registered model version (its jobs wait; see the worker log for the fix)",
    "inferq_parked_messages": "gauge{model}: messages parked because the worker that took "
    "them could not load their model version (they wait for a worker that can)",
    "inferq_drift_psi": "gauge{model,version,feature}: PSI of the drift window "
    "(INFERQ_DRIFT_WINDOW) against the version's baseline; feature __output__ is the output",
    "inferq_drift_flagged": "gauge{model,version,feature}: 1 when `inferq drift` flags the "
    "feature (above 0.1 and above sampling noise for the window's rows), else 0",
    "inferq_up": "gauge{source=broker|database}: 1 when the last read worked",
    "inferq_exporter_ledger_lag_seconds": "gauge: how far the ledger reader is behind now",
}

# One round trip: LLEN of every sub-queue, the publish time of the oldest message of each
# queue (kombu LPUSHes and BRPOPs, so the oldest is at index -1) read from its header with a
# pattern match inside Redis (the body, up to MBs, never crosses the network), and HLEN.
_DEPTH_LUA = f"""
local per = tonumber(ARGV[1])
local out = {{}}
for q = 0, (#KEYS - 1) / per - 1 do
  local total, oldest = 0, nil
  for i = 1, per do
    local key = KEYS[q * per + i]
    local n = redis.call('LLEN', key)
    total = total + n
    if n > 0 then
      local m = redis.call('LINDEX', key, -1)
      local t = m and string.match(m, '"{SENT_HEADER}": *([0-9.eE+-]+)')
      if t and (oldest == nil or tonumber(t) < tonumber(oldest)) then oldest = t end
    end
  end
  table.insert(out, total)
  table.insert(out, oldest or '')
end
table.insert(out, redis.call('HLEN', KEYS[#KEYS]))
return out
"""


@dataclass(frozen=True)
class QueueDepth:
    """One queue right now."""

    queue: str
    messages: int
    #: Publish time (unix s) of the oldest waiting message; None if empty or not stamped.
    oldest_sent_at: float | None


class BrokerProbe:
    """Reads queue depths from the Redis broker with one Lua call."""

    def __init__(self, settings: Settings, queues: list[str] | None = None) -> None:
        if not redisconn.is_redis(settings.broker_url):
            raise ValueError("queue metrics need a Redis broker (INFERQ_BROKER_URL=redis://...)")
        self.queues = queues or [settings.online_queue, settings.bulk_queue]
        self._client = redisconn.broker_client(settings, socket_connect_timeout=3)
        self._script = self._client.register_script(_DEPTH_LUA)

    def read(self) -> tuple[list[QueueDepth], int]:
        """Depth and oldest publish time per queue, and the number of unacked messages."""
        keys = [key for q in self.queues for key in queue_keys(q)]
        layout = compat.redis_layout()
        out = self._script(keys=[*keys, layout.unacked], args=[len(layout.priority_steps)])
        depths = [
            QueueDepth(q, int(out[2 * i]), float(out[2 * i + 1]) if out[2 * i + 1] else None)
            for i, q in enumerate(self.queues)
        ]
        return depths, int(out[-1])

    def unservable(self) -> list[dict[str, Any]]:
        """The workers' live reports of model versions they cannot load (workers/health.py)."""
        from inferq.workers.health import read_reports

        return read_reports(self._client)

    def parked(self) -> dict[str, int]:
        """Parked messages per model version (workers/parking.py)."""
        from inferq.workers.health import counts_by_model

        return counts_by_model(self._client)

    def close(self) -> None:
        """Release the Redis connection."""
        self._client.close()


class LedgerReader:
    """Reads `prediction_batches` rows committed since the last read, in bounded pages."""

    COLUMNS = ("batch_id", "run_id", "model_name", "n_rows", "n_error", "predict_ms",
               "submitted_at", "committed_at")  # fmt: skip

    def __init__(
        self, engine: Engine, *, settle_seconds: float = 10.0, max_rows: int = 10_000,
        start: dt.datetime | None = None,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.settle = dt.timedelta(seconds=settle_seconds)
        self.max_rows = max_rows
        # Count what is committed from now on (minus the settle delay): counters start at 0.
        self.mark: tuple[dt.datetime, str] = ((start or dt.datetime.now(dt.UTC)) - self.settle, "")

    def read(self, now: dt.datetime | None = None) -> list[Any]:
        """Rows after the mark and at least ``settle_seconds`` old; advances the mark."""
        c = prediction_batches.c
        until = (now or dt.datetime.now(dt.UTC)) - self.settle
        ts, bid = self.mark
        names = select(model_versions.c.name).distinct().scalar_subquery()
        query = (
            select(*(c[name] for name in self.COLUMNS))
            .where(
                c.model_name.in_(names),  # lets Postgres use the (model_name, committed_at) index
                c.committed_at <= until,
                or_(c.committed_at > ts, and_(c.committed_at == ts, c.batch_id > bid)),
            )
            .order_by(c.committed_at, c.batch_id)
            .limit(self.max_rows)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).all())
        if rows:
            self.mark = (_aware(rows[-1].committed_at), rows[-1].batch_id)
        elif self.mark[0] < until:
            # Nothing new: move up to `until` so the next query's range stays small.
            self.mark = (until, "")
        return rows

    def lag_seconds(self, now: dt.datetime | None = None) -> float:
        """Seconds between now and the newest commit time read."""
        return ((now or dt.datetime.now(dt.UTC)) - self.mark[0]).total_seconds()


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes; inferq writes UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class InferqCollector(Collector):
    """Prometheus collector: refreshes from Redis and the ledger on every scrape."""

    def __init__(
        self, settings: Settings, engine: Engine, probe: BrokerProbe | None, *,
        settle_seconds: float = 10.0, max_rows: int = 10_000,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.probe = probe
        self.ledger = LedgerReader(engine, settle_seconds=settle_seconds, max_rows=max_rows)
        self._lock = threading.Lock()  # the HTTP server is threaded: one refresh at a time
        self._up = {"broker": 0.0, "database": 0.0}
        self._depths: list[QueueDepth] = []
        self._unacked = 0
        self._unservable: list[dict[str, Any]] = []
        self._parked: dict[str, int] = {}
        self._rows_per_message: dict[str, tuple[int, int]] = {}  # queue -> (batches, rows)
        self.engine = engine
        self._drift: list[tuple[str, int, str, float, bool]] = []
        self._drift_at = 0.0
        r = self._registry = CollectorRegistry(auto_describe=False)
        mq = ["model", "queue"]
        self.rows = Counter("inferq_rows_scored", METRICS["inferq_rows_scored_total"], mq,
                            registry=r)  # fmt: skip
        self.errors = Counter("inferq_error_rows", METRICS["inferq_error_rows_total"], mq,
                              registry=r)  # fmt: skip
        self.batches = Counter("inferq_batches", METRICS["inferq_batches_total"], mq, registry=r)
        self.batch_rows = Histogram(
            "inferq_batch_rows", METRICS["inferq_batch_rows"], ["queue"], registry=r,
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000),
        )  # fmt: skip
        self.predict = Histogram(
            "inferq_predict_seconds", METRICS["inferq_predict_seconds"], ["model"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                     10, 30),
        )  # fmt: skip
        self.latency = Histogram(
            "inferq_batch_latency_seconds", METRICS["inferq_batch_latency_seconds"], ["queue"],
            registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                                 300, 600, 1800, 3600),
        )  # fmt: skip

    def _queue_of(self, run_id: str | None) -> str:
        return self.settings.bulk_queue if run_id else self.settings.online_queue

    def refresh(self) -> None:
        """Read new ledger rows into the counters/histograms and the queue depths."""
        try:
            for row in self.ledger.read():
                queue = self._queue_of(row.run_id)
                labels = (row.model_name, queue)
                self.rows.labels(*labels).inc(row.n_rows)
                self.errors.labels(*labels).inc(row.n_error)
                self.batches.labels(*labels).inc()
                self.batch_rows.labels(queue).observe(row.n_rows)
                self.predict.labels(row.model_name).observe(row.predict_ms / 1000.0)
                waited = _aware(row.committed_at) - _aware(row.submitted_at)
                self.latency.labels(queue).observe(max(0.0, waited.total_seconds()))
                n, rows = self._rows_per_message.get(queue, (0, 0))
                self._rows_per_message[queue] = (n + 1, rows + row.n_rows)
            self._up["database"] = 1.0
        except Exception as exc:  # a scrape must still answer (with inferq_up 0)
            log.warning("ledger read failed: %s", exc)
            self._up["database"] = 0.0
        if time.monotonic() - self._drift_at >= DRIFT_REFRESH:
            self._drift_at = time.monotonic()
            try:
                self._drift = read_drift(self.engine, self.settings.drift_window)
            except Exception as exc:
                log.warning("drift read failed: %s", exc)
        if self.probe is not None:
            try:
                self._depths, self._unacked = self.probe.read()
                self._unservable = self.probe.unservable()
                self._parked = self.probe.parked()
                self._up["broker"] = 1.0
            except Exception as exc:
                log.warning("queue depth read failed: %s", exc)
                self._up["broker"] = 0.0

    def rows_per_message(self, queue: str) -> float:
        """Average rows per message seen by this exporter, else the configured size."""
        n, rows = self._rows_per_message.get(queue, (0, 0))
        if n:
            return rows / n
        s = self.settings
        return float(s.bulk_chunk_size if queue == s.bulk_queue else s.batch_size)

    def collect(self) -> Iterator[Metric]:
        """Refresh, then yield every inferq metric."""
        with self._lock:
            self.refresh()
            yield from self._gauges(time.time())
            yield from self._registry.collect()

    def _gauges(self, now: float) -> Iterator[Metric]:
        depth, rows, age = (
            _gauge(name, ["queue"])
            for name in ("inferq_queue_messages", "inferq_queue_rows_estimate",
                         "inferq_queue_oldest_age_seconds")
        )  # fmt: skip
        for d in self._depths:
            depth.add_metric([d.queue], d.messages)
            rows.add_metric([d.queue], d.messages * self.rows_per_message(d.queue))
            oldest = 0.0 if d.oldest_sent_at is None else max(0.0, now - d.oldest_sent_at)
            age.add_metric([d.queue], oldest)
        yield from (depth, rows, age)
        if self.probe is not None:
            yield _gauge("inferq_unacked_messages", value=self._unacked)
            bad = _gauge("inferq_model_unservable", ["worker", "model", "reason"])
            for report in self._unservable:
                bad.add_metric([report["worker"], report["model"], report["reason"][:200]], 1)
            yield bad
            held = _gauge("inferq_parked_messages", ["model"])
            for ref, count in sorted(self._parked.items()):
                held.add_metric([ref], count)
            yield held
        psi = _gauge("inferq_drift_psi", ["model", "version", "feature"])
        flagged = _gauge("inferq_drift_flagged", ["model", "version", "feature"])
        for model, version, feature, value, flag in self._drift:
            psi.add_metric([model, str(version), feature], value)
            flagged.add_metric([model, str(version), feature], float(flag))
        yield from (psi, flagged)
        up = _gauge("inferq_up", ["source"])
        for source, value in self._up.items():
            if source == "database" or self.probe is not None:
                up.add_metric([source], value)
        yield up
        yield _gauge("inferq_exporter_ledger_lag_seconds", value=self.ledger.lag_seconds())


#: Drift is recomputed at most this often (seconds): it changes by the hour, not the scrape.
DRIFT_REFRESH = 60.0


def read_drift(engine: Engine, window: str) -> list[tuple[str, int, str, float, bool]]:
    """(model, version, feature, PSI, flagged) of every model with counts in the window."""
    from inferq.common.timewindow import since
    from inferq.ops.drift import drift_report
    from sqlalchemy import text

    start = since(window)
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(
            text("SELECT DISTINCT model_name FROM drift_counts WHERE bucket >= :s"), {"s": start}
        )]  # fmt: skip
    out = []
    for name in sorted(names):
        for g in drift_report(engine, name, start):
            for f in g.features:
                out.append((name, g.version, f.feature, f.psi, f.verdict in ("warn", "drift")))
    return out


def _gauge(name: str, labels: list[str] | None = None, value: float | None = None) -> Any:
    return GaugeMetricFamily(name, METRICS[name], labels=labels, value=value)


def serve(
    settings: Settings, *, port: int = 9808, address: str = "127.0.0.1",
    settle_seconds: float = 10.0, max_rows: int = 10_000,
) -> tuple[Any, InferqCollector]:  # fmt: skip
    """Start the exporter's HTTP server in a thread; returns (server, collector)."""
    from inferq.common.db import make_engine
    from prometheus_client import start_http_server

    probe = None if settings.embedded_broker else BrokerProbe(settings)
    collector = InferqCollector(settings, make_engine(settings), probe,
                                settle_seconds=settle_seconds, max_rows=max_rows)  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server, collector
