"""Writes the sample photos that installed packages ship (scikit-image, matplotlib) into a folder as JPEGs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import matplotlib
import skimage.data
from PIL import Image

SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def write_samples(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SKIMAGE_PHOTOS:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).save(path, quality=95)
        written.append(path)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    written.append(Path(shutil.copy(hopper, folder / "grace_hopper.jpg")))
    return written


if __name__ == "__main__":
    for path in write_samples(Path(sys.argv[1])):
        print(path)
