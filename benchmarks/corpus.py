"""The benchmark corpus: N camera-like JPEGs cut from real photos, built once and cached.

Each image is a random crop of a source photo (../shared/images, else scikit-image's and matplotlib's samples) at
the target aspect ratio, resized to a size drawn from the corpus's mix, with sensor-like noise, saved at JPEG
quality 90. Corpora are cached under $XDG_CACHE_HOME/beam-image-labeller, keyed by N, the mix and CORPUS_VERSION.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_VERSION = "v1"  # bump when the corpus recipe changes: cached corpora are keyed by it
SIZE_MIX: tuple[tuple[float, tuple[int, int]], ...] = (
    (0.4, (500, 375)),
    (0.3, (1024, 768)),
    (0.2, (1920, 1080)),
    (0.1, (4000, 3000)),
)
# --corpus: "mixed" (phone and camera sizes, SIZE_MIX) or "web" (every image 500x375, ImageNet-like web photos).
CORPORA: dict[str, tuple[tuple[float, tuple[int, int]], ...]] = {"mixed": SIZE_MIX, "web": ((1.0, (500, 375)),)}
JPEG_QUALITY = 90
# Upscaled photos are smoother than camera photos (smaller files, cheaper entropy decoding). Gaussian noise of this
# standard deviation (in 8-bit levels) brings a 4000x3000 JPEG at quality 90 to about 2 MB, a camera-like size.
SENSOR_NOISE_SIGMA = 4.0
SEED = 20240603


def shared_dir() -> Path:
    """The shared read-only data folder: $LABELLER_SHARED_DIR, else ../shared beside the repository."""
    return Path(os.environ.get("LABELLER_SHARED_DIR", REPO_ROOT.parent / "shared"))


def cache_root() -> Path:
    """Where corpora are cached between runs: $XDG_CACHE_HOME (default ~/.cache)/beam-image-labeller."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "beam-image-labeller"


def source_photos() -> list[tuple[str, Any]]:
    """Real photos to build the corpus from, as (name, RGB PIL image).

    The photos in ../shared/images when present; otherwise scikit-image's bundled sample photos and matplotlib's
    grace_hopper.jpg.
    """
    from PIL import Image

    images = shared_dir() / "images"
    paths = sorted(
        p
        for folder in (images / "photos", images / "imagenet-sample-100")
        if folder.is_dir()
        for p in folder.iterdir()
        if p.suffix.lower() in {".jpg", ".jpeg", ".bmp", ".png"}
    )
    if paths:
        return [(p.name, Image.open(p).convert("RGB")) for p in paths]
    photos = []
    try:
        import skimage.data

        for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry"):
            try:
                photos.append((name, Image.fromarray(getattr(skimage.data, name)()).convert("RGB")))
            except Exception:  # noqa: BLE001 - a sample that needs a download is skipped
                continue
    except ImportError:
        pass
    try:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            photos.append(("grace_hopper.jpg", Image.open(f).convert("RGB")))
    except Exception:  # noqa: BLE001 - matplotlib is optional
        pass
    if not photos:
        raise SystemExit(f"no source photos: {images} is missing and neither scikit-image nor matplotlib is installed")
    return photos


def size_plan(n: int, mix: tuple[tuple[float, tuple[int, int]], ...] = SIZE_MIX) -> list[tuple[int, int]]:
    """The (width, height) of each of the n images: the mix's shares (largest remainders), in a seeded order."""
    exact = [share * n for share, _ in mix]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(mix)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    plan = [size for (_, size), count in zip(mix, counts) for _ in range(count)]
    random.Random(SEED).shuffle(plan)
    return plan


def _make_image(source: Any, size: tuple[int, int], seed: int) -> bytes:
    """A random crop of `source` at the target aspect ratio, resized to `size`, with sensor-like noise, as JPEG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    src_w, src_h = source.size
    aspect = width / height
    crop_w, crop_h = (src_w, src_w / aspect) if src_w / src_h < aspect else (src_h * aspect, src_h)
    scale = rng.uniform(0.8, 1.0)
    crop_w, crop_h = crop_w * scale, crop_h * scale
    left, top = rng.uniform(0, src_w - crop_w), rng.uniform(0, src_h - crop_h)
    im = source.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    pixels = np.asarray(im, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * SENSOR_NOISE_SIGMA
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _corpus_is_complete(folder: Path, key: dict[str, Any]) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("key") == key
    except ValueError:
        return False


def build_corpus(n: int, root: Path | None = None, corpus: str = "mixed") -> Path:
    """The folder of the n-image corpus, built on first use and cached (keyed by n, the corpus and CORPUS_VERSION)."""
    root = root or cache_root()
    mix = CORPORA[corpus]
    version = CORPUS_VERSION if corpus == "mixed" else f"{CORPUS_VERSION}-{corpus}"
    key = {"version": version, "n": n, "mix": mix, "quality": JPEG_QUALITY, "noise": SENSOR_NOISE_SIGMA}
    key = json.loads(json.dumps(key))  # tuples as lists, as they read back
    folder = root / f"bench-corpus-{n}-{version}"
    if _corpus_is_complete(folder, key):
        return folder
    print(f"building the corpus of {n} JPEGs in {folder} (once; later runs reuse it) ...", flush=True)
    started = time.monotonic()
    photos = source_photos()
    plan = size_plan(n, mix)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=_mkdirs(root)))

    def make(i: int) -> dict[str, Any]:
        name, source = photos[i % len(photos)]
        data = _make_image(source, plan[i], SEED + i)
        path = partial / f"img-{i:06d}.jpg"
        path.write_bytes(data)
        return {"file": path.name, "source": name, "width": plan[i][0], "height": plan[i][1], "bytes": len(data)}

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        files = list(pool.map(make, range(n)))
    (partial / "manifest.json").write_text(json.dumps({"key": key, "files": files}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    return folder


def duplicate_corpus(n: int, base: Path, root: Path | None = None) -> Path:
    """An n-file corpus whose files are hard links to (or copies of) the base corpus's images, cycled."""
    root = root or cache_root()
    base_files = corpus_files(base)
    key = {"version": CORPUS_VERSION, "n": n, "duplicates_of": base.name}
    folder = root / f"bench-corpus-{n}-{CORPUS_VERSION}-dup-of-{len(base_files)}"
    if _corpus_is_complete(folder, key):
        return folder
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=_mkdirs(root)))
    for i in range(n):
        target = partial / f"img-{i:06d}.jpg"
        source = base_files[i % len(base_files)]
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    (partial / "manifest.json").write_text(json.dumps({"key": key}))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def corpus_files(folder: Path) -> list[Path]:
    """The corpus's images, in name order."""
    return sorted(folder.glob("*.jpg"))


def describe_corpus(folder: Path) -> dict[str, Any]:
    """Count and mean file size per image size, read from the files themselves."""
    from PIL import Image

    sizes: dict[str, list[int]] = {}
    for path in corpus_files(folder):
        with Image.open(path) as im:
            sizes.setdefault(f"{im.width}x{im.height}", []).append(path.stat().st_size)
    return {k: {"count": len(v), "mean_kb": round(sum(v) / len(v) / 1000)} for k, v in sorted(sizes.items())}


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
