"""Screenshots of Flower during a bulk run: docs/flower-workers.png and docs/flower-broker.png.

Needs INFERQ_BROKER_URL (Redis) and INFERQ_DATABASE_URL (Postgres, migrated) and Debian's
`chromium`. Registers a small model, starts `inferq flower` (basic auth) and two worker nodes,
publishes a bulk backlog, and photographs Flower with headless Chromium. Basic auth reaches
Chromium as an Authorization header set over the DevTools protocol (credentials in the URL
are not sent with the page's own API calls).

    python scripts/flower_screenshot.py [--out docs] [--messages 120]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AUTH = "ops:screenshot"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


async def _shoot(devtools_port: int, shots: list[tuple[str, Path]], token: str) -> None:
    """Drive Chromium over CDP: auth header, viewport, navigate, wait, capture."""
    from tornado.websocket import websocket_connect

    with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list") as resp:
        page = next(t for t in json.load(resp) if t["type"] == "page")
    ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=64 << 20)
    ids = iter(range(1, 10_000))

    async def call(method: str, **params: object) -> dict:
        msg_id = next(ids)
        await ws.write_message(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await ws.read_message())
            if reply.get("id") == msg_id:
                return reply.get("result", {})

    await call("Network.enable")
    await call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
    await call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
               deviceScaleFactor=1, mobile=False)  # fmt: skip
    for url, path in shots:
        await call("Page.navigate", url=url)
        time.sleep(4)  # Flower fills its tables with API calls after the page loads
        data = await call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        print(f"wrote {path}")
    ws.close()


def main() -> None:
    """Run the scenario and write the screenshots."""
    import numpy as np
    from inferq.common.settings import get_settings
    from inferq.models import registry
    from inferq.producer import InferenceClient
    from sklearn.linear_model import LogisticRegression

    from inferq.procs import stop_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--messages", type=int, default=120, help="bulk messages of 5,000 rows")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or sys.exit("install Debian's chromium first")
    settings = get_settings()
    tmp = Path(tempfile.mkdtemp(prefix="inferq-shot-"))
    env = {**os.environ, "INFERQ_FLOWER_BASIC_AUTH": AUTH}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20))
    import joblib

    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), tmp / "m.joblib")
    client = InferenceClient(settings)
    registry.register(client.engine, settings.model_store_dir, tmp / "m.joblib", "screenshot",
                      "production")  # fmt: skip
    port, devtools = _free_port(), _free_port()
    procs = [
        _spawn([sys.executable, "-m", "inferq", "flower", "--port", str(port)], env,
               tmp / "flower.log"),
        *(_spawn([sys.executable, "-m", "inferq", "worker", "-c", "1", "-n", f"{n}@%h"], env,
                 tmp / f"{n}.log") for n in ("node-a", "node-b")),
    ]  # fmt: skip
    chrome = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthcheck")
        time.sleep(8)  # workers ready, Flower has inspected them
        sized = InferenceClient(settings.model_copy(update={"batch_size": 5000}))
        batches = sized.build_batches("screenshot", rng.normal(size=(5000 * args.messages, 20)))
        for b in batches:
            b.run_id = "screenshot-run"
        sized.publish(batches, queue=settings.bulk_queue, batched=True)
        time.sleep(6)  # let the workers get going so the counters move
        chrome = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--no-first-run", "--window-size=1400,900",
             f"--remote-debugging-port={devtools}", f"--user-data-dir={tmp / 'chrome'}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait_http(f"http://127.0.0.1:{devtools}/json/version")
        from tornado.ioloop import IOLoop

        args.out.mkdir(parents=True, exist_ok=True)
        base = f"http://127.0.0.1:{port}"
        shots = [(f"{base}/", args.out / "flower-workers.png"),
                 (f"{base}/broker", args.out / "flower-broker.png")]  # fmt: skip
        token = base64.b64encode(AUTH.encode()).decode()
        IOLoop.current().run_sync(lambda: _shoot(devtools, shots, token), timeout=120)
        sized.close()
    finally:
        if chrome is not None:
            stop_worker(chrome, grace=5)  # type: ignore[arg-type]
        for proc in procs:
            stop_worker(proc, grace=30)
        client.close()


if __name__ == "__main__":
    main()
