"""End-to-end runs of the real pipeline (FnApiRunner) with a small TF-Hub-format model; Parquet read back."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import label, read_output, run_job
from images import write_broken_images, write_good_images
from PIL import Image

from beam_pipeline.records import output_schema


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, shared) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("mixed")
    good = write_good_images(folder, shared)
    broken = write_broken_images(folder, shared)
    (folder / "notes.md").write_text("not an image suffix: skipped when a folder is walked")
    return folder, {**{p.name: "ok" for p in good}, **broken}


def test_folder_of_good_and_broken_images(tmp_path, mixed_folder, tiny_model, labels_file):
    folder, expected = mixed_folder
    prefix = tmp_path / "out" / "labels"
    assert run_job("--input", folder, "--output", prefix, "--model", tiny_model, "--labels", labels_file) == 0

    table = read_output(prefix)
    assert table.schema == output_schema()
    rows = table.to_pylist()
    by_name = {Path(r["uri"]).name: r for r in rows}
    assert len(rows) == len(by_name) == len(expected), "each input exactly once"
    for name, outcome in expected.items():
        row = by_name[name]
        assert row["uri"] == str(folder / name)
        assert row["model"] == tiny_model
        assert row["labelled_at"].tzinfo is not None
        if outcome == "ok":
            assert row["status"] == "ok" and row["error"] is None and row["error_type"] is None
            assert len(row["top_k"]) == 5
            scores = [c["score"] for c in row["top_k"]]
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
            assert row["label"] == row["top_k"][0]["label"] and row["score"] == scores[0]
            assert row["width"] > 0 and row["height"] > 0
        else:
            assert row["status"] == "error", name
            assert row["error_type"] == outcome, (name, row["error"])
            assert row["error"] and row["label"] is None and row["top_k"] is None
    for name in (n for n, outcome in expected.items() if outcome == "ok"):
        with Image.open(folder / name) as image:
            assert (by_name[name]["width"], by_name[name]["height"]) == image.size, name


def test_manifests_carry_their_columns_with_types(tmp_path, mixed_folder, tiny_model, labels_file):
    folder, expected = mixed_folder
    names = sorted(expected)
    uris = [str(folder / n) for n in names] + [str(folder / names[0])]  # a duplicate stays a duplicate
    csv_path = tmp_path / "manifest.csv"
    csv_path.write_text("id,uri,row_key\n" + "".join(f"{i},{u},k{i}\n" for i, u in enumerate(uris)))
    jsonl_path = tmp_path / "more.jsonl"
    jsonl_path.write_text(
        json.dumps({"uri": uris[0], "id": 100, "row_key": "j0"}) + "\n" + '{"uri": null, "id": 101}\n'
    )

    prefix = tmp_path / "out" / "labels"
    args = ["--input", csv_path, "--input", jsonl_path, "--output", prefix, "--model", tiny_model]
    assert run_job(*args, "--labels", labels_file, "--top-k", "3") == 0

    table = read_output(prefix)
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("row_key").type == pa.string()
    assert table.schema.names[:3] == ["uri", "id", "row_key"]
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [*range(len(uris)), 100, 101]
    for row in rows[: len(uris)]:
        assert row["uri"] == uris[row["id"]] and row["row_key"] == f"k{row['id']}"
        assert row["status"] == ("ok" if expected[Path(row["uri"]).name] == "ok" else "error")
        assert len(row["top_k"]) == 3 if row["status"] == "ok" else row["top_k"] is None
    assert rows[-1]["uri"] is None and rows[-1]["error_type"] == "EmptyUri" and rows[-1]["row_key"] is None


def test_parquet_and_text_manifests(tmp_path, mixed_folder, tiny_model, labels_file):
    folder, expected = mixed_folder
    good = sorted(n for n, o in expected.items() if o == "ok")
    pq.write_table(
        pa.table({"uri": [str(folder / n) for n in good], "score_hint": pa.array([0.5] * len(good), pa.float32())}),
        tmp_path / "m.parquet",
    )
    (tmp_path / "m.txt").write_text("\n".join(str(folder / n) for n in good) + "\n\n")
    prefix = tmp_path / "out" / "labels"
    args = ["--input", tmp_path / "m.parquet", "--input", tmp_path / "m.txt", "--output", prefix]
    assert run_job(*args, "--model", tiny_model, "--labels", labels_file) == 0
    table = read_output(prefix)
    assert table.num_rows == 2 * len(good)
    assert table.schema.field("score_hint").type == pa.float32()
    assert sorted(table.column("score_hint").to_pylist(), key=str) == sorted(
        [0.5] * len(good) + [None] * len(good), key=str
    )
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_memory_filesystem_input(tmp_path, shared, tiny_model, labels_file):
    fs = fsspec.filesystem("memory")
    sources = sorted((shared / "images" / "photos").glob("*.bmp"))
    for source in sources:
        fs.pipe(f"/bucket/photos/{source.name}", source.read_bytes())
    prefix = tmp_path / "out" / "labels"
    assert label("memory://bucket/photos/*.bmp", prefix, tiny_model, labels_file) == 0
    table = read_output(prefix)
    uris = sorted(table.column("uri").to_pylist())
    # fsspec's canonical form of memory paths has a leading slash: memory:///bucket/...
    assert [fs._strip_protocol(u) for u in uris] == [f"/bucket/photos/{s.name}" for s in sources]
    assert all(u.startswith("memory://") for u in uris)
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_multi_processing_direct_runner(tmp_path, mixed_folder, tiny_model, labels_file):
    """Two SDK worker processes: the handler and DoFns are pickled across the process boundary."""
    folder, expected = mixed_folder
    prefix = tmp_path / "out" / "labels"
    extra = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    assert label(folder, prefix, tiny_model, labels_file, *extra) == 0
    table = read_output(prefix)
    assert sorted(Path(u).name for u in table.column("uri").to_pylist()) == sorted(expected)
