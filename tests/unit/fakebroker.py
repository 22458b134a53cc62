"""A producer on a fakeredis broker: publish-only tests read the messages off the queue."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import fakeredis
import msgpack
import pytest
from inferq.common.db import make_engine
from inferq.common.settings import Settings
from inferq.models import registry
from inferq.producer import InferenceClient
from kombu.transport import redis as kombu_redis


def fake_client(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, model_path: Any, **kw: Any
) -> InferenceClient:
    """A client whose broker is an in-memory fakeredis; model ``reg`` (v1) is registered.

    ``kw``: settings overrides, plus ``linger_ms`` for the client.
    """
    # A host of its own per client: fakeredis keys its in-memory servers by host:port.
    host = f"fake-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(kombu_redis.Channel, "connection_class", fakeredis.FakeRedisConnection)
    linger = kw.pop("linger_ms", None)
    settings = settings.model_copy(update={"broker_url": f"redis://{host}:6379/0", **kw})
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, model_path, "reg", alias="production")
    fake = fakeredis.FakeRedis(host=host, port=6379, db=0)
    client = InferenceClient(settings, engine=engine, redis_client=fake, linger_ms=linger)
    client.fake = fake  # type: ignore[attr-defined]
    return client


def messages(client: Any) -> list[dict[str, Any]]:
    """The kombu envelopes waiting in the online queue, oldest first."""
    raw = client.fake.lrange(client.settings.online_queue, 0, -1)
    return [json.loads(m) for m in reversed(raw)]  # LPUSH: newest first


def payloads(client: Any) -> list[dict[str, Any]]:
    """The task kwargs (inferq payloads) of the waiting messages, oldest first."""
    return [body(m) for m in messages(client)]


def body(message: dict[str, Any]) -> dict[str, Any]:
    """The task kwargs of one kombu envelope."""
    _args, kwargs, _embed = msgpack.unpackb(base64.b64decode(message["body"]), raw=False)
    return kwargs
