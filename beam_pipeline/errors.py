"""Stable error types for rows that could not be labelled.

Every failure of one input becomes an output row with `status = "error"`, `error_type` set to one of the names
below (a stable, documented vocabulary for dashboards and SQL) and `error` set to the underlying
`ExceptionType: message`.
"""

from __future__ import annotations

import PIL.Image

# error_type values, documented in the README ("Error types").
BAD_MANIFEST_ROW = "BadManifestRow"
EMPTY_URI = "EmptyUri"
UNSUPPORTED_SCHEME = "UnsupportedScheme"
BLOCKED_HOST = "BlockedHost"
NOT_FOUND = "NotFound"
IS_A_DIRECTORY = "IsADirectory"
READ_ERROR = "ReadError"
FILE_TOO_LARGE = "FileTooLarge"
EMPTY_FILE = "EmptyFile"
NOT_AN_IMAGE = "NotAnImage"
IMAGE_TOO_LARGE = "ImageTooLarge"
CORRUPT_IMAGE = "CorruptImage"
INFERENCE_ERROR = "InferenceError"
UNEXPECTED_ERROR = "UnexpectedError"


class ImageInputError(Exception):
    """An input that cannot be labelled, with the stable `error_type` it is reported under."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


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


def describe(exc: BaseException) -> str:
    """`ExceptionType: message`, as written to the `error` column."""
    if isinstance(exc, ImageInputError):
        return f"{exc.error_type}: {exc}"
    return f"{type(exc).__name__}: {exc}"
