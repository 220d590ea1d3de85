"""Reads the bytes of one image URI through fsspec, within the job's limits, retrying transient failures."""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from urllib.parse import urlsplit

import fsspec
from fsspec.core import split_protocol

from beam_pipeline import errors

DEFAULT_ALLOWED_SCHEMES = ("file", "gs", "gcs", "s3", "memory", "http", "https")
DEFAULT_READ_RETRIES = 3
BACKOFF_SECONDS = 0.2  # first retry delay; doubled each time, with jitter, capped at BACKOFF_CAP_SECONDS
BACKOFF_CAP_SECONDS = 10.0


def scheme_of(uri: str) -> str:
    """The URI's scheme, `file` for plain paths."""
    protocol, _ = split_protocol(uri)
    return protocol or "file"


def read_image_bytes(
    uri: str | None,
    *,
    max_bytes: int,
    allowed_schemes: tuple[str, ...],
    retries: int = 0,
    allow_private_hosts: bool = True,
) -> bytes:
    """Returns the file's bytes; raises ImageInputError or the filesystem's own permanent error.

    A failure that is still transient after `retries` retries becomes a ReadError marked transient.
    """
    if uri is None or not uri.strip():
        raise errors.ImageInputError(errors.EMPTY_URI, "the row has no URI")
    scheme = scheme_of(uri)
    if scheme not in allowed_schemes:
        raise errors.ImageInputError(
            errors.UNSUPPORTED_SCHEME, f"scheme {scheme!r} is not in --allowed-schemes ({', '.join(allowed_schemes)})"
        )
    options = {}
    if scheme in ("http", "https") and not allow_private_hosts:
        check_public_host(uri)
        # Redirects are not followed: a public URL must not be able to bounce the job into a private network.
        options = {"allow_redirects": False}
    for attempt in range(retries + 1):
        try:
            return _read(uri, max_bytes, options)
        except Exception as exc:
            if not errors.is_transient_read_failure(exc):
                raise
            if attempt == retries:
                raise _gave_up(exc, attempt + 1) from exc
            delay = min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2**attempt)
            time.sleep(delay * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def _read(uri: str, max_bytes: int, options: dict) -> bytes:
    with fsspec.open(uri, "rb", **options) as f:
        # Read one byte past the limit instead of asking for the size first: one round trip on object stores.
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise errors.ImageInputError(errors.FILE_TOO_LARGE, f"file is over --max-bytes ({max_bytes} bytes)")
    if not data:
        raise errors.ImageInputError(errors.EMPTY_FILE, "file is empty (0 bytes)")
    return data


def _gave_up(exc: Exception, attempts: int) -> errors.ImageInputError:
    """The ReadError a still-transient failure ends as."""
    detail = str(exc) if isinstance(exc, errors.ImageInputError) else errors.describe(exc)
    plural = "s" if attempts > 1 else ""
    return errors.ImageInputError(errors.READ_ERROR, f"{detail} ({attempts} attempt{plural})", transient=True)


def check_public_host(uri: str) -> None:
    """Refuses hosts that resolve to loopback, link-local (cloud metadata), private or reserved addresses."""
    host = urlsplit(uri).hostname
    if not host:
        raise errors.ImageInputError(errors.BLOCKED_HOST, "the URL has no host")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise errors.ImageInputError(errors.READ_ERROR, f"cannot resolve {host}: {exc}") from exc
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise errors.ImageInputError(
                errors.BLOCKED_HOST, f"{host} resolves to non-public address {ip} (see --allow-private-hosts)"
            )
