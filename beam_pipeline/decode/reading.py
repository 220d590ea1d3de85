"""Reads the bytes of one image URI through fsspec, within the job's limits, retrying transient failures."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import socket
import time

import aiohttp
import fsspec
from aiohttp.resolver import ThreadedResolver
from fsspec.asyn import sync
from fsspec.core import split_protocol

from beam_pipeline import errors

DEFAULT_ALLOWED_SCHEMES = ("file", "gs", "gcs", "s3", "memory", "http", "https")
DEFAULT_MAX_BYTES = 50_000_000
DEFAULT_READ_RETRIES = 3
# Seconds to connect, and then to wait for each next part of the response, per attempt. Without it a host that
# accepts and never answers holds a worker thread for aiohttp's 5-minute total per attempt, and gcsfs sets no
# timeout at all; 30 s is far beyond a healthy object store's or web server's first byte, so only dead or hung
# hosts hit it, and (retries + 1) x 30 s bounds what one of them costs. It bounds stalls, not whole transfers:
# a large image arriving slowly still completes.
DEFAULT_READ_TIMEOUT = 30.0
BACKOFF_SECONDS = 0.2  # first retry delay; doubled each time, with jitter, capped at BACKOFF_CAP_SECONDS
BACKOFF_CAP_SECONDS = 10.0
_HTTP_SCHEMES = ("http", "https")


@dataclasses.dataclass(frozen=True)
class ReadPolicy:
    """How one image's bytes may be read: --max-bytes, --allowed-schemes, --read-retries, --read-timeout and
    --allow-private-hosts, checked once at launch and passed together to every read."""

    max_bytes: int = DEFAULT_MAX_BYTES
    allowed_schemes: tuple[str, ...] = DEFAULT_ALLOWED_SCHEMES
    retries: int = DEFAULT_READ_RETRIES
    timeout: float = DEFAULT_READ_TIMEOUT
    allow_private_hosts: bool = False


def scheme_of(uri: str) -> str:
    """The URI's scheme, `file` for plain paths."""
    protocol, _ = split_protocol(uri)
    return protocol or "file"


def read_image_bytes(uri: str | None, policy: ReadPolicy) -> bytes:
    """Returns the file's bytes; raises ImageInputError or the filesystem's own permanent error.

    A failure that is still transient after `policy.retries` retries becomes a ReadError marked transient.
    """
    max_bytes, allowed_schemes, timeout = policy.max_bytes, policy.allowed_schemes, policy.timeout
    if uri is None or not uri.strip():
        raise errors.ImageInputError(errors.EMPTY_URI, "the row has no URI")
    scheme = scheme_of(uri)
    if scheme not in allowed_schemes:
        raise errors.ImageInputError(
            errors.UNSUPPORTED_SCHEME, f"scheme {scheme!r} is not in --allowed-schemes ({', '.join(allowed_schemes)})"
        )
    for attempt in range(policy.retries + 1):
        try:
            if scheme in _HTTP_SCHEMES:
                data = _read_http(uri, max_bytes, timeout, public_only=not policy.allow_private_hosts)
            else:
                data = _read(uri, max_bytes, _storage_options(scheme, timeout))
            break
        except Exception as exc:
            if not errors.is_transient_read_failure(exc):
                raise
            if attempt == policy.retries:
                raise _gave_up(exc, attempt + 1, timeout) from exc
            delay = min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2**attempt)
            time.sleep(delay * random.uniform(0.5, 1.0))
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    if not data:
        raise errors.ImageInputError(errors.EMPTY_FILE, "file is empty (0 bytes)")
    return data


def _gave_up(exc: Exception, attempts: int, timeout: float) -> errors.ImageInputError:
    """The ReadError a still-transient failure ends as; timeouts say so whichever filesystem raised them."""
    if isinstance(exc, errors.ImageInputError):
        detail = str(exc)
    elif errors.is_timeout(exc):
        while not str(exc) and exc.__cause__:  # fsspec's sync() re-raises the filesystem's timeout bare, from it
            exc = exc.__cause__
        detail = f"timed out (--read-timeout {timeout:g} s): {errors.describe(exc)}"
    else:
        detail = errors.describe(exc)
    plural = "s" if attempts > 1 else ""
    return errors.ImageInputError(errors.READ_ERROR, f"{detail} ({attempts} attempt{plural})", transient=True)


def _too_large(max_bytes: int, declared: int | None = None) -> errors.ImageInputError:
    size = f"Content-Length {declared}" if declared is not None else "file"
    return errors.ImageInputError(errors.FILE_TOO_LARGE, f"{size} is over --max-bytes ({max_bytes} bytes)")


def _read(uri: str, max_bytes: int, options: dict) -> bytes:
    with fsspec.open(uri, "rb", **options) as f:
        # Read one byte past the limit instead of asking for the size first: one round trip on object stores.
        return f.read(max_bytes + 1)


