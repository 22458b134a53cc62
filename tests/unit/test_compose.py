"""docker-compose.yml cannot run here (no Docker engine): check it statically instead."""

import shlex
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_safety_settings():
    services = _compose()["services"]
    assert set(services) >= {"redis", "postgres", "migrate", "worker", "flower"}
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--requirepass" in redis_cmd
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert "container_name" not in services["worker"]  # must stay scalable (--scale worker=N)
    assert "--basic-auth=" in " ".join(services["flower"]["command"])
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert "healthcheck" in services["postgres"]


def test_every_inferq_command_in_compose_exists():
    for name, service in _compose()["services"].items():
        cmd = service.get("command")
        if not cmd or cmd[0] not in {"inferq", "celery"}:
            continue
        if cmd[0] == "inferq":
            sub = list(takewhile(lambda a: not a.startswith("-"), cmd[1:]))
            argv = [sys.executable, "-m", "inferq", *sub, "--help"]
        else:  # celery -A workers.app <sub>
            argv = [sys.executable, "-m", "celery", *cmd[1:4], "--help"]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        assert out.returncode == 0, f"{name}: {shlex.join(argv)} failed:\n{out.stderr[-2000:]}"
