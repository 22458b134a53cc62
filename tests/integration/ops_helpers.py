"""Helpers for the operations tests: free ports, `inferq` server subprocesses, bounded waits."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from inferq.procs import stop_worker
from tests.conftest import REPO
from tests.integration.instances import free_port

T = TypeVar("T")
__all__ = ["free_port", "http_get", "start_cli", "wait_for"]


def wait_for(
    what: str,
    probe: Callable[[], T],
    until: Callable[[T], bool],
    timeout: float,
    every: float = 0.3,
) -> T:
    """Call ``probe`` until ``until(value)`` holds; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as exc:  # the server may still be starting
            last = exc
        else:
            if until(value):
                return value
            last = value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http_get(url: str, auth: tuple[str, str] | None = None, timeout: float = 5) -> tuple[int, str]:
    """GET ``url`` (optionally with basic auth); returns (status, body) even for 4xx."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Factory: start_cli(args, env) -> a running `inferq ARGS` process, stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = tmp_path / f"inferq-{args[0]}-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferq", *args], cwd=REPO, env=env,
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        proc.log = log  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        stop_worker(proc, grace=10)
