"""Reads the bytes of one image URI through fsspec, within the job's limits."""

from __future__ import annotations

import fsspec
from fsspec.core import split_protocol

from beam_pipeline import errors

DEFAULT_ALLOWED_SCHEMES = ("file", "gs", "gcs", "s3", "memory", "http", "https")


def scheme_of(uri: str) -> str:
    """The URI's scheme, `file` for plain paths."""
    protocol, _ = split_protocol(uri)
    return protocol or "file"


def read_image_bytes(uri: str | None, *, max_bytes: int, allowed_schemes: tuple[str, ...]) -> bytes:
    """Returns the file's bytes; raises ImageInputError or the filesystem's own error."""
    if uri is None or not uri.strip():
        raise errors.ImageInputError(errors.EMPTY_URI, "the row has no URI")
    scheme = scheme_of(uri)
    if scheme not in allowed_schemes:
        raise errors.ImageInputError(
            errors.UNSUPPORTED_SCHEME, f"scheme {scheme!r} is not in --allowed-schemes ({', '.join(allowed_schemes)})"
        )
    with fsspec.open(uri, "rb") as f:
        # Read one byte past the limit instead of asking for the size first: one round trip on object stores.
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise errors.ImageInputError(errors.FILE_TOO_LARGE, f"file is over --max-bytes ({max_bytes} bytes)")
    if not data:
        raise errors.ImageInputError(errors.EMPTY_FILE, "file is empty (0 bytes)")
    return data
