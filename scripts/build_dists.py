"""Build every distribution (the core and each plugin) as a wheel and an sdist, then twine-check them.

Usage: ``python scripts/build_dists.py OUT``. Each project is copied to a scratch folder first, so
nothing (``build/``, ``*.egg-info``) lands in the working tree; builds run without isolation, on
the setuptools of the calling environment (the lock pins it), so no index is needed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "tests", ".*")


def projects() -> list[Path]:
    """The core project and every plugin project, core first."""
    return [REPO, *sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))]


def _copy(project: Path, dest: Path) -> Path:
    if project == REPO:
        dest.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(REPO / name, dest / name)
        for package in sorted(REPO.glob("atomr_infer*/__init__.py")):
            shutil.copytree(package.parent, dest / package.parent.name, ignore=IGNORE)
        return dest
    return Path(shutil.copytree(project, dest, ignore=IGNORE))


def build_all(out: Path) -> list[Path]:
    """Build every project into ``out``; return the files built. Raises on any failure."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for project in projects():
            source = _copy(project, Path(scratch) / project.name)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "build",
                    "--no-isolation",
                    "--outdir",
                    str(out),
                    str(source),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
    return sorted(out.iterdir())


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    try:
        files = build_all(Path(sys.argv[1]))
    except subprocess.CalledProcessError as exc:
        print(f"build failed: {' '.join(exc.cmd)}\n{exc.stdout}\n{exc.stderr}", file=sys.stderr)
        return 1
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)])
    return check.returncode


if __name__ == "__main__":
    sys.exit(main())
