"""`inferq flower`: Flower for the inferq Celery app, with basic auth on by default.

The password never goes on the command line (``ps`` shows argv): it reaches Flower through
``FLOWER_BASIC_AUTH``, which Flower reads like its ``--basic-auth`` option. Flower runs in a
child process (``python -m inferq.ops.flower``) that first widens Flower's queue list, see
:func:`queue_names`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from inferq.common import compat
from inferq.common.errors import InferqError
from inferq.common.settings import Settings

log = logging.getLogger("inferq.flower")

#: The Celery app Flower monitors (the same one the workers run).
CELERY_APP = "inferq.workers.app"


class FlowerAuthMissing(InferqError):
    """Flower would start without authentication and --insecure-no-auth was not given."""

    def __init__(self) -> None:
        super().__init__(
            "refusing to start Flower without authentication: set "
            "INFERQ_FLOWER_BASIC_AUTH=user:password (or pass --insecure-no-auth for local use)"
        )


def flower_command(
    settings: Settings,
    *,
    port: int = 5555,
    address: str = "127.0.0.1",
    insecure_no_auth: bool = False,
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start Flower for inferq; raises FlowerAuthMissing."""
    env = dict(os.environ if base_env is None else base_env)
    # NOTE: a FLOWER_BASIC_AUTH inherited from the environment must not silently decide
    # whether auth is on; inferq's own setting (or the explicit flag) does.
    env.pop("FLOWER_BASIC_AUTH", None)
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    elif insecure_no_auth:
        # Flower answers 401 on /api/* without auth unless this is set.
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        raise FlowerAuthMissing()
    argv = [
        sys.executable, "-m", "inferq.ops.flower", "-A", CELERY_APP, "flower",
        f"--address={address}", f"--port={port}",
        # Persisting state or purging workers is not ours to decide; keep Flower's defaults.
    ]  # fmt: skip
    return argv, env


def queue_names(workers: Mapping[str, Any], configured: Iterable[str]) -> list[str]:
    """Queues Flower should measure: those of known workers plus every configured queue.

    Flower 2.2 lists only the queues of the workers it knows and falls back to the app's
    queues when it knows none; with a dedicated `online` pool running and the `bulk` pool
    scaled to zero, the bulk backlog would vanish from Flower exactly when it matters.
    """
    names = {q for q in configured if q}
    for info in workers.values():
        for queue in info.get("active_queues", []) or []:
            if queue.get("name"):
                names.add(queue["name"])
    return sorted(names)


def _patch_flower_queue_names() -> None:
    """Make Flower's broker page and /api/queues/length always include inferq's queues."""
    handler = compat.flower_handler()  # raises IncompatibleInternals if Flower changed

    def get_active_queue_names(self: Any) -> list[str]:
        conf = self.capp.conf
        configured = [conf.task_default_queue, *(q.name for q in conf.task_queues or [])]
        return queue_names(self.application.workers, configured)

    handler.get_active_queue_names = get_active_queue_names


def main() -> None:
    """``python -m inferq.ops.flower -A inferq.workers.app flower ...``: Celery with the patch."""
    from celery.bin.celery import main as celery_main

    _patch_flower_queue_names()
    sys.argv[0] = "celery"
    celery_main()


if __name__ == "__main__":
    main()
