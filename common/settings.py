"""Settings: one pydantic-settings class, read from ``INFERQ_*`` environment variables.

Nothing here runs at import time; call :func:`get_settings` where a process starts.
With no variables set, inferq runs on the *embedded default*: a kombu filesystem broker
and an SQLite file under ``INFERQ_HOME`` (``./.inferq``), so ``inferq demo`` works on a
bare machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from inferq.common import redisconn
from inferq.common.settings_checks import (
    check_broker_url,
    check_database_url,
    warn_unknown_variables,
)
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of inferq; environment variable = ``INFERQ_`` + field name in capitals."""

    # hide_input_in_errors: URLs and INFERQ_FLOWER_BASIC_AUTH carry passwords.
    model_config = SettingsConfigDict(
        env_prefix="INFERQ_", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(
        default=Path(".inferq"),
        description="Folder for the embedded broker, SQLite file and default model store.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker, e.g. redis://:password@127.0.0.1:6379/0, rediss://... or "
        "Redis Sentinel sentinel://h1:26379/0;sentinel://h2:26379 (with "
        "INFERQ_SENTINEL_MASTER); unset = embedded filesystem broker under INFERQ_HOME.",
    )
    sentinel_master: str | None = Field(
        default=None,
        description="With a sentinel:// broker URL: the master name the sentinels monitor.",
    )
    broker_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="submit() returns only once this many Redis replicas hold the enqueued "
        "jobs (Redis WAIT), so a failover cannot lose an accepted job; 0 = off (replication "
        "is asynchronous). See RELIABILITY.md for the latency cost.",
    )
    broker_wait_timeout_ms: int = Field(
        default=2000,
        ge=1,
        description="How long submit() waits for INFERQ_BROKER_WAIT_REPLICAS before raising "
        "EnqueueError (the jobs may still be scored; re-submit with the same job ids).",
    )
    database_url: str | None = Field(
        default=None,
        description="Results database, e.g. postgresql://user:pw@host/db; "
        "unset = embedded SQLite file under INFERQ_HOME.",
    )
    model_store: Path | None = Field(
        default=None,
        description="Directory holding registered model artifacts; unset = INFERQ_HOME/models.",
    )
    batch_size: int = Field(
        default=1000, ge=1, le=100_000, description="Rows per message sent by the producer."
    )
    bulk_chunk_size: int = Field(
        default=10_000,
        ge=1,
        le=100_000,
        description="Rows per message of `inferq score` runs (bulk queue).",
    )
    bulk_max_queued_rows: int = Field(
        default=1_000_000,
        ge=0,
        description="Backpressure: a bulk run pauses enqueueing while more rows than this are "
        "sent but not yet committed (bounds Redis memory, ~0.3 GB per million 20-feature "
        "rows); 0 = no limit.",
    )
    bulk_stall_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A bulk run held back by INFERQ_BULK_MAX_QUEUED_ROWS gives up (exit 1, "
        "resumable) after this long without any row committed.",
    )
    max_submit_rows: int = Field(
        default=1_000_000,
        ge=1,
        description="Largest number of rows one submit() call accepts (refused before Redis).",
    )
    submit_linger_ms: float = Field(
        default=2.0,
        ge=0,
        description="How long InferenceClient.submit waits for concurrent submits from other "
        "threads of the process to share one message (like Kafka's linger.ms); 0 = one "
        "message per call, published in the calling thread.",
    )
    alias_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a producer reuses an alias -> version lookup (a promote reaches "
        "online submits within this time); 0 = look it up on every submit.",
    )
    task_events: bool = Field(
        default=True,
        description="Send Celery task events (Flower's task and throughput views need them). "
        "They cost CPU per message: at 200 single-row jobs/s on 2 cores, p99 latency "
        "19.5 ms without vs ~51-78 ms with.",
    )
    online_queue: str = "online"
    bulk_queue: str = "bulk"
    preload: str | None = Field(
        default=None,
        description="Models the worker loads before forking, comma separated NAME:ALIAS or "
        "NAME@VERSION; unset = each model's production version, else its latest.",
    )
    max_loaded_models: int = Field(
        default=8, ge=1, description="Per-process cache of models loaded on demand."
    )
    park_claim_interval: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between a worker's looks at parked messages (jobs of a model "
        "some worker could not load) to claim those it can serve; 0 = never claim.",
    )
    reload_interval: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between a worker's looks at the registry: a promote, retire, "
        "shadow or optimize is loaded in the worker's main process and its children are "
        "recycled (between jobs) to share it; 0 = only at start.",
    )
    shadow_max_ms: float = Field(
        default=50.0,
        ge=0,
        description="Time a shadow version may add to a batch, beyond the primary's own "
        "predict time: it scores as many of the batch's rows as fit (estimated from its "
        "last calls); 0 = no shadow scoring on this worker.",
    )
    drift_window: str = Field(
        default="24h",
        pattern=r"^\s*\d+(\.\d+)?\s*[smhdwSMHDW]\s*$",
        description="Window `inferq metrics` exports drift for (PSI per model, version and "
        "feature against its baseline), e.g. 1h, 24h, 7d.",
    )
    retention: str | None = Field(
        default=None,
        pattern=r"^\s*\d+(\.\d+)?\s*[smhdwSMHDW]\s*$",
        description="How long results are kept: `inferq db prune` without --older-than drops "
        "the daily partitions older than this, e.g. 90d; unset = keep everything.",
    )
    partitions_ahead: int = Field(
        default=7,
        ge=1,
        le=366,
        description="Daily partitions of `predictions` (and its ledger) that workers keep "
        "created ahead of today.",
    )
    start_check: Literal["any", "all", "off"] = Field(
        default="any",
        description="At start the worker loads its preload set and checks every alias target; "
        "it refuses to start (exit code 3) when it can serve none of them (any), when it "
        "cannot serve one of them (all), or never (off). Jobs of a model it cannot serve are "
        "requeued, never answered with error rows.",
    )
    # Reliability knobs (see RELIABILITY.md). The visibility timeout must exceed the task
    # hard time limit, or Redis re-delivers a message that is still being worked on.
    visibility_timeout: int = Field(
        default=300,
        ge=2,
        description="Seconds before Redis hands an unacked message (its worker died) to "
        "another worker; recovery takes this plus at most one restore sweep.",
    )
    task_time_limit: int = Field(
        default=240, ge=2, description="Hard limit per message (the soft limit is 10% lower)."
    )
    unacked_restore_interval: int = Field(
        default=10,
        ge=1,
        description="Seconds between sweeps that give expired unacked messages back "
        "(kombu's default is effectively ~100 s).",
    )
    liveness_timeout: int = Field(
        default=15,
        ge=0,
        description="A worker whose liveness beat (every 1/5 of this) stops for this many "
        "seconds is taken for dead and the messages it held go back to the queue at once, "
        "instead of after INFERQ_VISIBILITY_TIMEOUT; 0 = off.",
    )
    prefetch_multiplier: int = Field(default=1, ge=1)
    consumer_stall_seconds: int = Field(
        default=60,
        ge=0,
        description="Restart a worker's consumer when messages wait, a process is free and "
        "nothing was received for this long (a reconnect that stopped fetching); 0 = off.",
    )
    online_max_batch_size: int = Field(
        default=256,
        ge=1,
        description="Dynamic batching: online messages for one model version are merged "
        "into one model call of up to this many rows (1 = off).",
    )
    online_max_delay_ms: float = Field(
        default=2.0,
        ge=0,
        description="Dynamic batching: how long the first waiting online message may wait "
        "for others to join its model call.",
    )
    online_batching: str | None = Field(
        default=None,
        description="Per-model overrides: 'forest=512/10,linear=off' (rows/delay ms, or off).",
    )
    inflight_ledger: bool = Field(
        default=True,
        description="Record every sent batch in Redis until it is answered, so a message "
        "lost between Redis and a worker's main process (SIGKILL mid-fetch) is sent again.",
    )
    inflight_stale_after: int | None = Field(
        default=None,
        ge=1,
        description="Seconds after which an unanswered batch that is not waiting in its "
        "queue is sent again; default: visibility timeout + 3 restore sweeps + 30 s.",
    )
    reconcile_interval: int = Field(
        default=5,
        ge=1,
        description="Seconds between in-flight ledger checks (one worker per round; a "
        "round is one sorted-set range read unless something is overdue).",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="A message whose worker process died this many times is dead-lettered "
        "(table dead_letters, its jobs get error rows) instead of being delivered again.",
    )
    poll_interval: float = Field(
        default=0.05, gt=0, description="Seconds between result polls in wait()."
    )
    debug: bool = Field(
        default=False,
        description="CLI: print the traceback with a one-line error (same as `inferq --debug`). "
        "Read by the CLI from the environment itself (settings may be what failed); declared "
        "here so that it is documented and not warned about as unknown.",
    )
    flower_basic_auth: SecretStr | None = Field(
        default=None,
        description="Basic auth for `inferq flower`: user:password (several separated by "
        "commas); unset = Flower refuses to start unless --insecure-no-auth.",
    )

    @field_validator("broker_url", "database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """Treat an empty variable (``INFERQ_BROKER_URL=``) as unset."""
        return None if value == "" else value

    @field_validator("broker_url", mode="after")
    @classmethod
    def _broker_url_has_scheme(cls, value: str | None) -> str | None:
        """Refuse broker URLs Celery would only fail on later (``localhost:6379``)."""
        if value is not None:
            check_broker_url(value)
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url_parses(cls, value: str | None) -> str | None:
        """Refuse database URLs SQLAlchemy cannot parse or inferq cannot use."""
        if value is not None:
            check_database_url(value)
        return value

    @field_validator("flower_basic_auth", mode="after")
    @classmethod
    def _user_colon_password(cls, value: SecretStr | None) -> SecretStr | None:
        """Accept only ``user:password[,user2:password2]`` (Flower's --basic-auth format)."""
        if value is None or value.get_secret_value() == "":
            return None
        for pair in value.get_secret_value().split(","):
            user, sep, password = pair.partition(":")
            if not (sep and user.strip() and password):
                # NOTE: never echo the value: it holds a password.
                raise ValueError(
                    "must be user:password (several separated by commas), with a non-empty "
                    "user and password"
                )
        return value

    @model_validator(mode="after")
    def _visibility_above_limit(self) -> Settings:
        # IMPORTANT: Redis re-delivers an unacked message after visibility_timeout; a task
        # allowed to run longer would be executed twice at the same time.
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"INFERQ_VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must be larger than "
                f"INFERQ_TASK_TIME_LIMIT ({self.task_time_limit}s)"
            )
        return self

    @model_validator(mode="after")
    def _sentinel_has_master(self) -> Settings:
        if redisconn.is_sentinel(self.broker_url) and not self.sentinel_master:
            raise ValueError(
                "INFERQ_BROKER_URL is a Redis Sentinel URL: set INFERQ_SENTINEL_MASTER to the "
                "master name the sentinels monitor"
            )
        if 0 < self.liveness_timeout < 5:
            raise ValueError("INFERQ_LIVENESS_TIMEOUT must be 0 (off) or at least 5 seconds")
        return self

    @model_validator(mode="after")
    def _batching_parses(self) -> Settings:
        try:
            parsed = self.batching_overrides()
        except ValueError as exc:
            raise ValueError(
                "INFERQ_ONLINE_BATCHING must look like 'forest=512/10,linear=off' "
                f"(model=rows/delay_ms or model=off): {exc}"
            ) from None
        for name, (size, delay) in parsed.items():
            if not name or size < 1 or delay < 0:
                raise ValueError(
                    f"INFERQ_ONLINE_BATCHING entry for {name!r}: rows must be >= 1, delay >= 0"
                )
        return self

    # ----- derived values -------------------------------------------------------------
    @property
    def soft_time_limit(self) -> int:
        """Seconds after which a task is asked to stop (then answers its jobs with errors)."""
        return self.task_time_limit - min(30, max(1, self.task_time_limit // 10))

    def batching_for(self, model: str) -> tuple[int, float]:
        """(max rows, max delay in seconds) of dynamic batching for ``model``; rows 1 = off."""
        default = (self.online_max_batch_size, self.online_max_delay_ms)
        size, delay = self.batching_overrides().get(model, default)
        return size, delay / 1000.0

    def batching_overrides(self) -> dict[str, tuple[int, float]]:
        """Parsed INFERQ_ONLINE_BATCHING (validated when settings are built)."""
        out: dict[str, tuple[int, float]] = {}
        for item in (self.online_batching or "").split(","):
            if not item.strip():
                continue
            name, _, spec = item.strip().partition("=")
            if spec.strip().lower() == "off":
                out[name.strip()] = (1, 0.0)
                continue
            size, _, delay = spec.partition("/")
            out[name.strip()] = (
                int(size),
                float(delay) if delay.strip() else self.online_max_delay_ms,
            )
        return out

    @property
    def stale_after(self) -> int:
        """Seconds before an unanswered, unqueued batch counts as lost (see common/inflight)."""
        if self.inflight_stale_after is not None:
            return self.inflight_stale_after
        return self.visibility_timeout + 3 * self.unacked_restore_interval + 30

    @property
    def home_dir(self) -> Path:
        """Absolute INFERQ_HOME."""
        return self.home.expanduser().resolve()

    @property
    def model_store_dir(self) -> Path:
        """Absolute model store directory."""
        return (self.model_store or self.home_dir / "models").expanduser().resolve()

    @property
    def embedded_broker(self) -> bool:
        """True when no broker is configured and the filesystem broker is used."""
        return not self.broker_url

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded filesystem broker."""
        return self.home_dir / "broker"

    @property
    def effective_broker_url(self) -> str:
        """The broker URL Celery connects to."""
        return self.broker_url or "filesystem://localhost//"

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL, normalised to the psycopg 3 driver for Postgres."""
        url = self.database_url or f"sqlite:///{self.home_dir / 'inferq.db'}"
        for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    def preload_specs(self) -> list[str] | None:
        """Parsed INFERQ_PRELOAD, or None for the default (every production alias)."""
        if self.preload is None:
            return None
        return [s.strip() for s in self.preload.split(",") if s.strip()]


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment (plus explicit overrides); call at process start."""
    # Before building: a misspelt variable may be why the settings below are refused.
    warn_unknown_variables(Settings.model_fields)
    return Settings(**overrides)  # type: ignore[arg-type]
