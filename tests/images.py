"""Builds test images of every kind in a folder (nothing is downloaded)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo(shared: Path, name: str = "hot_dog.jpg") -> Image.Image:
    """A real photo from ../shared/images/photos."""
    return Image.open(shared / "images" / "photos" / name).convert("RGB")


def jpeg_bytes(im: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def write_good_images(folder: Path, shared: Path) -> list[Path]:
    """The 5 real photos, as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in sorted((shared / "images" / "photos").glob("*")):
        if source.suffix in (".bmp", ".jpg"):
            target = folder / source.name
            target.write_bytes(source.read_bytes())
            paths.append(target)
    return paths


def write_broken_images(folder: Path, shared: Path) -> dict[str, str]:
    """Broken files, by file name -> the error type each must end as."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(photo(shared))
    rng = np.random.default_rng(0)
    files = {
        "empty.jpg": (b"", "EmptyFile"),
        "random.jpg": (rng.bytes(5000), "NotAnImage"),
        "text.png": (b"this is not an image\n" * 20, "NotAnImage"),
        "truncated_50.jpg": (good[: len(good) // 2], "CorruptImage"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: error_type for name, (_, error_type) in files.items()}


def np_image(mode: str, size=(64, 48)) -> Image.Image:
    """A synthetic gradient image in the given Pillow mode."""
    w, h = size
    ramp = np.linspace(0, 255, w * h * 3).reshape(h, w, 3).astype(np.uint8)
    return Image.fromarray(ramp, "RGB").convert(mode)
