"""Folders and globs expanded by many workers (inputs/fanout.py): on a real Beam pipeline with `spread`, every file
exactly once, as os.walk finds it, for a nested folder and a flat one of several pages, on local disk and on the GCS
emulator (made to page its listings as GCS does); globs as the streamed path matches them."""

from __future__ import annotations

import bisect
import collections
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from apache_beam.pvalue import TaggedOutput
from test_cloud_storage import BUCKET, _free_port
from test_expansion import _expand

from beam_pipeline.inputs import checks, fanout
from beam_pipeline.inputs.specs import IMAGE_SUFFIXES, InputSpec
from beam_pipeline.listing import PAGE_SIZE

SUBFOLDERS = 12
FLAT = 2 * PAGE_SIZE + 500


def _nested(root: Path) -> Path:
    """Files at every level: the root, a chain 6 deep, SUBFOLDERS folders with 3 more in each; an empty folder
    and names that are not images (or are, in capitals)."""
    with_files = [root, *(root.joinpath(*(f"c{k}" for k in range(1, depth + 1))) for depth in range(1, 7))]
    with_files += [root / f"s{i:02d}" / sub for i in range(SUBFOLDERS) for sub in ("", "t0", "t1", "t2")]
    (root / "empty" / "deeper").mkdir(parents=True)
    for folder in with_files:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("a.jpg", "b.PNG", "c.webp", "notes.txt"):
            (folder / name).write_bytes(b"x")
    return root


