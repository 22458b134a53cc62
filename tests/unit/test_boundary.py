"""Import boundaries: the producer never pulls in scikit-learn; importing touches no service."""

import subprocess
import sys

CHECK = """
import sys
import inferq
from inferq import InferenceClient
import inferq.common.celery, inferq.common.contract, inferq.common.schema
import inferq.models.registry
import inferq.producer.bulk, inferq.producer.sources, inferq.common.rows.coerce
heavy = sorted(m for m in ("sklearn", "joblib", "scipy", "inferq.workers") if m in sys.modules)
assert not heavy, f"producer imported {heavy}"
print("clean")
"""


def test_producer_does_not_import_sklearn():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_importing_worker_app_reads_no_settings_and_opens_nothing():
    code = """
import os
os.environ["INFERQ_BATCH_SIZE"] = "not-a-number"   # would fail if settings were read
os.environ["INFERQ_BROKER_URL"] = "redis://127.0.0.1:1/0"   # nothing listens there
import inferq.workers.app
print("lazy" if inferq.workers.app.app._inferq_settings is None else "eager")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lazy"
