"""Two nights of the warehouse job: transient failures come back, every row once, and an Iceberg table."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import label
from images import jpeg_bytes, photo

FLAKY = 3  # images on a server that answers 503 on night 1


@contextlib.contextmanager
def flaky_server(folder: Path) -> Iterator[tuple[str, dict]]:
    """Serves `folder` on 127.0.0.1; while state["down"] is true every request gets 503."""
    state = {"down": True, "requests": 0}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            state["requests"] += 1
            if state["down"]:
                self.send_error(503, "down for maintenance")
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()


def _manifest(path: Path, uris: list[str]) -> Path:
    pd.DataFrame({"id": range(len(uris)), "uri": uris}).to_csv(path, index=False)
    return path


def test_two_nights_into_an_iceberg_table(tmp_path, shared, tiny_model, labels_file):
    from pyiceberg.catalog import load_catalog

    base = photo(shared).resize((320, 240))
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    for i in range(30):
        (local / f"img_{i:02d}.jpg").write_bytes(jpeg_bytes(base.rotate(i * 7)))
    for i in range(FLAKY):
        (remote / f"cdn_{i}.jpg").write_bytes(jpeg_bytes(base.rotate(100 + i)))
    out = tmp_path / "out"
    catalog = f"type=sql,uri=sqlite:///{tmp_path}/catalog.db,warehouse=file://{tmp_path}/warehouse"
    common = ["--top-k", "1", "--allow-private-hosts", "--read-retries", "1", "--iceberg-catalog", catalog]
    common += ["--iceberg-table", "vision.labels", "--skip-labelled", f"{out}/dt=*/*"]

    with flaky_server(remote) as (url, state):
        night1 = [str(local / f"img_{i:02d}.jpg") for i in range(20)]
        night1 += [f"{url}/cdn_{i}.jpg" for i in range(FLAKY)] + [""]
        manifest = _manifest(tmp_path / "images.csv", night1)
        assert label(manifest, f"{out}/dt=2026-11-26/", tiny_model, labels_file, *common) == 0
        first = pd.read_parquet(out / "dt=2026-11-26")
        assert len(first) == 24 and sorted(first["id"]) == list(range(24))
        flaky = first[first["uri"].str.startswith("http")]
        assert set(flaky["error_type"]) == {"ReadError"} and set(flaky["error_kind"]) == {"transient"}
        assert "503" in flaky["error"].iloc[0]
        empty = first[first["uri"].isna()]
        assert list(empty["error_type"]) == ["EmptyUri"] and list(empty["error_kind"]) == ["permanent"]

        state["down"] = False
        night2 = night1 + [str(local / f"img_{i:02d}.jpg") for i in range(20, 30)] + [""]
        manifest = _manifest(tmp_path / "images.csv", night2)
        assert label(manifest, f"{out}/dt=2026-11-27/", tiny_model, labels_file, *common) == 0

    second = pd.read_parquet(out / "dt=2026-11-27")
    assert len(second) == 15, "10 new images, the 3 transient failures again, the 2 empty-URI rows"
    assert sorted(second["id"]) == [20, 21, 22, 23, *range(24, 35)]
    assert set(second[second["uri"].str.startswith("http", na=False)]["status"]) == {"ok"}
    assert second["uri"].isna().sum() == 2
    success = json.loads((out / "dt=2026-11-27" / "_SUCCESS").read_text())
    assert (success["status"], success["rows_in"], success["rows_skipped"], success["rows"]) == ("ok", 35, 20, 15)

    name, properties = "default", dict(item.split("=", 1) for item in catalog.split(","))
    table = load_catalog(name, **properties).load_table("vision.labels")
    assert table.scan().to_arrow().num_rows == 39
    snapshots = table.snapshots()
    assert len(snapshots) == 2
    run_ids = [s.summary.get("beam-image-labeller.run-id") for s in snapshots]
    assert run_ids == [
        json.loads((out / d / "_SUCCESS").read_text())["run_id"] for d in ("dt=2026-11-26", "dt=2026-11-27")
    ]
    assert success["iceberg"] == {"table": "vision.labels", "snapshot_id": snapshots[-1].snapshot_id}


def test_skip_labelled_names_the_iceberg_table(tmp_path, shared, tiny_model, labels_file, capsys):
    """--skip-labelled TABLE: the first night says the table has no snapshot yet; the next one skips what the
    table's current snapshot finished (one scan of it), whatever folders its files are in."""
    base = photo(shared).resize((320, 240))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        (images / f"img_{i}.jpg").write_bytes(jpeg_bytes(base.rotate(i * 11)))
    (images / "broken.jpg").write_bytes(b"not an image")
    catalog = f"type=sql,uri=sqlite:///{tmp_path}/catalog.db,warehouse=file://{tmp_path}/warehouse"
    common = ["--iceberg-catalog", catalog, "--iceberg-table", "vision.labels", "--skip-labelled", "vision.labels"]
    night1 = [str(images / f"img_{i}.jpg") for i in range(5)] + [str(images / "broken.jpg")]
    assert label(_manifest(tmp_path / "n1.csv", night1), f"{tmp_path}/a/", tiny_model, labels_file, *common) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "--skip-labelled" in line]
    assert len(notes) == 1 and "no snapshot yet" in notes[0]
    night2 = night1 + [str(images / f"img_{i}.jpg") for i in range(5, 8)]
    assert label(_manifest(tmp_path / "n2.csv", night2), f"{tmp_path}/b/", tiny_model, labels_file, *common) == 0
    second = pd.read_parquet(tmp_path / "b")
    assert sorted(second["uri"]) == sorted(night2[6:]), "only the new images"
    success = json.loads((tmp_path / "b" / "_SUCCESS").read_text())
    assert (success["rows_in"], success["rows_skipped"], success["rows_skipped_failed"]) == (9, 6, 1)
    first = json.loads((tmp_path / "a" / "_SUCCESS").read_text())
    assert success["earlier_shards_matched"] == len(first["shards"])


