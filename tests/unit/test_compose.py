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
    assert services["flower"]["command"][:2] == ["inferq", "flower"]
    assert "--insecure-no-auth" not in services["flower"]["command"]
    assert "FLOWER_BASIC_AUTH:?" in services["flower"]["environment"]["INFERQ_FLOWER_BASIC_AUTH"]
    for name in ("flower", "metrics", "prometheus"):  # operator ports: localhost only
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    assert "healthcheck" in services["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["migrate"]["command"] == ["inferq", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"  # one-shot


def test_prometheus_is_optional_and_scrapes_flower_and_inferq():
    compose = _compose()
    prom = compose["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    config_mount = next(v for v in prom["volumes"] if "prometheus.yml" in v)
    config = yaml.safe_load((ROOT / config_mount.split(":")[0]).read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]
    }
    metrics_port = compose["services"]["metrics"]["command"][-1]
    assert targets == {"flower": "flower:5555", "inferq": f"metrics:{metrics_port}"}
    assert "--port" in compose["services"]["flower"]["command"]


def test_dockerfile_runs_as_non_root_with_a_models_volume():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER inferq" in dockerfile and 'VOLUME ["/models"]' in dockerfile
    assert "COPY ops ops" in dockerfile  # `inferq flower/metrics/scale` need the ops package


def test_every_inferq_command_in_compose_exists():
    for name, service in _compose()["services"].items():
        cmd = service.get("command")
        if not cmd or cmd[0] not in {"inferq", "celery"}:
            continue
        if cmd[0] == "inferq":
            sub = list(takewhile(lambda a: not a.startswith("-"), cmd[1:]))
            argv = [sys.executable, "-m", "inferq", *sub, "--help"]
        else:  # celery -A inferq.workers.app <sub>
            argv = [sys.executable, "-m", "celery", *cmd[1:4], "--help"]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        assert out.returncode == 0, f"{name}: {shlex.join(argv)} failed:\n{out.stderr[-2000:]}"
