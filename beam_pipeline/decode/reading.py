"""Reads the bytes of one image URI through fsspec, within the job's limits, retrying transient failures.

http(s), gs and s3 are read by one request each, a GET of at most --max-bytes + 1 bytes, as coroutines on fsspec's
event loop (`start_read`, used by the decode DoFn, or `read_image_bytes`, which waits for it); other filesystems
(local files first) are read in the calling thread, as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import ipaddress
import os
import random
import socket
import time

import aiohttp
import fsspec
import fsspec.asyn
from aiohttp.resolver import ThreadedResolver
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from beam_pipeline import errors
from beam_pipeline.decode import polite
from beam_pipeline.decode.limits import DEFAULT_READS_IN_FLIGHT, DEFAULT_REQUESTS_PER_HOST, limits_for

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
ASYNC_SCHEMES = frozenset({*_HTTP_SCHEMES, "gs", "gcs", "s3"})  # read on fsspec's event loop, one request each


@dataclasses.dataclass(frozen=True)
class ReadPolicy:
    """How one image's bytes may be read: --max-bytes, --allowed-schemes, --read-retries, --read-timeout,
    --allow-private-hosts, --reads-in-flight, --requests-per-host, --user-agent and --ignore-robots-tag, checked once
    at launch and passed together to every read."""

    max_bytes: int = DEFAULT_MAX_BYTES
    allowed_schemes: tuple[str, ...] = DEFAULT_ALLOWED_SCHEMES
    retries: int = DEFAULT_READ_RETRIES
    timeout: float = DEFAULT_READ_TIMEOUT
    allow_private_hosts: bool = False
    reads_in_flight: int = DEFAULT_READS_IN_FLIGHT
    requests_per_host: int = DEFAULT_REQUESTS_PER_HOST
    user_agent: str = polite.DEFAULT_USER_AGENT
    honour_robots_tag: bool = True


def scheme_of(uri: str) -> str:
    """The URI's scheme, `file` for plain paths."""
    protocol, _ = split_protocol(uri)
    return protocol or "file"


def read_image_bytes(uri: str | None, policy: ReadPolicy) -> bytes:
    """Returns the file's bytes; raises ImageInputError or the filesystem's own permanent error.

    A failure that is still transient after `policy.retries` retries becomes a ReadError marked transient.
    """
    scheme = _checked_scheme(uri, policy)
    if scheme in ASYNC_SCHEMES:
        return start_read(uri, policy, hold=False).result()
    for attempt in range(policy.retries + 1):
        try:
            data = _read(uri, policy.max_bytes)
            break
        except Exception as exc:
            if not errors.is_transient_read_failure(exc):
                raise
            if attempt == policy.retries:
                raise _gave_up(exc, attempt + 1, policy.timeout) from exc
            time.sleep(_backoff(attempt))
    return _checked_size(data, policy.max_bytes)


def start_read(uri: str, policy: ReadPolicy, *, hold: bool = True) -> concurrent.futures.Future:
    """Starts reading an http(s), gs or s3 URI on fsspec's event loop; the future's result is the bytes.

    With `hold`, the bytes are counted in the process's read budget once read, until `release_bytes(len(data))`.
    Checks of the URI itself raise here, in the caller's thread.
    """
    scheme = _checked_scheme(uri, policy)
    if scheme in _HTTP_SCHEMES:
        fs = _http_filesystem(policy)
        url = fs.encode_url(uri)
        if not policy.allow_private_hosts:
            _check_ip_literal(url.host)
        host, attempt = url.host, _http_attempt(fs, url, policy)
    else:
        # Made here, not on the loop: a filesystem's constructor may itself wait on the loop (fsspec's sync()).
        fs = fsspec.filesystem(scheme, **_storage_options(scheme, policy.timeout))
        host, attempt = None, _range_attempt(fs, uri, policy.max_bytes)
    coroutine = _read_remote(attempt, host, policy, hold)
    return asyncio.run_coroutine_threadsafe(coroutine, fsspec.asyn.get_loop())


def release_bytes(held: int, policy: ReadPolicy) -> None:
    """Gives back to the read budget what a `start_read(..., hold=True)` result held (its length)."""
    limits_for(policy.reads_in_flight, policy.requests_per_host).release(held)


def _checked_scheme(uri: str | None, policy: ReadPolicy) -> str:
    if uri is None or not uri.strip():
        raise errors.ImageInputError(errors.EMPTY_URI, "the row has no URI")
    scheme = scheme_of(uri)
    if scheme not in policy.allowed_schemes:
        allowed = ", ".join(policy.allowed_schemes)
        message = f"scheme {scheme!r} is not in --allowed-schemes ({allowed})"
        raise errors.ImageInputError(errors.UNSUPPORTED_SCHEME, message)
    return scheme


async def _read_remote(attempt, host: str | None, policy: ReadPolicy, hold: bool) -> bytes:
    """Runs `attempt()` (one request) within the process's limits, retrying transient failures with backoff."""
    limits = limits_for(policy.reads_in_flight, policy.requests_per_host)
    for tries in range(policy.retries + 1):
        try:
            async with limits.request(host):
                data = await attempt()
            break
        except Exception as exc:
            if not errors.is_transient_read_failure(exc):
                raise
            if tries == policy.retries:
                raise _gave_up(exc, tries + 1, policy.timeout) from exc
        await asyncio.sleep(_backoff(tries))  # outside the limits: a backing-off read holds no slot
    data = _checked_size(data, policy.max_bytes)
    if hold:
        await limits.hold(len(data))
    return data


