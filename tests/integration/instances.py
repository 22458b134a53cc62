"""Throwaway PostgreSQL and Redis servers for fault tests (restarted, stopped, killed at will).

The shared services on 5432/6379 are never touched: each instance has its own temp dir and
a free port on 127.0.0.1. PostgreSQL refuses to run as root, so when the tests run as root
``initdb``/``pg_ctl`` run as the ``postgres`` user in a temp dir that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from tests.conftest import unavailable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind port 0 to pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], timeout: float, poll: float = 0.05) -> float:
    """Poll ``ready()`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    started = time.monotonic()
    while not ready():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not true after {timeout}s")
        time.sleep(poll)
    return time.monotonic() - started


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed")
    return found[-1]  # newest major version


class ThrowawayPostgres:
    """A private PostgreSQL cluster (initdb, trust auth) on a free port; ``close()`` removes it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="inferq-pg-"))
        self._user: str | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self._user = "postgres"
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    def init(self) -> None:
        """initdb: a new cluster with trust authentication and superuser ``postgres``."""
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    @property
    def url(self) -> str:
        """Admin URL (database ``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=60)

    def _ctl(self, action: str, *extra: str) -> None:
        # NOTE: fsync=off only matters for an OS crash; a killed or restarted server still
        # keeps every committed transaction (synchronous_commit stays on).
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "30", action, *extra)  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions, close every connection)."""
        self._ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """Stop (``mode``) and start again on the same port and data."""
        self._ctl("restart", "-m", mode)

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        """Stop the server if it runs (immediate) and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class ThrowawayRedis:
    """A private ``redis-server`` (AOF, fsync on every write) on a free port and temp dir."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="inferq-redis-"))
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL (append ``/<db>``)."""
        return f"redis://127.0.0.1:{self.port}"

    def client(self, db: int = 0) -> redis.Redis:
        """A redis-py client with short timeouts."""
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self, *extra: str) -> None:
        """Start (again) on the same port and dir: the AOF brings back every acknowledged write."""
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
            "--appendfsync", "always", "--save", "", "--dir", str(self.dir), "--daemonize", "no",
            *extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        wait_until(f"redis on port {self.port} answers PING", self._ping, timeout=20)

    def stop(self, kill: bool = False) -> None:
        """SHUTDOWN cleanly (SIGTERM: AOF flushed) or crash it (``kill``: SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(20)

    def close(self) -> None:
        """Kill the server if it runs and delete its files."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelGroup:
    """A Redis master, one replica and three sentinels (quorum 2) on free loopback ports."""

    MASTER = "inferq-master"

    def __init__(self) -> None:
        self.master, self.replica = ThrowawayRedis(), ThrowawayRedis()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.dir = Path(tempfile.mkdtemp(prefix="inferq-sentinel-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """kombu's form: password/db on the first sentinel, the others after ';'."""
        first, *rest = self.sentinel_ports
        return ";".join([f"sentinel://127.0.0.1:{first}/0",
                         *(f"sentinel://127.0.0.1:{p}" for p in rest)])  # fmt: skip

    def start(self) -> None:
        """Master, replica (in sync), then the sentinels (each sees the others)."""
        self.master.start()
        self.replica.start("--replicaof", "127.0.0.1", str(self.master.port))
        wait_until("the replica is in sync", lambda: self.replica.client().info(
            "replication").get("master_link_status") == "up", timeout=20)  # fmt: skip
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n"
            )
            with (self.dir / f"sentinel-{port}.log").open("ab") as log:
                self.procs.append(subprocess.Popen(
                    [self.master.binary, str(conf), "--sentinel"], stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        wait_until("three sentinels know each other", lambda: all(
            self._sentinels_seen(p) >= 2 for p in self.sentinel_ports), timeout=30)  # fmt: skip

    def _sentinels_seen(self, port: int) -> int:
        try:
            info = redis.Redis(port=port, socket_timeout=2).sentinel_master(self.MASTER)
            return int(info.get("num-other-sentinels", 0))
        except redis.RedisError:
            return -1

    def master_port(self) -> int:
        """The master's port as the sentinels see it now."""
        host_port = redis.Redis(
            port=self.sentinel_ports[0], socket_timeout=2
        ).sentinel_get_master_addr_by_name(self.MASTER)
        return int(host_port[1])

    def close(self) -> None:
        """Kill everything and delete the files."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.master.close()
        self.replica.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A started ThrowawayPostgres, removed on exit (skip locally / fail in CI if impossible)."""
    pg = ThrowawayPostgres()
    try:
        try:
            pg.init()
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            unavailable("a throwaway PostgreSQL (initdb)", exc)
        pg.start()
        yield pg
    finally:
        pg.close()


@contextlib.contextmanager
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    """A started ThrowawayRedis, removed on exit (skip locally / fail in CI if impossible)."""
    try:
        server = ThrowawayRedis()
    except OSError as exc:
        unavailable("a throwaway Redis (redis-server)", exc)
    try:
        server.start()
        yield server
    finally:
        server.close()
