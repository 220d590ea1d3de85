"""Peak memory of the default job over six 80-megapixel RGBA PNGs (no JPEG draft mode for PNG).

python benchmarks/decode_memory.py            # builds the PNGs once under ~/.cache, runs the job, prints peak RSS
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = (10_000, 8_000)
COUNT = 6
RSS_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def build_pngs(folder: Path) -> Path:
    """Six gradient RGBA PNGs with varying alpha (about 1 MB each on disk, 320 MB each decoded)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == COUNT:
        return folder
    width, height = SIZE
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    channels = [np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))]
    channels += [np.full((height, width), 128, np.uint8), np.broadcast_to(x // 2 + y // 2, (height, width))]
    image = Image.fromarray(np.stack(channels, axis=-1), "RGBA")
    for i in range(COUNT):
        image.rotate(90 * i, expand=False).save(folder / f"big_{i}.png", compress_level=1)
    return folder


def main() -> int:
    shared = Path(os.environ.get("LABELLER_SHARED_DIR", REPO_ROOT.parent / "shared"))
    folder = build_pngs(Path.home() / ".cache" / "beam-image-labeller" / "png-80mp-rgba")
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "beam_pipeline", "--input", str(folder), "--output", f"{out}/", "--quiet"]
        command += ["--model", str(shared / "models" / "mobilenet_v3_small_100_224_float")]
        command += ["--labels", str(shared / "labels" / "ImageNetLabels.txt")]
        run = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *command], capture_output=True, text=True)
    print(run.stdout.strip())
    peak_mib = int(run.stderr.strip().splitlines()[-1]) / 1024
    print(f"{COUNT} x {SIZE[0]}x{SIZE[1]} RGBA PNGs: exit {run.returncode}, peak RSS {peak_mib:,.0f} MiB")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
