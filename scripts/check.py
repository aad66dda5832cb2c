#!/usr/bin/env python3
"""`make check`: ruff, mypy --strict and the import-linter contracts over the flyball packages.

The packages live in top-level folders mapped under ``flyball.*`` by ``package-dir`` (see
pyproject.toml); mypy and import-linter find packages on disk, not through the editable
install's import hook, so this links the mapped tree under ``.state/check/flyball`` first and
runs them there. Exit status: non-zero if any tool fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "producers", "stream_processors", "control_plane")
LINT_PATHS = ("flyball", *PACKAGES, "tests", "bench", "scripts")


def link_tree() -> Path:
    """Mirror the packages' folders under .state/check/flyball, each .py file a symlink to the
    real one (folders are real: import-linter does not descend into linked folders)."""
    tree = ROOT / ".state" / "check"
    pkg = tree / "flyball"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").symlink_to(ROOT / "flyball" / "__init__.py")
    for name in PACKAGES:
        for src in (ROOT / name).rglob("*.py"):
            if "__pycache__" in src.parts:
                continue
            dst = pkg / src.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    return tree


def main() -> int:
    tree = link_tree()
    bin_dir = Path(sys.executable).parent
    # the linked tree first on the path, and no editable-install hook: both tools must see flyball.* there
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONNOUSERSITE": "1"}
    steps = [
        [str(bin_dir / "ruff"), "check", *LINT_PATHS],
        [str(bin_dir / "mypy"), "-p", "flyball"],
        # run from the linked tree (the current folder comes first on sys.path, and the
        # repository's own flyball/ holds only __init__.py)
        [sys.executable, "-c", "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
         "if 'editable' not in repr(f).lower()]; from importlinter.cli import lint_imports_command; "
         f"sys.argv = ['lint-imports', {str(ROOT / 'pyproject.toml')!r}, '--no-cache']; lint_imports_command()"],
    ]
    failed = []
    for cmd in steps:
        name = Path(cmd[0]).name if cmd[0] != sys.executable else "lint-imports"
        print(f"== {name}", flush=True)
        cwd = tree if name == "lint-imports" else ROOT
        if subprocess.run(cmd, cwd=cwd, env=env).returncode != 0:
            failed.append(name)
    if failed:
        print(f"make check: FAILED ({', '.join(failed)})")
        return 1
    print("make check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
