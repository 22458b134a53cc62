"""`inferq workers`: the worker nodes, what they hold and when they last beat.

Reads what each worker's main process publishes (workers/nodeinfo.py): with a Redis broker
the hashes ``inferq:node-info:<incarnation>`` named by ``inferq:node-index``, their ages on
Redis's clock, and liveness's ``inferq:nodes`` set to tell a worker the others already took
for dead; with any other broker (the embedded filesystem one) the live workers' answers to
the ``inferq_node`` remote-control command (silent workers cannot answer there).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Liveness's sorted set of beating incarnations (workers/liveness.py; not imported here:
#: the CLI must not import the worker runtime).
NODES = "inferq:nodes"
INDEX = "inferq:node-index"
INFO = "inferq:node-info:"

LIVE, SILENT, REAPED = "live", "silent", "reaped"


@dataclass(slots=True)
class WorkerNode:
    """One worker incarnation as `inferq workers` lists it."""

    incarnation: str
    node: str
    host: str
    pid: int | None
    state: str  # live | silent | reaped
    queues: list[str] = field(default_factory=list)
    pool: str | None = None
    concurrency: int | None = None
    processes: int | None = None
    autoscale: list[int] | None = None
    max_tasks_per_child: int | None = None
    models: list[dict[str, str]] = field(default_factory=list)
    unservable: list[str] = field(default_factory=list)
    started_at: str | None = None  # ISO 8601, UTC
    last_heartbeat_seconds: float | None = None
    silent_after: float | None = None
    source: str = "redis"  # redis | inspect

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _iso(epoch: Any) -> str | None:
    if not isinstance(epoch, int | float):
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def node_from(info: dict[str, Any], state: str, age: float | None, source: str) -> WorkerNode:
    """A WorkerNode from a worker's own description (untyped JSON: checked field by field)."""

    def pick(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = info.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    models = [
        {k: str(m.get(k, "")) for k in ("model", "runtime", "role")}
        for m in info.get("models") or []
        if isinstance(m, dict)
    ]
    return WorkerNode(
        incarnation=str(info.get("incarnation") or ""),
        node=str(info.get("node") or "?"),
        host=str(info.get("host") or "?"),
        pid=pick("pid", int),
        state=state,
        queues=[str(q) for q in info.get("queues") or []],
        pool=pick("pool", str),
        concurrency=pick("concurrency", int),
        processes=pick("processes", int),
        autoscale=pick("autoscale", list),
        max_tasks_per_child=pick("max_tasks_per_child", int),
        models=models,
        unservable=[str(u) for u in info.get("unservable") or []],
        started_at=_iso(pick("started_at", (int, float))),
        last_heartbeat_seconds=None if age is None else round(max(0.0, age), 1),
        silent_after=pick("silent_after", (int, float)),
        source=source,
    )


def decode_hash(raw: dict[Any, Any]) -> dict[str, Any]:
    """A node-info hash (field -> JSON text) as a dict; unreadable fields are left out."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[_text(key)] = json.loads(_text(value))
        except ValueError:
            continue
    return out


def state_of(info: dict[str, Any], age: float, beating: bool | None) -> str:
    """live, silent (no beat for longer than its silence limit) or reaped (taken for dead by
    the other workers' liveness: its messages went back to the queue)."""
    if info.get("liveness") is True and beating is False:
        return REAPED
    limit = info.get("silent_after")
    limit = float(limit) if isinstance(limit, int | float) else 15.0
    return SILENT if age > limit else LIVE


def read_redis(client: Any) -> list[WorkerNode]:
    """Every described worker (live, silent or reaped), from Redis."""
    names = [_text(n) for n in client.zrange(INDEX, 0, -1)]
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for name in names:
        pipe.hgetall(INFO + name)
        pipe.zscore(NODES, name)
    answers = pipe.execute()
    secs, micros = answers[0]
    now = int(secs) + int(micros) / 1e6
    nodes = []
    for i, name in enumerate(names):
        raw, score = answers[1 + 2 * i], answers[2 + 2 * i]
        if not raw:  # expired between the two reads
            continue
        info = decode_hash(raw)
        beat = info.get("beat")
        age = now - float(beat) if isinstance(beat, int | float) else float("inf")
        info.setdefault("incarnation", name)
        nodes.append(node_from(info, state_of(info, age, score is not None), age, "redis"))
    return sort_nodes(nodes)


def read_inspect(app: Any, timeout: float) -> list[WorkerNode]:
    """The live workers that answer ``inferq_node`` within ``timeout`` seconds."""
    replies = app.control.broadcast("inferq_node", reply=True, timeout=timeout) or []
    nodes = []
    for reply in replies:
        for _, info in reply.items():
            if isinstance(info, dict) and "error" not in info:
                nodes.append(node_from(info, LIVE, None, "inspect"))
    return sort_nodes(nodes)


def sort_nodes(nodes: list[WorkerNode]) -> list[WorkerNode]:
    """Live first, then by node name and start time."""
    rank = {LIVE: 0, SILENT: 1, REAPED: 2}
    return sorted(nodes, key=lambda n: (rank.get(n.state, 3), n.node, n.started_at or ""))
