"""Run mypy on the `inferq` package as it is installed (``python scripts/typecheck.py``).

The repository keeps workers/, producer/, models/, common/ ... at the top level and the build
maps them into ``inferq.*`` (pyproject ``package-dir``). mypy cannot follow that mapping (nor
the editable install's import hook), so this builds the installed layout as a tree of
symlinks under build/typecheck/ and checks that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_tree() -> Path:
    """build/typecheck/inferq/<sub> -> the mapped top-level folder, per pyproject."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    tree = ROOT / "build" / "typecheck"
    shutil.rmtree(tree, ignore_errors=True)
    pkg = tree / "inferq"
    pkg.mkdir(parents=True)
    for item in (ROOT / mapping["inferq"]).iterdir():
        (pkg / item.name).symlink_to(item)
    for name, folder in mapping.items():
        if name != "inferq":
            (pkg / name.split(".", 1)[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return tree


def main() -> int:
    """Build the tree and run mypy on it with the project's configuration."""
    tree = build_tree()
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    return subprocess.call([*cmd, "-p", "inferq", *sys.argv[1:]], cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
