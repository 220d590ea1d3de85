"""Reads the class label file (one name per line) through fsspec, caching remote files locally."""

from __future__ import annotations

import os

import fsspec
from fsspec.core import split_protocol

DEFAULT_LABELS_URL = "https://storage.googleapis.com/download.tensorflow.org/data/ImageNetLabels.txt"
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "beam-image-labeller", "labels")


class LabelsError(ValueError):
    """The label file cannot be read or is empty."""


def read_labels(uri: str) -> list[str]:
    """The label names, line by line; http(s) files go through fsspec's `filecache` so they are fetched once."""
    protocol, _ = split_protocol(uri)
    remote = protocol in ("http", "https")
    options = {"filecache": {"cache_storage": CACHE_DIR}} if remote else {}
    try:
        with fsspec.open(f"filecache::{uri}" if remote else uri, "r", encoding="utf-8", **options) as f:
            labels = [line.rstrip("\r\n") for line in f]
    except Exception as exc:  # noqa: BLE001 - every cause is reported as one line naming the file
        raise LabelsError(f"cannot read {uri}: {type(exc).__name__}: {exc}") from exc
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise LabelsError(f"{uri} has no labels")
    return labels
