"""One import namespace: everything inferq installs lives under `inferq` (issue 11)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("inferq-*.whl")
    return found


def test_wheel_has_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"inferq"}
    # the mapped folders and the data Alembic needs are all inside it
    for member in (
        "inferq/common/settings.py",
        "inferq/workers/app.py",
        "inferq/producer/client.py",
        "inferq/models/registry.py",
        "inferq/migrations/env.py",
        "inferq/migrations/script.py.mako",
        "inferq/migrations/versions/0001_initial.py",
        "inferq/bench/__main__.py",
        "inferq/ops/flower.py",
    ):
        assert member in names, member
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["inferq"]


def test_user_modules_named_like_our_folders_do_not_collide(tmp_path: Path) -> None:
    """A user's own models.py, common.py, producer.py, workers.py beside their script."""
    for name in ("models", "common", "producer", "workers", "migrations", "ops", "bench"):
        (tmp_path / f"{name}.py").write_text(f"WHO = 'user {name}'\n")
    (tmp_path / "script.py").write_text(
        textwrap.dedent(
            """
            import models, common, producer, workers
            from inferq import InferenceClient, InferqError, ModelNotFound
            import inferq.models.registry, inferq.common.settings, inferq.workers.app
            import inferq.migrations
            assert models.WHO == "user models" and common.WHO == "user common"
            assert producer.WHO == "user producer" and workers.WHO == "user workers"
            assert InferenceClient.__module__ == "inferq.producer.client"
            assert issubclass(ModelNotFound, InferqError)
            assert inferq.migrations.SCRIPT_LOCATION.joinpath("versions").is_dir()
            print("ok")
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_entry_points_run_from_the_namespace(tmp_path: Path) -> None:
    for argv in (
        [sys.executable, "-m", "inferq", "--help"],
        [sys.executable, "-m", "inferq.bench", "--help"],
        [sys.executable, "-m", "celery", "-A", "inferq.workers.app", "inspect", "--help"],
    ):
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert out.returncode == 0, (argv, out.stderr)


def test_no_code_imports_the_folders_by_their_repository_names() -> None:
    """`from common...` works from the repository root only, as a second copy of the module
    (its exceptions are not inferq's): everything must go through `inferq.`."""
    import re

    bare = re.compile(
        r"""(^|["'])\s*(from|import) (common|workers|producer|models|migrations|bench|ops)\b"""
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("common", "workers", "producer", "models", "migrations", "bench", "ops",
                       "inferq", "tests", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line) and path.name != "test_packaging.py"  # its user script does
    ]  # fmt: skip
    assert offenders == []
