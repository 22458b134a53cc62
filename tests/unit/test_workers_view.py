"""`inferq workers`' reading of worker descriptions (ops/workers.py): states, odd values."""

import fakeredis
from inferq.ops import workers as view
from inferq.workers import nodeinfo


def test_state_from_age_own_limit_and_liveness():
    info = {"silent_after": 5.0, "liveness": True}
    assert view.state_of(info, 4.9, beating=True) == "live"
    assert view.state_of(info, 5.1, beating=True) == "silent"
    assert view.state_of(info, 1.0, beating=False) == "reaped"  # the others requeued its work
    # Liveness off: never "reaped" (nobody reaps); the default limit when none is given.
    assert view.state_of({"liveness": False}, 14.0, beating=False) == "live"
    assert view.state_of({"liveness": False}, 16.0, beating=False) == "silent"


def test_junk_fields_are_dropped_not_fatal():
    raw = {b"pid": b"not json", b"node": b'"w@h"', b"concurrency": b'"4"', b"models": b"[1, 2]",
           b"queues": b'["online"]', b"started_at": b"true", b"autoscale": b"[3, 1]"}  # fmt: skip
    node = view.node_from(view.decode_hash(raw), "live", 1.23, "redis")
    assert (node.node, node.pid, node.concurrency, node.models) == ("w@h", None, None, [])
    assert node.queues == ["online"] and node.started_at is None and node.autoscale == [3, 1]
    assert node.last_heartbeat_seconds == 1.2


def test_published_hashes_are_read_back_and_expired_entries_trimmed():
    client = fakeredis.FakeRedis()
    script = client.register_script(nodeinfo._PUBLISH_LUA)
    for name, silent in (("b@h/2/x", 5.0), ("a@h/1/y", 5.0)):
        info = {"incarnation": name, "node": name.split("/")[0], "pid": 1, "liveness": True,
                "silent_after": silent, "models": [{"model": "m@1", "runtime": "onnx",
                                                    "role": "serving"}]}  # fmt: skip
        script(
            keys=[nodeinfo.INFO + name, nodeinfo.INDEX], args=[300, name, *nodeinfo.fields(info)]
        )
    client.zadd(view.NODES, {"a@h/1/y": 1})  # only a is still in liveness's set
    client.zadd(nodeinfo.INDEX, {"gone@h/3/z": 1})  # its hash expired
    nodes = view.read_redis(client)
    assert [(n.node, n.state) for n in nodes] == [("a@h", "live"), ("b@h", "reaped")]
    assert nodes[0].models == [{"model": "m@1", "runtime": "onnx", "role": "serving"}]
