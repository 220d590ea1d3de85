"""Listing in pages: every file exactly once, a page at most PAGE_SIZE names, and the launch check reading one page.

The 1,000,000-file folder is marked slow; `benchmarks/listing.py` measures time and memory against a 1,000-file one.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from beam_pipeline import listing
from beam_pipeline.inputs import checks, expand, specs
from beam_pipeline.inputs.specs import InputSpec
from beam_pipeline.listing import PAGE_SIZE


def _flat_folder(folder: Path, n: int, suffix: str = ".jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.close(os.open(folder / f"img_{i:07d}{suffix}", os.O_CREAT | os.O_WRONLY, 0o644))
    return folder


@pytest.fixture
def listed(monkeypatch) -> collections.Counter:
    """Counts the directory entries the local lister hands out (each one a name listed)."""
    counts: collections.Counter = collections.Counter()
    original = listing._scandir_files

    def counting(folder: str, maxdepth: int | None):
        for name in original(folder, maxdepth):
            counts["names"] += 1
            yield name

    monkeypatch.setattr(listing, "_scandir_files", counting)
    return counts


def test_pages_hold_every_file_once_to_the_depth_asked(tmp_path):
    _flat_folder(tmp_path / "a", 2 * PAGE_SIZE + 7)
    _flat_folder(tmp_path / "a" / "b", 5, ".png")
    (tmp_path / "a" / "notes.txt").write_text("x")
    fs = fsspec.filesystem("file")
    pages = list(listing.listing_pages(fs, str(tmp_path / "a")))
    names = [name for page in pages for name in page]
    assert all(len(page) <= PAGE_SIZE for page in pages) and len(pages) == 3
    expected = {str(p) for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert len(names) == len(set(names)) and set(names) == expected
    top = {name for page in listing.listing_pages(fs, str(tmp_path / "a"), maxdepth=1) for name in page}
    assert top == {str(p) for p in (tmp_path / "a").iterdir() if p.is_file()}
    globbed = set(specs.lazy_glob(fs, f"{tmp_path}/a/*/*.png"))
    assert globbed == {str(p) for p in (tmp_path / "a" / "b").glob("*.png")}


def test_launch_check_reads_one_page_of_a_flat_folder(tmp_path, listed):
    folder = _flat_folder(tmp_path / "flat", 5 * PAGE_SIZE)
    checks.check_exists(InputSpec.parse(str(folder)))
    assert 0 < listed["names"] <= PAGE_SIZE


def test_a_folder_without_images_is_still_refused(tmp_path):
    _flat_folder(tmp_path / "docs", PAGE_SIZE + 1, ".txt")
    with pytest.raises(specs.InputError, match="no images"):
        checks.check_exists(InputSpec.parse(str(tmp_path / "docs")))


@pytest.mark.slow
def test_a_million_files_flat(tmp_path, listed):
    """The launch check reads one page, the progress total is not counted at launch, and the expansion yields every
    file once."""
    n = 1_000_000
    folder = _flat_folder(tmp_path / "flat", n)
    spec = checks.check_exists(InputSpec.parse(str(folder)))
    assert listed["names"] <= PAGE_SIZE
    assert checks.count_rows([spec]) is None
    listed.clear()
    seen = bytearray(n)
    for row in expand.expand_input(spec, uri_column="uri", carried=pa.schema([])):
        seen[int(Path(row["uri"]).stem.removeprefix("img_"))] += 1
    assert listed["names"] == n and seen == bytearray([1]) * n