def _storage_options(scheme: str, timeout: float) -> dict:
    """Per-request connect and read timeouts in each filesystem's own spelling (gcsfs and s3fs retry inside too)."""
    if scheme in ("gs", "gcs"):
        # gcsfs passes requests_timeout to every aiohttp request it makes; its default, None, never times out.
        return {"requests_timeout": aiohttp.ClientTimeout(connect=timeout, sock_read=timeout)}
    if scheme == "s3":
        # botocore's Config; s3fs's defaults are 5 s and 15 s.
        return {"config_kwargs": _configured("s3", "config_kwargs", connect_timeout=timeout, read_timeout=timeout)}
    return {}


def _configured(protocol: str, key: str, **ours) -> dict:
    """`ours` over the dict fsspec's config holds for `key` (passing `key` explicitly would replace it whole)."""
    return {**fsspec.config.conf.get(protocol, {}).get(key, {}), **ours}


def _read_http(uri: str, max_bytes: int, timeout: float, *, public_only: bool) -> bytes:
    """One GET through fsspec's HTTP filesystem session, with our own status handling.

    fsspec's open() sends a HEAD first and passes every status but 404 to raise_for_status (so a 3xx body reads as
    the file); its cat_file() reads the whole body whatever its size. Hence the request is made here, on fsspec's
    session and event loop.
    """
    client_timeout = aiohttp.ClientTimeout(connect=timeout, sock_read=timeout)
    client_kwargs = _configured("http", "client_kwargs", timeout=client_timeout)
    if public_only:
        fs = fsspec.filesystem("http", client_kwargs=client_kwargs, get_client=_public_only_session)
    else:
        fs = fsspec.filesystem("http", client_kwargs=client_kwargs)
    url = fs.encode_url(uri)
    if public_only:
        _check_ip_literal(url.host)
    try:
        return sync(fs.loop, _get, fs, url, max_bytes, not public_only)
    except aiohttp.TooManyRedirects as exc:
        raise errors.ImageInputError(
            errors.READ_ERROR, f"too many redirects ({len(exc.history)}; a redirect loop?) from {uri}", transient=False
        ) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise errors.ImageInputError(errors.READ_ERROR, errors.describe(exc), transient=True) from exc


async def _get(fs, url, max_bytes: int, follow_redirects: bool) -> bytes:
    session = await fs.set_session()
    options = dict(fs.kwargs)  # request options from fsspec's config (headers, auth), as fsspec's own calls use
    # Images are compressed already; identity keeps Content-Length the size that --max-bytes is about.
    headers = {**options.pop("headers", {}), "Accept-Encoding": "identity"}
    options.pop("allow_redirects", None)
    async with session.get(url, headers=headers, allow_redirects=follow_redirects, **options) as response:
        _check_status(response)
        if response.content_length is not None and response.content_length > max_bytes:
            response.close()  # drop the connection rather than receive a body that will not be read
            raise _too_large(max_bytes, response.content_length)
        data = bytearray()
        while len(data) <= max_bytes:
            chunk = await response.content.read(max_bytes + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > max_bytes:
            response.close()
        return bytes(data)


def _check_status(response: aiohttp.ClientResponse) -> None:
    """Maps a non-2xx status to the row's error: missing, forbidden, not followed, or (429, 5xx) transient."""
    status = response.status
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise errors.ImageInputError(errors.NOT_FOUND, f"HTTP {status} {response.reason or ''}".rstrip())
    if status in (401, 403):
        raise errors.ImageInputError(errors.READ_ERROR, f"forbidden (HTTP {status})", transient=False)
    if 300 <= status < 400:
        location = response.headers.get("Location", "no Location header")
        raise errors.ImageInputError(
            errors.READ_ERROR, f"redirect not followed (HTTP {status} to {location})", transient=False
        )
    message = f"HTTP {status} {response.reason or ''}".rstrip()
    raise errors.ImageInputError(errors.READ_ERROR, message, transient=status in (408, 429) or status >= 500)


async def _public_only_session(**kwargs) -> aiohttp.ClientSession:
    """A session that connects only to public addresses, checked on the very answer it connects to."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_PublicOnlyResolver()), **kwargs)


class _PublicOnlyResolver(ThreadedResolver):
    """Resolves as aiohttp does, then refuses any non-public answer.

    Checking inside the connection's own lookup, rather than in a lookup of our own before it, leaves no second
    DNS answer for a rebinding DNS server to change.
    """

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        resolved = await super().resolve(host, port, family)
        for result in resolved:
            _refuse_non_public(host, ipaddress.ip_address(result["host"]))
        return resolved


def _check_ip_literal(host: str | None) -> None:
    """Refuses a URL whose host is a non-public IP address (aiohttp connects to those without resolving)."""
    if not host:
        raise errors.ImageInputError(errors.BLOCKED_HOST, "the URL has no host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or host.replace(".", "").isdigit():  # aiohttp would not resolve it as a name either
            raise errors.ImageInputError(errors.BLOCKED_HOST, f"{host} is not a canonical IP address") from None
        return  # a name: _PublicOnlyResolver checks what it resolves to
    _refuse_non_public(host, ip)


def _refuse_non_public(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if not is_public_address(ip):
        raise errors.ImageInputError(
            errors.BLOCKED_HOST, f"{host} resolves to non-public address {ip} (see --allow-private-hosts)"
        )


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not loopback, link-local (cloud metadata), private, reserved or multicast."""
    return ip.is_global and not ip.is_multicast