@pytest.mark.slow
def test_a_table_the_job_creates_keeps_few_manifests_and_its_commits_do_not_replay_history(tmp_path, monkeypatch):
    """Years of nights, shortened: 30 commits through the job's own commit into a table it created (its owner has
    set the merge threshold to 10 manifests, from 100). The current snapshot names a few merged manifests, not one
    per night, and each commit builds the table metadata a few times, not once per read of its transaction
    (pyiceberg's own deep-copies every snapshot, 19 times a commit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyiceberg.table.update

    from beam_pipeline.output.iceberg import IcebergTarget
    from beam_pipeline.records import output_schema

    catalog = f"type=sql,uri=sqlite:///{tmp_path}/catalog.db,warehouse=file://{tmp_path}/warehouse"
    target = IcebergTarget("vision.labels", catalog)
    builds = []
    real_update = pyiceberg.table.update.update_table_metadata

    def counted_update(*args, **kwargs):
        builds.append(1)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(pyiceberg.table.update, "update_table_metadata", counted_update)
    row = {"uri": "", "status": "ok", "width": 1, "height": 1, "label": "x", "score": 0.5, "top_k": [], "model": "m"}
    builds_per_commit = []
    for night in range(30):
        if night == 1:
            with target.load_catalog().load_table("vision.labels").transaction() as transaction:
                transaction.set_properties({"commit.manifest.min-count-to-merge": "10"})
        shard = tmp_path / f"dt={night:03d}" / "labels-00000-of-00001.parquet"
        shard.parent.mkdir()
        rows = [{**row, "uri": f"gs://b/{night:03d}/{i}.jpg"} for i in range(3)]
        pq.write_table(pa.Table.from_pylist(rows, schema=output_schema()), shard)
        builds.clear()
        target.commit([str(shard)], output_schema(), run_id=f"night-{night:03d}")
        builds_per_commit.append(len(builds))

    table = target.load_catalog().load_table("vision.labels")
    assert len(table.snapshots()) == 30
    assert table.scan().to_arrow().num_rows == 90
    assert len(table.current_snapshot().manifests(table.io)) <= 10
    assert max(builds_per_commit) <= 6, builds_per_commit
