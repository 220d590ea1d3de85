"""Thumbnails of the sampled images: read with the job's own reader and limits, embedded as JPEG data: URIs.

The URIs come from the output, which may be someone else's, so by default the report reads them under the job's
rules: http(s) hosts that are loopback, link-local or private are refused (by ``beam_pipeline.reading``), and local
files are read only when the output itself is local. ``--allow-private-hosts`` lifts both, for trusted output.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageOps

from beam_pipeline import errors
from beam_pipeline.decode.reading import DEFAULT_ALLOWED_SCHEMES, ReadPolicy, read_image_bytes, scheme_of
from beam_pipeline.report.data import DEFAULT_MAX_BYTES, DEFAULT_THUMB_SIZE, MAX_IMAGE_PIXELS, Options

# Error types of the reader's refusals, shown under the placeholder (other failures just say "unavailable").
REFUSALS = frozenset({errors.BLOCKED_HOST, errors.UNSUPPORTED_SCHEME})
LOCAL_FILE_REFUSED = "local file not read: the output is not local (see --allow-private-hosts)"


@dataclass(frozen=True)
class Thumbnail:
    """A card's image: a JPEG ``data:`` URI, or None with why it was refused (None: unreadable or not an image)."""

    src: str | None = None
    refused: str | None = None


def _is_local_protocol(protocol: str) -> bool:
    try:
        return issubclass(fsspec.get_filesystem_class(protocol), LocalFileSystem)
    except (ValueError, ImportError):  # unknown protocol, or its package is not installed
        return False


def is_local_file(uri: str) -> bool:
    """Whether ``uri`` reads this machine's files: a plain path, ``file://``, or a chain (``a::b``) reaching one."""
    *outer, last = uri.split("::")
    return any(_is_local_protocol(p) for p in [part.split("://", 1)[0] for part in outer] + [scheme_of(last)])


def make_thumbnail(
    uri: str,
    size: int = DEFAULT_THUMB_SIZE,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_schemes: Sequence[str] = DEFAULT_ALLOWED_SCHEMES,
    allow_private_hosts: bool = False,
    allow_local_files: bool = False,
) -> Thumbnail:
    """Read ``uri`` through the job's reader and return its thumbnail as a base64 JPEG ``data:`` URI.

    The URI comes from the (untrusted) output, so it is read with the pipeline's own limits: only
    ``allowed_schemes``, at most ``max_bytes`` bytes and ``MAX_IMAGE_PIXELS`` pixels, no private hosts and no
    local files unless allowed. ``Image.draft`` lets the JPEG decoder downscale while decoding, so big photos
    stay cheap.
    """
    if not allow_local_files and is_local_file(uri):
        return Thumbnail(refused=LOCAL_FILE_REFUSED)
    try:
        policy = ReadPolicy(
            max_bytes=max_bytes, allowed_schemes=tuple(allowed_schemes), allow_private_hosts=allow_private_hosts
        )
        data = read_image_bytes(uri, policy)
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return Thumbnail()
            im.draft("RGB", (size, size))
            im.thumbnail((size, size))
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGBA").convert("RGB") if "A" in im.mode or im.mode == "P" else im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=75, optimize=True)
    except errors.ImageInputError as exc:
        return Thumbnail(refused=errors.describe(exc) if exc.error_type in REFUSALS else None)
    except Exception:  # noqa: BLE001 - any unreadable image becomes a placeholder
        return Thumbnail()
    return Thumbnail(src="data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))


def make_thumbnails(uris: Iterable[str], options: Options, *, allow_local_files: bool) -> dict[str, Thumbnail]:
    """Thumbnails of distinct ``uris``, read concurrently (remote stores are latency bound)."""
    unique = list(dict.fromkeys(uris))
    if not unique:
        return {}

    def one(uri: str) -> Thumbnail:
        return make_thumbnail(
            uri,
            options.thumb_size,
            max_bytes=options.max_bytes,
            allowed_schemes=options.allowed_schemes,
            allow_private_hosts=options.allow_private_hosts,
            allow_local_files=allow_local_files,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        return dict(zip(unique, pool.map(one, unique), strict=True))
