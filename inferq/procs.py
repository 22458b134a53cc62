"""Stopping worker subprocesses (the demo, the benchmark and the tests start them)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM (warm shutdown), wait ``grace`` seconds, then SIGKILL the process group.

    The worker must have been started with ``start_new_session=True``; the group kill also
    ends prefork children left behind by a parent that died.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)
