"""Two nights of the warehouse job: transient failures come back, every row once, and an Iceberg table."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
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
