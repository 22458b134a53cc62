"""Celery app factory shared by producers (send by name) and workers (run tasks)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from inferq.common import contract, inflight, redisconn
from inferq.common.settings import Settings, get_settings
from kombu import Exchange, Queue


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for inferq; see RELIABILITY.md for why each value is what it is."""
    transport_options: dict[str, Any] = {}
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.1,  # seconds between folder scans (default 1 s)
        }
    else:
        # IMPORTANT: unacked messages (a worker died) come back after visibility_timeout;
        # it must be longer than the hard task time limit or live tasks get re-delivered.
        transport_options = {
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for expired unacked messages every N seconds (throttle 1: every sweep
            # scans), so a killed worker's messages return within timeout + N seconds.
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": 1,
            # A worker killed during a sweep holds the sweep's mutex until it expires (kombu
            # default 300 s), delaying every restore; two overlapping sweeps at worst deliver
            # a message twice, which inferq's idempotent writes absorb.
            "unacked_mutex_expire": max(30, 6 * settings.unacked_restore_interval),
            # Consume queues in the order given (online before bulk) instead of round-robin,
            # so a flood of bulk chunks delays an online job by at most one chunk.
            "queue_order_strategy": "priority",
        }
        if redisconn.is_sentinel(settings.broker_url):
            # kombu's sentinel:// transport asks these sentinels for this master's address.
            transport_options["master_name"] = settings.sentinel_master
    exchange = Exchange("inferq", type="direct")
    return {
        "broker_url": settings.effective_broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": contract.SERIALIZER,
        "accept_content": list(contract.ACCEPT_CONTENT),
        "result_accept_content": list(contract.ACCEPT_CONTENT),
        "event_serializer": "json",
        # Results go to the results database, not to a Celery result backend.
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: ack only after the results are committed; requeue when a child dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_queues": [
            Queue(settings.online_queue, exchange, routing_key=settings.online_queue),
            Queue(settings.bulk_queue, exchange, routing_key=settings.bulk_queue),
        ],
        "task_default_queue": settings.online_queue,
        "task_default_exchange": "inferq",
        "task_default_routing_key": settings.online_queue,
        "task_routes": {contract.SCORE_BATCH: {"queue": settings.online_queue}},
        # Flower and the metrics need events.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Hot reload (workers/reload.py): billiard gives each child an event that makes it
        # exit between jobs, and the pool forks a replacement from the main process, which
        # then shares the newly loaded model copy-on-write.
        "worker_pool_restarts": True,
    }


class InferqCelery(Celery):
    """Celery app that reads inferq settings lazily, when its config is first needed."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        self._inferq_settings = settings
        super().__init__("inferq", **kwargs)

    @property
    def inferq_settings(self) -> Settings:
        """The settings this app was configured from (read from the environment if not given)."""
        if self._inferq_settings is None:
            self._inferq_settings = get_settings()
        return self._inferq_settings

    def on_configure(self) -> None:
        """Apply inferq's config the first time Celery reads its configuration."""
        # NOTE: conf.update() here would recurse (conf is being built); a config source is
        # what Celery's _load_config reads right after this hook.
        self.config_from_object(celery_config(self.inferq_settings))


def create_celery(settings: Settings | None = None) -> InferqCelery:
    """Create a Celery app for inferq; with no settings, they are read on first use."""
    return InferqCelery(settings)


def send_score(
    app: Any, producer: Any, queue: str, payload: dict[str, Any], describe: str, sent_at: float
) -> None:
    """Publish one score message by task name (first sends and in-flight re-sends)."""
    app.send_task(
        contract.SCORE_BATCH,
        kwargs=payload,
        queue=queue,
        routing_key=queue,
        producer=producer,
        headers={inflight.SENT_HEADER: sent_at, inflight.BATCH_HEADER: payload.get("batch_id")},
        # Flower and logs show this summary, never the feature payload.
        argsrepr="()",
        kwargsrepr=describe,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                      "interval_max": 2},
    )  # fmt: skip
