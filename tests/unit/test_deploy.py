"""deploy/ (Kubernetes Deployment + KEDA ScaledObject) checked statically: no cluster here."""

import subprocess
import sys
from pathlib import Path

import yaml
from inferq.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _docs(name: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert all({"apiVersion", "kind", "metadata", "spec"} <= set(d) for d in docs), name
    return {d["kind"]: d for d in docs}


def test_worker_deployment_runs_an_existing_inferq_command_as_non_root():
    deployment = _docs("worker-deployment.yaml")["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    cmd = container["command"]
    assert cmd[:2] == ["inferq", "worker"]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["INFERQ_BROKER_URL"]["valueFrom"]  # no password in the file
    assert "secretKeyRef" in env["INFERQ_DATABASE_URL"]["valueFrom"]
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    # The same arguments are accepted by the real CLI (parsed up to --help).
    out = subprocess.run([sys.executable, "-m", "inferq", *cmd[1:], "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_keda_scales_the_worker_deployment_on_both_default_queues():
    objs = _docs("keda-scaledobject.yaml")
    scaled, auth = objs["ScaledObject"], objs["TriggerAuthentication"]
    deployment = _docs("worker-deployment.yaml")["Deployment"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "redis" for t in triggers)
    defaults = Settings()
    assert {t["metadata"]["listName"] for t in triggers} == {
        defaults.online_queue,
        defaults.bulk_queue,
    }
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {env["INFERQ_ONLINE_QUEUE"], env["INFERQ_BULK_QUEUE"]} == {
        t["metadata"]["listName"] for t in triggers
    }
    for t in triggers:
        assert int(t["metadata"]["listLength"]) >= 1
        assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert "password" not in t["metadata"]  # from the Secret, via TriggerAuthentication
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password" and ref["name"] and ref["key"]
