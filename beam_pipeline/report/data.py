"""What a report shows (ReportData and its rows) and the options it is built with."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from beam_pipeline.decode.preprocess import DEFAULT_MAX_IMAGE_PIXELS
from beam_pipeline.decode.reading import DEFAULT_ALLOWED_SCHEMES, DEFAULT_MAX_BYTES

DEFAULT_PER_LABEL = 8
DEFAULT_MAX_THUMBNAILS = 300
DEFAULT_REVIEW = 16
DEFAULT_MARGIN = 0.1
DEFAULT_MAX_FAILED = 500
DEFAULT_PAGE_SIZE = 100
DEFAULT_TOP_LABELS = 20
DEFAULT_THUMB_SIZE = 128
DEFAULT_WORKERS = 8
# The job's own limits (DEFAULT_MAX_BYTES too), so the report reads images within the same bounds.
MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
SCORE_BINS = 20
# Perceptual hashes at most this many bits apart are near-duplicates. Measured on the 100-image ImageNet sample
# (docs/embeddings.md): copies resized to 0.3-1.5x and re-encoded as JPEG at quality 60-90 are within 6 bits of
# their original; the closest two different images are 16 bits apart.
NEAR_DUPLICATE_DISTANCE = 10


class ReportError(Exception):
    """The input cannot be reported on (no files matched, not a labeller output, ...)."""


@dataclass(frozen=True)
class Prediction:
    """One sampled, successfully labelled row, with what its thumbnail card shows."""

    uri: str
    label: str | None
    score: float | None
    top: tuple[tuple[str, float], ...]  # (label, score) of the first top_k entries
    width: int | None = None
    height: int | None = None

    @property
    def margin(self) -> float | None:
        """Top-1 minus top-2 score, or None with fewer than two classes."""
        if len(self.top) < 2:
            return None
        return self.top[0][1] - self.top[1][1]


@dataclass
class Failure:
    """One failed row of the failed-rows table."""

    uri: str
    error_type: str | None
    error: str | None


@dataclass
class ReportData:
    """Everything the page shows, gathered by bounded DuckDB queries."""

    source: str
    files: list[str]
    output_is_local: bool = False  # the output is on this machine's filesystem
    rows: int = 0
    labelled: int = 0
    failed: int = 0
    distinct_labels: int = 0
    error_types: list[tuple[str, int]] = field(default_factory=list)
    models: list[tuple[str, int]] = field(default_factory=list)
    first_labelled_at: dt.datetime | None = None
    last_labelled_at: dt.datetime | None = None
    success: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    label_counts: list[tuple[str, int, float]] = field(default_factory=list)  # (label, rows, mean score)
    score_hist: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    lowest: list[Prediction] = field(default_factory=list)
    close_calls: list[Prediction] = field(default_factory=list)
    close_call_count: int = 0
    samples: list[tuple[str, int, list[Prediction]]] = field(default_factory=list)  # (label, rows, sample)
    labels_without_grid: int = 0
    failures: list[Failure] = field(default_factory=list)

    def sampled_uris(self) -> list[str]:
        """URIs of every thumbnail card, in page order (with repeats)."""
        return [p.uri for p in self.lowest + self.close_calls] + [p.uri for _, _, ps in self.samples for p in ps]


@dataclass(frozen=True)
class Options:
    """Report options, mirroring the command-line flags."""

    per_label: int = DEFAULT_PER_LABEL
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS
    review: int = DEFAULT_REVIEW
    margin: float = DEFAULT_MARGIN
    max_failed: int = DEFAULT_MAX_FAILED
    page_size: int = DEFAULT_PAGE_SIZE
    top_labels: int = DEFAULT_TOP_LABELS
    thumb_size: int = DEFAULT_THUMB_SIZE
    workers: int = DEFAULT_WORKERS
    max_bytes: int = DEFAULT_MAX_BYTES
    allowed_schemes: tuple[str, ...] = DEFAULT_ALLOWED_SCHEMES
    allow_private_hosts: bool = False  # also: read local files when the output is not local
    title: str = "Image labelling report"
