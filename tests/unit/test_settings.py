"""Settings: env prefix, embedded defaults, URL normalisation, safety checks."""

import pytest
from inferq.common.celery import celery_config
from inferq.common.settings import Settings, get_settings
from pydantic import ValidationError


def test_embedded_default_when_nothing_is_set(monkeypatch, tmp_path):
    for var in ("INFERQ_BROKER_URL", "INFERQ_DATABASE_URL", "INFERQ_MODEL_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INFERQ_HOME", str(tmp_path))
    s = get_settings()
    assert s.embedded_broker and s.effective_broker_url.startswith("filesystem://")
    assert s.effective_database_url == f"sqlite:///{tmp_path}/inferq.db"
    assert s.model_store_dir == tmp_path / "models"


def test_env_vars_and_postgres_url_normalisation(monkeypatch):
    monkeypatch.setenv("INFERQ_BROKER_URL", "rediss://:pw@redis.example:6380/2")
    monkeypatch.setenv("INFERQ_DATABASE_URL", "postgresql://u:p@db/inferq")
    monkeypatch.setenv("INFERQ_BATCH_SIZE", "250")
    s = get_settings()
    assert s.effective_database_url == "postgresql+psycopg://u:p@db/inferq"
    assert s.batch_size == 250 and not s.embedded_broker
    conf = celery_config(s)
    assert conf["broker_url"] == "rediss://:pw@redis.example:6380/2"
    assert conf["broker_transport_options"] == {
        "visibility_timeout": 300,
        "unacked_restore_interval": 10,  # a dead worker's messages return within ~310 s
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 60,  # a sweep mutex held by a killed worker expires soon
        "queue_order_strategy": "priority",  # online before bulk, not round-robin
    }
    assert (conf["task_time_limit"], conf["task_soft_time_limit"]) == (240, 216)
    assert [q.name for q in conf["task_queues"]] == ["online", "bulk"]


def test_empty_variable_means_unset(monkeypatch):
    monkeypatch.setenv("INFERQ_BROKER_URL", "")
    assert get_settings().embedded_broker


def test_visibility_timeout_must_exceed_task_time_limit(monkeypatch):
    monkeypatch.setenv("INFERQ_TASK_TIME_LIMIT", "900")
    monkeypatch.setenv("INFERQ_VISIBILITY_TIMEOUT", "600")
    with pytest.raises(ValidationError, match="must be larger than INFERQ_TASK_TIME_LIMIT"):
        get_settings()


def test_safety_critical_celery_settings():
    conf = celery_config(get_settings(broker_url="redis://x/0"))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["accept_content"] == ["msgpack", "json"]
    assert conf["task_serializer"] == "msgpack"
    assert conf["task_time_limit"] < conf["broker_transport_options"]["visibility_timeout"]


def test_per_model_batching_overrides_parse_and_bad_ones_are_refused():
    s = get_settings(online_batching="forest=512/10, linear=off,x=32", online_max_delay_ms=3)
    assert s.batching_for("forest") == (512, 0.010)
    assert s.batching_for("linear") == (1, 0.0)  # off
    assert s.batching_for("x") == (32, 0.003)  # the default delay
    assert s.batching_for("other") == (256, 0.003)  # the defaults
    for bad in ("forest=abc", "forest=0/2", "=5/1"):
        with pytest.raises(ValidationError, match="INFERQ_ONLINE_BATCHING"):
            get_settings(online_batching=bad)


def test_readme_documents_every_setting():
    """Everything a user needs is in README.md: every INFERQ_* setting is in its table."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [
        f"INFERQ_{name.upper()}"
        for name in Settings.model_fields
        if f"`INFERQ_{name.upper()}`" not in readme
    ]
    assert missing == []
