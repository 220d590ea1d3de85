"""Stable error types for rows that could not be labelled, and whether each failure is transient.

Every failure of one input becomes an output row with `status = "error"`, `error_type` set to one of the names
below (a stable, documented vocabulary for dashboards and SQL) and `error` set to the underlying
`ExceptionType: message`.

Permanent failures are facts about the input: a rerun gets the same answer. Transient failures may go away on a
rerun (the job already retried transient reads per --read-retries). `ReadError` is either, decided per row by
`is_transient`.
"""

from __future__ import annotations

import errno
import socket

import PIL.Image

# error_type values, documented in the README ("Error types").
BAD_MANIFEST_ROW = "BadManifestRow"  # permanent
EMPTY_URI = "EmptyUri"  # permanent
UNSUPPORTED_SCHEME = "UnsupportedScheme"  # permanent
BLOCKED_HOST = "BlockedHost"  # permanent
DISALLOWED = "Disallowed"  # permanent: the server's X-Robots-Tag refuses AI use (noai, noimageai)
NOT_FOUND = "NotFound"  # permanent
IS_A_DIRECTORY = "IsADirectory"  # permanent
READ_ERROR = "ReadError"  # transient: timeouts, connection failures, HTTP 429/5xx; permanent: forbidden, redirects...
FILE_TOO_LARGE = "FileTooLarge"  # permanent
EMPTY_FILE = "EmptyFile"  # permanent
NOT_AN_IMAGE = "NotAnImage"  # permanent
IMAGE_TOO_LARGE = "ImageTooLarge"  # permanent
CORRUPT_IMAGE = "CorruptImage"  # permanent
INFERENCE_ERROR = "InferenceError"  # transient
UNEXPECTED_ERROR = "UnexpectedError"  # transient

TRANSIENT_TYPES = frozenset({INFERENCE_ERROR, UNEXPECTED_ERROR})
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.EAGAIN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)


class ImageInputError(Exception):
    """An input that cannot be labelled, with the stable `error_type` it is reported under.

    `transient` says whether a rerun may succeed; None leaves it to the error type (see `is_transient`).
    """

    def __init__(self, error_type: str, message: str, *, transient: bool | None = None):
        super().__init__(message)
        self.error_type = error_type
        self.transient = transient


class BatchFailed(Exception):
    """The model raised on a batch: the handler raises this instead, so that RunInference's dead-letter output, which
    carries (exception type, repr(exception), traceback lines) rather than the exception, carries the description.

    Its repr is the model's error described (`ExceptionType: message`, newlines and all), so no text is parsed back.
    """

    def __init__(self, cause: BaseException):
        super().__init__(describe(cause))

    def __repr__(self) -> str:
        return str(self)


def error_type_of(exc: BaseException, *, while_reading: bool) -> str:
    """Maps an exception raised while reading or decoding one input to its stable error type."""
    if isinstance(exc, ImageInputError):
        return exc.error_type
    if isinstance(exc, IsADirectoryError):
        return IS_A_DIRECTORY
    if isinstance(exc, FileNotFoundError):
        return NOT_FOUND
    if isinstance(exc, PIL.Image.DecompressionBombError):
        return IMAGE_TOO_LARGE
    if isinstance(exc, PIL.UnidentifiedImageError):
        return NOT_AN_IMAGE
    if while_reading:
        return READ_ERROR
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        # Pillow reports truncated data, bad CRCs and broken headers with these.
        return CORRUPT_IMAGE
    return UNEXPECTED_ERROR


def is_transient(exc: BaseException, error_type: str) -> bool:
    """Whether the row's failure may go away on a rerun (row level: ReadError can be either)."""
    if isinstance(exc, ImageInputError) and exc.transient is not None:
        return exc.transient
    if error_type == READ_ERROR:
        return is_transient_read_failure(exc)
    return error_type in TRANSIENT_TYPES


def is_transient_read_failure(exc: BaseException) -> bool:
    """Whether a failed read may succeed if tried again: timeouts, refused or reset connections, HTTP 429 and 5xx."""
    if isinstance(exc, ImageInputError):
        return bool(exc.transient)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return False
    if is_timeout(exc) or isinstance(exc, ConnectionError):
        return True
    lookup = exc if isinstance(exc, socket.gaierror) else exc.__cause__  # aiohttp raises its own, from the gaierror
    if isinstance(lookup, socket.gaierror):
        return lookup.errno == socket.EAI_AGAIN  # "temporary failure in name resolution"; unknown names are permanent
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    status = next(
        (getattr(exc, a) for a in ("status", "status_code", "code") if isinstance(getattr(exc, a, None), int)), None
    )
    return status is not None and (status == 429 or 500 <= status < 600)


def is_timeout(exc: BaseException) -> bool:
    """A timeout, including the filesystems' own kinds (aiohttp's are TimeoutErrors; botocore's are not)."""
    return isinstance(exc, TimeoutError) or any("Timeout" in cls.__name__ for cls in type(exc).__mro__)


def describe(exc: BaseException) -> str:
    """`ExceptionType: message`, as written to the `error` column."""
    if isinstance(exc, ImageInputError):
        return f"{exc.error_type}: {exc}"
    return f"{type(exc).__name__}: {exc}"
