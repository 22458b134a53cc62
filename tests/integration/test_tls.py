"""Security defaults on the wire: Redis with a password over TLS (rediss://), end to end."""

import itertools
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import redis
from inferq.common.db import make_engine
from inferq.models import registry
from inferq.producer import InferenceClient

from tests.conftest import REPO, settings_env
from tests.integration.instances import free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PASSWORD = "s3cret-test-pw"


@pytest.fixture
def tls_redis(tmp_path):
    """A throwaway Redis that only speaks TLS and requires a password; yields (port, ca)."""
    if not shutil.which("openssl") or not shutil.which("redis-server"):
        pytest.skip("openssl and redis-server are needed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert,
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "",
         "--appendonly", "no", "--dir", tmp_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the TLS Redis did not start")
            time.sleep(0.2)
    yield port, cert
    proc.terminate()
    proc.wait(10)


def test_jobs_flow_over_tls_with_a_password_and_bad_credentials_are_refused(
    pg_settings, binary_model, tls_redis, start_worker
):
    port, ca = tls_redis
    good = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    settings = pg_settings.model_copy(update={"broker_url": good})
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, binary_model.path, "cancer", "production")
    worker = start_worker(settings, concurrency=1)
    x = np.asarray(binary_model.x[:50])
    with InferenceClient(settings, engine=engine) as client:
        results = client.wait(client.submit("cancer", x), timeout=60)
    assert len(results) == 50 and all(r.ok for r in results)
    assert worker.proc.poll() is None
    refused = {
        "wrong password": good.replace(PASSWORD, "wrong"),
        "no CA to verify the server": good.split("&ssl_ca_certs")[0],
        "plain text to a TLS port": f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
    }
    # NOTE: each in a fresh process, as a misconfigured producer would be. In one process,
    # after a verified TLS connection, kombu later accepted the same server for a URL
    # without ssl_ca_certs (see RELIABILITY.md, known limits).
    script = (
        "import numpy as np, sys\n"
        "from inferq.common.errors import EnqueueError\n"
        "from inferq.producer import InferenceClient\n"
        "try:\n"
        f"    InferenceClient.from_env().submit('cancer', np.zeros((2, {x.shape[1]})))\n"
        "except EnqueueError as exc:\n"
        "    sys.exit(f'refused: {exc}')\n"
    )
    for (what, url), ledger in itertools.product(refused.items(), ("true", "false")):
        env = settings_env(settings) | {"INFERQ_BROKER_URL": url, "INFERQ_INFLIGHT_LEDGER": ledger}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=120, cwd=REPO)  # fmt: skip
        assert done.returncode == 1, (what, ledger, done.stdout, done.stderr[-500:])
        assert "refused: could not enqueue 2 job(s)" in done.stderr, (what, ledger)
    engine.dispose()
