"""Builds Python environments the way Dataflow's workers get theirs, and the lock file the worker image installs.

    python scripts/worker_env.py lock                     # rewrite dataflow/requirements.lock
    python scripts/worker_env.py venv setup-file [--cache DIR]  # prints the path of a worker venv
    python scripts/worker_env.py venv container [--cache DIR]

Both venv kinds start as Beam's SDK image does (`apache-beam[gcp]` at this interpreter's Beam version), then:
- `setup-file`: pip-installs this package's sdist with its dependencies, as workers do with `--setup_file` (they
  get `install_requires` only, never an extra);
- `container`: installs dataflow/requirements.lock, then the sdist without dependencies, as
  dataflow/worker.Dockerfile does.
A venv is built once per content of setup.py, the lock, this script, the Beam and Python versions (its folder name
is their hash) and reused after that; the package itself is reinstalled from a fresh sdist on every call, so the
venv always runs the checkout's code.
Installs go through `uv pip` when uv is on PATH (a cold venv in seconds rather than 1.5 min of pip; it resolves the
same versions here: docs/testing.md), else through the venv's own pip. Set WORKER_VENV_INSTALLER=pip to force pip.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "dataflow" / "requirements.lock"
DEFAULT_CACHE = REPO / ".cache" / "worker-venvs"
KINDS = ("setup-file", "container")
LOCK_EXTRAS = "gcp,s3"  # what the worker image can read: gs:// and s3:// (http(s) and hf:// come with the package)
DONE = ".complete"


def beam_requirement() -> str:
    """What Beam's SDK image holds, at the version this interpreter's Beam has (the launcher's)."""
    return f"apache-beam[gcp]=={importlib.metadata.version('apache-beam')}"


def run(*command: str | Path) -> str:
    """Runs a command quietly; its output is shown only when it fails (pip warns a line per package here)."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if result.returncode:
        output = result.stdout[-4000:] + result.stderr[-4000:]
        sys.exit(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{output}")
    return result.stdout


def installer() -> str | None:
    """uv's path when installs should use it, else None (pip)."""
    if os.environ.get("WORKER_VENV_INSTALLER", "uv") == "pip":
        return None
    return shutil.which("uv")


def pip(python: Path, *args: str | Path) -> None:
    uv = installer()
    if uv:
        run(uv, "pip", "install", "-q", "--python", python, *args)
    else:
        run(python, "-m", "pip", "install", "-q", *args)


def build_sdist(outdir: Path) -> Path:
    """The sdist that `--setup_file` makes Dataflow build and stage."""
    run(sys.executable, "-m", "build", "--sdist", "--outdir", outdir, REPO)
    (sdist,) = outdir.glob("beam_image_labeller-*.tar.gz")
    return sdist


def cache_key(kind: str) -> str:
    digest = hashlib.sha256()
    for part in (kind, beam_requirement(), sys.version, Path(__file__).read_bytes(), (REPO / "setup.py").read_bytes()):
        digest.update(part if isinstance(part, bytes) else part.encode())
    if kind == "container":
        digest.update(LOCK.read_bytes())
    return digest.hexdigest()[:16]


def new_venv(path: Path) -> Path:
    """A fresh venv on this interpreter's base Python (not a copy of the launcher's venv)."""
    shutil.rmtree(path, ignore_errors=True)
    uv = installer()
    if uv:  # --seed: pip inside it, as in Beam's SDK image (the tests run `pip check` there)
        run(uv, "venv", "-q", "--seed", "--python", sys._base_executable, path)
    else:
        run(sys.executable, "-m", "venv", path)
    python = path / "bin" / "python"
    pip(python, beam_requirement())
    return python


def worker_venv(kind: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The venv for `kind`, built if missing, with the checkout's package (re)installed; returns its folder."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{kind}-{cache_key(kind)}"
    with open(cache / f"{kind}.lock", "w") as lock, tempfile.TemporaryDirectory() as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second session waits and reuses it
        sdist = build_sdist(Path(tmp))
        python = path / "bin" / "python"
        if not (path / DONE).exists():
            for stale in cache.glob(f"{kind}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            python = new_venv(path)
            if kind == "setup-file":
                pip(python, sdist)
            else:
                pip(python, "-r", LOCK)
                pip(python, "--no-deps", sdist)
            (path / DONE).touch()
        pip(python, "--no-deps", "--force-reinstall", sdist)
    return path


def write_lock() -> None:
    """Resolves Beam's SDK requirement and this package with LOCK_EXTRAS in a fresh venv; pins what it installed."""
    with tempfile.TemporaryDirectory() as tmp:
        python = new_venv(Path(tmp) / "venv")
        pip(python, f"{REPO}[{LOCK_EXTRAS}]")
        frozen = run(python, "-m", "pip", "freeze", "--exclude", "beam-image-labeller")
    header = (
        "# Every package the Dataflow worker image (dataflow/worker.Dockerfile) and the Flex Template launcher\n"
        f"# (dataflow/Dockerfile) install, pinned: {beam_requirement()} plus .[{LOCK_EXTRAS}], resolved together\n"
        f"# on Python {sys.version_info.major}.{sys.version_info.minor}, Linux x86_64.\n"
        "# Regenerate after changing setup.py: python scripts/worker_env.py lock\n"
    )
    LOCK.write_text(header + frozen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("lock", help="rewrite dataflow/requirements.lock")
    venv = commands.add_parser("venv", help="build (or reuse) a worker venv and print its path")
    venv.add_argument("kind", choices=KINDS)
    venv.add_argument("--cache", type=Path, default=Path(os.environ.get("WORKER_VENV_CACHE", DEFAULT_CACHE)))
    args = parser.parse_args(argv)
    if args.command == "lock":
        write_lock()
        print(LOCK)
    else:
        print(worker_venv(args.kind, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
