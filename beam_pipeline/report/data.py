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
DEFAULT_DUPLICATES = 10  # exact-duplicate groups, and near-duplicate pairs, listed
DEFAULT_NEIGHBOURS = 6  # sampled images shown with their nearest neighbours
NEIGHBOURS_PER_IMAGE = 3
# Near-duplicates are found among this many rows (those with the smallest hash(uri)): a pairwise comparison, so its
# cost is bounded by the sample (12.5 million pairs), not the run's size. The README's query covers every row.
NEAR_DUPLICATE_SAMPLE = 5_000


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


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows with the same content_sha256: byte-identical files, under `rows` URIs (the first few in `uris`)."""

    content_sha256: str
    rows: int
    uris: tuple[str, ...]


@dataclass(frozen=True)
class NearPair:
    """Two rows with different bytes whose perceptual hashes are `distance` bits apart."""

    uri: str
    other: str
    distance: int


@dataclass(frozen=True)
class Neighbours:
    """A sampled image and its nearest neighbours by embedding: (uri, cosine similarity), most similar first."""

    uri: str
    nearest: tuple[tuple[str, float], ...]


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
    warnings: list[str] = field(default_factory=list)  # printed by the command line
    label_counts: list[tuple[str, int, float]] = field(default_factory=list)  # (label, rows, mean score)
    score_hist: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    lowest: list[Prediction] = field(default_factory=list)
    close_calls: list[Prediction] = field(default_factory=list)
    close_call_count: int = 0
    samples: list[tuple[str, int, list[Prediction]]] = field(default_factory=list)  # (label, rows, sample)
    labels_without_grid: int = 0
    failures: list[Failure] = field(default_factory=list)
    has_identity: bool = False  # the output has content_sha256 and phash
    duplicate_groups: list[DuplicateGroup] = field(default_factory=list)
    duplicate_group_count: int = 0
    duplicate_rows: int = 0  # rows in a group of two or more
    near_pairs: list[NearPair] = field(default_factory=list)
    near_pair_count: int = 0
    near_compared: int = 0  # rows compared pairwise (at most NEAR_DUPLICATE_SAMPLE)
    has_embeddings: bool = False
    neighbours: list[Neighbours] = field(default_factory=list)

    def sampled_uris(self) -> list[str]:
        """URIs of every thumbnail card, in page order (with repeats)."""
        cards = [p.uri for p in self.lowest + self.close_calls] + [p.uri for _, _, ps in self.samples for p in ps]
        return cards + self.duplicate_uris()

    def duplicate_uris(self) -> list[str]:
        """URIs of the duplicates section's thumbnails, in page order."""
        uris = [g.uris[0] for g in self.duplicate_groups] + [u for p in self.near_pairs for u in (p.uri, p.other)]
        return uris + [u for n in self.neighbours for u in (n.uri, *(uri for uri, _ in n.nearest))]


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
    duplicates: int = DEFAULT_DUPLICATES
    neighbours: int = DEFAULT_NEIGHBOURS
