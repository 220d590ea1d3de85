"""Figures every benchmark prints the same way: median [min-max] over repeats, the two-stage limit, top-1 agreement,
and the machine and versions they were measured on (so that a figure is compared within one run)."""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def spread(values: Iterable[float | None]) -> dict[str, float] | None:
    """Median, min and max of the values that are present."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


def fmt(stats: dict[str, float] | None, digits: int = 1, unit: str = "") -> str:
    """'median [min-max]unit'."""
    if stats is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(stats['median'])} [{f.format(stats['min'])}-{f.format(stats['max'])}]{unit}"


def limit(model_ips: float, decode_ips: float) -> float:
    """The best the model and the decode can do sharing the same cores: 1 / (1/model + 1/decode)."""
    return 1.0 / (1.0 / model_ips + 1.0 / decode_ips)


def agreement(top1: dict[str, int], reference: dict[str, int]) -> float:
    """The share of the reference's images that got the same top-1 class."""
    return sum(top1.get(name) == class_id for name, class_id in reference.items()) / len(reference)


def environment() -> dict[str, Any]:
    """What the figures depend on: commit, versions (read without importing the runtimes), cores, thread settings."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None

    def version(*distributions: str) -> str | None:
        for name in distributions:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    return {
        "commit": (git("rev-parse", "HEAD") or "").strip() or None,
        "dirty": bool((git("status", "--porcelain", "--untracked-files=no") or "").strip()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "apache_beam": version("apache-beam"),
        "tensorflow": version("tensorflow-cpu", "tensorflow"),
        "openvino": version("openvino"),
        "ai_edge_litert": version("ai-edge-litert"),
        "pillow": version("pillow"),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "bytecode_cached": bytecode_cached("apache_beam"),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("TF_NUM_", "OMP_", "MKL_"))},
    }


def bytecode_cached(package: str) -> bool:
    """Whether the package's compiled bytecode is on disk (pip writes it at install, `uv pip install` only with
    --compile-bytecode): without it, and with PYTHONDONTWRITEBYTECODE set, every run compiles every module it imports
    again (for `import apache_beam`, 2-3x its time), which start-up figures then include."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return False
    return os.path.exists(importlib.util.cache_from_source(spec.origin))


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None
