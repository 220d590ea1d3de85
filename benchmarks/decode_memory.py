"""Peak memory of the default job over six 80-megapixel RGBA PNGs (no JPEG draft mode for PNG).

python benchmarks/decode_memory.py            # builds the PNGs once under ~/.cache, runs the job, prints peak RSS
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from measure import run_measured
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = (10_000, 8_000)
COUNT = 6


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
        run = run_measured(command)
    print(run.stdout.strip())
    print(f"{COUNT} x {SIZE[0]}x{SIZE[1]} RGBA PNGs: exit {run.returncode}, peak RSS {run.maxrss_mib:,.0f} MiB")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