def _backoff(attempt: int) -> float:
    delay = min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2**attempt)
    return delay * random.uniform(0.5, 1.0)


def _checked_size(data: bytes, max_bytes: int) -> bytes:
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
        while not str(exc) and exc.__cause__:  # some filesystems re-raise the timeout bare, from the original
            exc = exc.__cause__
        detail = f"timed out (--read-timeout {timeout:g} s): {errors.describe(exc)}"
    else:
        detail = errors.describe(exc)
    plural = "s" if attempts > 1 else ""
    return errors.ImageInputError(errors.READ_ERROR, f"{detail} ({attempts} attempt{plural})", transient=True)


def _too_large(max_bytes: int, declared: int | None = None) -> errors.ImageInputError:
    size = f"Content-Length {declared}" if declared is not None else "file"
    return errors.ImageInputError(errors.FILE_TOO_LARGE, f"{size} is over --max-bytes ({max_bytes} bytes)")


def _read(uri: str, max_bytes: int) -> bytes:
    if scheme_of(uri) == "file":
        # What fsspec's LocalFileSystem opens, without fsspec.open's URL parsing and OpenFile: ~0.1 ms of Python
        # per image, held under the GIL that the decode threads and the model's caller share.
        with open(LocalFileSystem._strip_protocol(uri), "rb") as f:
            return _read_local(f, max_bytes)
    with fsspec.open(uri, "rb") as f:
        # Read one byte past the limit instead of asking for the size first.
        return f.read(max_bytes + 1)


def _read_local(f: io.BufferedReader, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes of an open local file, asked for at its size (+ 1, to see it grew).

    `read(max_bytes + 1)` alone makes CPython allocate a --max-bytes buffer (50 MB) per image and shrink it: an mmap
    and munmap per image, which the job's other threads then wait on (measured on 2,000 web photos: the job's
    system CPU time 0.55 -> 0.47 s). Files that report no size (pipes, /proc) are read up to the limit.
    """
    size = os.fstat(f.fileno()).st_size
    data = f.read(min(size, max_bytes) + 1)
    if len(data) > size and len(data) <= max_bytes:  # it grew since fstat, or reports no size
        data += f.read(max_bytes + 1 - len(data))
    return data


def _range_attempt(fs, uri: str, max_bytes: int):
    """One ranged GET of bytes [0, max_bytes] (gcsfs's and s3fs's `_cat_file` ask no size first with both ends)."""

    async def attempt() -> bytes:
        try:
            return await fs._cat_file(uri, start=0, end=max_bytes + 1)
        except Exception as exc:
            if _range_not_satisfiable(exc):
                return b""  # a range from byte 0 is unsatisfiable only for an empty object (GCS and S3 answer 416)
            raise

    return attempt


def _range_not_satisfiable(exc: BaseException) -> bool:
    """gcsfs's HttpError carries the status; s3fs turns botocore's InvalidRange into an OSError from it."""
    return any(getattr(e, "code", None) == 416 or "InvalidRange" in str(e) for e in (exc, exc.__cause__))


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


def _http_filesystem(policy: ReadPolicy):
    """fsspec's HTTP filesystem (its session and event loop), connecting to public hosts only unless allowed."""
    client_timeout = aiohttp.ClientTimeout(connect=policy.timeout, sock_read=policy.timeout)
    client_kwargs = _configured("http", "client_kwargs", timeout=client_timeout)
    if policy.allow_private_hosts:
        return fsspec.filesystem("http", client_kwargs=client_kwargs)
    return fsspec.filesystem("http", client_kwargs=client_kwargs, get_client=_public_only_session)


def _http_attempt(fs, url, policy: ReadPolicy):
    """One GET through fsspec's HTTP filesystem session, with our own status handling.

    fsspec's open() sends a HEAD first and passes every status but 404 to raise_for_status (so a 3xx body reads as
    the file); its cat_file() reads the whole body whatever its size. Hence the request is made here, on fsspec's
    session and event loop.
    """

    async def attempt() -> bytes:
        try:
            return await _get(fs, url, policy)
        except aiohttp.TooManyRedirects as exc:
            message = f"too many redirects ({len(exc.history)}; a redirect loop?) from {url}"
            raise errors.ImageInputError(errors.READ_ERROR, message, transient=False) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise errors.ImageInputError(errors.READ_ERROR, errors.describe(exc), transient=True) from exc

    return attempt


async def _get(fs, url, policy: ReadPolicy) -> bytes:
    max_bytes = policy.max_bytes
    session = await fs.set_session()
    options = dict(fs.kwargs)  # request options from fsspec's config (headers, auth), as fsspec's own calls use
    # Images are compressed already; identity keeps Content-Length the size that --max-bytes is about.
    headers = {**options.pop("headers", {}), "Accept-Encoding": "identity", "User-Agent": policy.user_agent}
    options.pop("allow_redirects", None)
    follow = policy.allow_private_hosts
    async with session.get(url, headers=headers, allow_redirects=follow, **options) as response:
        _check_status(response)
        if policy.honour_robots_tag:
            _check_robots_tag(response, policy.user_agent)
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


def _check_robots_tag(response: aiohttp.ClientResponse, user_agent: str) -> None:
    """Refuses, before the body is read, an image whose server says `X-Robots-Tag: noai` or `noimageai` to us."""
    directive = polite.refusal(response.headers.getall("X-Robots-Tag", []), user_agent)
    if directive is not None:
        response.close()
        message = f"the server's X-Robots-Tag says {directive} (see --ignore-robots-tag)"
        raise errors.ImageInputError(errors.DISALLOWED, message)


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
