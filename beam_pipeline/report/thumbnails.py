"""Thumbnails of the sampled images: read with the job's own reader and limits, embedded as JPEG data: URIs."""

from __future__ import annotations

import base64
import concurrent.futures
import io
from collections.abc import Iterable, Sequence

from PIL import Image, ImageOps

from beam_pipeline.reading import DEFAULT_ALLOWED_SCHEMES, read_image_bytes
from beam_pipeline.report.data import DEFAULT_MAX_BYTES, DEFAULT_THUMB_SIZE, MAX_IMAGE_PIXELS, Options


def make_thumbnail(
    uri: str,
    size: int = DEFAULT_THUMB_SIZE,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_schemes: Sequence[str] = DEFAULT_ALLOWED_SCHEMES,
) -> str | None:
    """Read ``uri`` through fsspec and return a base64 JPEG ``data:`` URI, or None if it cannot be shown.

    The URI comes from the (untrusted) output, so it is read with the pipeline's own limits: only
    ``allowed_schemes``, at most ``max_bytes`` bytes and ``MAX_IMAGE_PIXELS`` pixels. ``Image.draft``
    lets the JPEG decoder downscale while decoding, so big photos stay cheap.
    """
    try:
        data = read_image_bytes(uri, max_bytes=max_bytes, allowed_schemes=tuple(allowed_schemes))
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return None
            im.draft("RGB", (size, size))
            im.thumbnail((size, size))
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGBA").convert("RGB") if "A" in im.mode or im.mode == "P" else im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=75, optimize=True)
    except Exception:  # noqa: BLE001 - any unreadable image becomes a placeholder
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_thumbnails(uris: Iterable[str], options: Options) -> dict[str, str | None]:
    """Thumbnails of distinct ``uris``, read concurrently (remote stores are latency bound)."""
    unique = list(dict.fromkeys(uris))
    if not unique:
        return {}

    def one(uri: str) -> str | None:
        return make_thumbnail(
            uri, options.thumb_size, max_bytes=options.max_bytes, allowed_schemes=options.allowed_schemes
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        return dict(zip(unique, pool.map(one, unique), strict=True))