def _flat(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(FLAT):
        (root / f"img_{i:05d}.jpg").write_bytes(b"x")
    (root / "readme.md").write_bytes(b"x")
    return root


def _walked(root: Path) -> collections.Counter:
    """The image files under `root`, relative, as os.walk finds them."""
    return collections.Counter(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    )


def _expanded(spec: str, tmp_path: Path, *, spread: bool = True) -> list[str]:
    rows = _expand([checks.check_exists(InputSpec.parse(spec))], pa.schema([]), spread, tmp_path)
    return [row["uri"] for row in rows]


def test_a_nested_folder_is_listed_by_sub_prefix_and_every_file_comes_once(tmp_path):
    root = _nested(tmp_path / "tree")
    found = _expanded(str(root), tmp_path)
    assert collections.Counter(os.path.relpath(uri, root) for uri in found) == _walked(root)
    handed = [o.value for o in fanout.root_pages(InputSpec.parse(str(root))) if isinstance(o, TaggedOutput)]
    assert len(handed) == SUBFOLDERS + 2  # the root's subfolders become elements of their own


def test_a_flat_folder_comes_in_pages_and_every_file_once(tmp_path):
    root = _flat(tmp_path / "flat")
    pages = list(fanout.root_pages(InputSpec.parse(str(root))))
    assert len(pages) == 3 and all(len(page) <= PAGE_SIZE for page in pages) and sum(map(len, pages)) == FLAT
    found = _expanded(str(root), tmp_path)
    assert collections.Counter(os.path.relpath(uri, root) for uri in found) == _walked(root)


def test_a_lister_reads_a_page_ahead_of_what_it_emits(tmp_path, monkeypatch):
    """The levels and sub-prefixes are listed lazily: a first page out costs one page of directory entries read,
    however many the folder holds (so a worker's memory does not grow with the folder)."""
    root = _flat(tmp_path / "tree" / "flat")
    read = collections.Counter()
    scandir = os.scandir

    class Counted:
        def __init__(self, path):
            self._entries = scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._entries.close()

        def __iter__(self):
            for entry in self._entries:
                read["entries"] += 1
                yield entry

    monkeypatch.setattr(os, "scandir", Counted)
    first = next(fanout.root_pages(InputSpec.parse(str(root))))
    assert len(first) <= PAGE_SIZE and read["entries"] == PAGE_SIZE
    (prefix,) = [o.value for o in fanout.root_pages(InputSpec.parse(str(root.parent))) if isinstance(o, TaggedOutput)]
    read.clear()
    first = next(fanout.prefix_pages(prefix))
    assert len(first) <= PAGE_SIZE and read["entries"] == PAGE_SIZE


@pytest.mark.parametrize("pattern", ["*/*.jpg", "**/*.PNG", "s0*/t1/*", "c1/*/*/*.webp", "**", "*/*/*/*", "a.jpg"])
def test_globs_match_as_the_streamed_path_matches(tmp_path, pattern):
    root = _nested(tmp_path / "tree")
    split = _expanded(f"{root}/{pattern}", tmp_path)
    streamed = _expanded(f"{root}/{pattern}", tmp_path, spread=False)
    assert split and len(split) == len(set(split)) and sorted(split) == sorted(streamed)


def test_a_store_without_paged_listings_is_split_alike(tmp_path):
    """memory:// (as s3 and http, listed by fsspec's walk a level at a time): the same exactly-once expansion."""
    import fsspec

    root = _nested(tmp_path / "tree")
    memory = fsspec.filesystem("memory")
    for path in root.rglob("*"):
        if path.is_file():
            memory.pipe(f"/fanout-tree/{path.relative_to(root)}", b"x")
    try:
        found = _expanded("memory://fanout-tree", tmp_path)
        streamed = _expanded("memory://fanout-tree", tmp_path, spread=False)
    finally:
        memory.rm("/fanout-tree", recursive=True)
    assert collections.Counter(uri.split("/fanout-tree/", 1)[1] for uri in found) == _walked(root)
    assert sorted(found) == sorted(streamed)


def _paged(ls, served: collections.Counter):
    """gcp-storage-emulator's objects.list answers every match at once; GCS pages them, objects and delimiter
    prefixes together in name order, at most maxResults (1,000) a page with a nextPageToken (here the last name).
    `served` counts the listings asked with a delimiter and the pages that had a next one."""

    def paged_ls(request, response, storage, *args, **kwargs):
        limit = min(int((request.query.get("maxResults") or ["1000"])[0]), 1000)
        token = (request.query.get("pageToken") or [None])[0]
        served["delimited"] += bool(request.query.get("delimiter"))
        send = response.json

        def send_page(body: dict) -> None:
            entries = sorted([(item["name"], item) for item in body.get("items", [])], key=lambda e: e[0])
            entries = sorted(entries + [(prefix, None) for prefix in body.get("prefixes", [])], key=lambda e: e[0])
            start = 0 if token is None else bisect.bisect_right([name for name, _ in entries], token)
            page = entries[start : start + limit]
            body["items"] = [item for _, item in page if item is not None]
            body["prefixes"] = [name for name, item in page if item is None]
            if start + limit < len(entries):
                body["nextPageToken"] = page[-1][0]
                served["continued"] += 1
            send(body)

        response.json = send_page
        ls(request, response, storage, *args, **kwargs)

    return paged_ls


EXPAND_ON_WORKERS = """
import json, sys
import apache_beam as beam, pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions
from beam_pipeline.inputs import checks, expand
from beam_pipeline.inputs.specs import InputSpec
spec = checks.check_exists(InputSpec.parse(sys.argv[1]))
with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=in_memory"])) as p:
    uris = p | expand.ExpandInputs([spec], "uri", pa.schema([]), spread=True) | beam.Map(lambda row: row["uri"])
    uris | beam.combiners.ToList() | beam.Map(lambda found: open(sys.argv[2], "w").write(json.dumps(found)))
"""


@pytest.fixture
def paged_emulator(monkeypatch) -> Iterator[tuple[str, object, collections.Counter]]:
    """gcp-storage-emulator on 127.0.0.1, in memory, paging its listings as GCS does; yields its URL, the server and
    what _paged counts."""
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects

    served: collections.Counter = collections.Counter()
    for _, handlers in emulator.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is objects.ls:
                monkeypatch.setitem(handlers, method, _paged(objects.ls, served))
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", server, served
    finally:
        server.stop()


@pytest.mark.slow  # a Beam pipeline in a subprocess per prefix, against the emulator
def test_a_gcs_prefix_is_listed_by_sub_prefix_and_every_object_comes_once(tmp_path, paged_emulator):
    from gcp_storage_emulator.handlers.objects import _make_object_resource

    url, server, served = paged_emulator
    # The objects go straight into the emulator's store: its upload handler rewrites its metadata per object.
    storage = server._storage
    trees = {"nested": _nested(tmp_path / "nested"), "flat": _flat(tmp_path / "flat")}
    for prefix, root in trees.items():
        for path in root.rglob("*"):
            if path.is_file():
                name = f"{prefix}/{path.relative_to(root)}"
                storage.objects.setdefault(BUCKET, {})[name] = _make_object_resource(url, BUCKET, name, "image/jpeg", 1)
                storage._store.write_bytes(storage._object_path(BUCKET, name), b"x")
    env = {
        **os.environ,
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no Storage Control API on the emulator
    }
    for prefix, root in trees.items():
        out = tmp_path / f"{prefix}.json"
        spec = f"gs://{BUCKET}/{prefix}/"
        run = subprocess.run(
            [sys.executable, "-c", EXPAND_ON_WORKERS, spec, str(out)], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-3000:]
        found = json.loads(out.read_text())
        assert collections.Counter(uri.removeprefix(spec) for uri in found) == _walked(root), prefix
    # The flat prefix came in 3 pages (twice: the launch check reads its first), the nested one level by level.
    assert served["continued"] >= 2 and served["delimited"] > SUBFOLDERS, served


@pytest.fixture
def s3_bucket(monkeypatch) -> Iterator[tuple[object, dict[str, str]]]:
    """An empty bucket on moto's S3 server (127.0.0.1); yields a boto3 client and the environment that points
    s3fs at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield s3, env
    finally:
        server.stop()


@pytest.mark.slow  # 3,500 objects put into moto, and a Beam pipeline in a subprocess per prefix
def test_an_s3_prefix_is_listed_in_pages_by_sub_prefix_and_every_object_comes_once(tmp_path, s3_bucket):
    import fsspec

    from beam_pipeline.listing import listing_pages

    s3, env = s3_bucket
    trees = {"nested": _nested(tmp_path / "nested"), "flat": _flat(tmp_path / "flat")}
    for prefix, root in trees.items():
        for path in root.rglob("*"):
            if path.is_file():
                s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(root)}", Body=b"x")
    # ListObjectsV2 a page at a time, not s3fs's listing (which fetches every page and caches them all).
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    pages = list(listing_pages(fs, f"{BUCKET}/flat"))
    assert len(pages) == 3 and all(len(page) <= PAGE_SIZE for page in pages) and not fs.dircache
    for prefix, root in trees.items():
        out = tmp_path / f"{prefix}.json"
        spec = f"s3://{BUCKET}/{prefix}/"
        run = subprocess.run(
            [sys.executable, "-c", EXPAND_ON_WORKERS, spec, str(out)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        found = json.loads(out.read_text())
        assert collections.Counter(uri.removeprefix(spec) for uri in found) == _walked(root), prefix
