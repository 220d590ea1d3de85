"""What --input names and where --output writes: literal paths, empty globs, .txt manifests, exact shard prefixes."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from conftest import label, read_output, run_job
from images import write_good_images

from beam_pipeline.inputs import checks, expand
from beam_pipeline.inputs.specs import InputSpec
from beam_pipeline.output import publish


def test_a_folder_with_glob_characters_in_its_name_is_taken_literally(tmp_path, shared, tiny_model, labels_file):
    folder = tmp_path / "Holiday [2024]"
    photos = write_good_images(folder, shared)
    prefix = tmp_path / "out" / "labels"
    assert label(folder, prefix, tiny_model, labels_file) == 0
    assert sorted(read_output(prefix).column("uri").to_pylist()) == sorted(map(str, photos))


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: d / "nothing-*" / "*.jpg", "nothing matches"),
        (lambda d: (d / "docs").mkdir() or (d / "docs" / "a.md").write_text("x") and d / "docs", "no images"),
    ],
)
def test_a_glob_or_folder_without_images_is_a_launch_error(
    tmp_path, tiny_model, labels_file, capsys, make_input, message
):
    assert label(make_input(tmp_path), tmp_path / "out" / "labels", tiny_model, labels_file) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("beam-image-labeller: error: argument --input: ") and message in err
    assert len(err.splitlines()) == 1


def test_txt_manifest_bom_comments_and_relative_paths(tmp_path):
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.txt"
    manifest.write_bytes("\ufeffimages/a.jpg\n# a comment\n  \n/abs/b.jpg\ngs://bucket/c.jpg\n".encode())
    spec = checks.check_exists(InputSpec.parse(str(manifest)))
    rows = list(expand.expand_input(spec, uri_column="uri", carried=pa.schema([])))
    assert [r["uri"] for r in rows] == [str(tmp_path / "lists" / "images" / "a.jpg"), "/abs/b.jpg", "gs://bucket/c.jpg"]


def test_a_manifest_named_relative_to_the_working_folder_gives_absolute_uris(tmp_path, monkeypatch):
    """Rows name the file that was read, wherever the output is read from later (the report's thumbnails)."""
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text("uri,id\nimages/a.jpg,1\n./images/../b.jpg,2\n/abs/c.jpg,3\n")
    monkeypatch.chdir(tmp_path)
    spec = checks.check_exists(InputSpec.parse("lists/m.csv"))
    rows = list(expand.expand_input(spec, uri_column="uri", carried=pa.schema([("id", pa.int64())])))
    assert [r["uri"] for r in rows] == [
        str(tmp_path / "lists" / "images" / "a.jpg"),
        str(tmp_path / "lists" / "b.jpg"),
        "/abs/c.jpg",
    ]


def test_a_run_from_another_folder_stores_the_uris_it_read(tmp_path, shared, tiny_model, labels_file, monkeypatch):
    """Through the job: a .csv (read as a stream) and a .txt manifest (read in parallel by Beam), both relative."""
    photos = write_good_images(tmp_path / "lists" / "photos", shared)
    (tmp_path / "lists" / "m.csv").write_text("uri\n" + "".join(f"photos/{p.name}\n" for p in photos[:2]))
    (tmp_path / "lists" / "m.txt").write_text("".join(f"./photos/{p.name}\n" for p in photos[2:]))
    monkeypatch.chdir(tmp_path)
    prefix = tmp_path / "out" / "labels"
    args = ["--input", "lists/m.csv", "--input", "lists/m.txt", "--output", prefix, "--model", tiny_model]
    assert run_job(*args, "--labels", labels_file) == 0
    rows = read_output(prefix).to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(map(str, photos))
    assert {r["status"] for r in rows} == {"ok"}


def test_shards_of_another_prefix_are_not_this_prefix(tmp_path):
    for name in ["labels-00000-of-00001.parquet", "labels-v2-00000-of-00001.parquet", "labels-x-of-y.parquet"]:
        (tmp_path / name).write_bytes(b"")
    assert publish.final_shards(str(tmp_path / "labels")) == [str(tmp_path / "labels-00000-of-00001.parquet")]
    assert publish.final_shards(str(tmp_path / "labels-v2")) == [str(tmp_path / "labels-v2-00000-of-00001.parquet")]


def test_one_prefix_per_folder_and_overwrite_replaces_only_its_own(tmp_path, shared, tiny_model, labels_file, capsys):
    photos = tmp_path / "photos"
    write_good_images(photos, shared)
    out = tmp_path / "out"
    assert label(photos, out / "labels-v2", tiny_model, labels_file) == 0
    v2 = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in [], ["--overwrite"]:
        assert label(photos, out / "labels", tiny_model, labels_file, *extra) == 2
        assert "holds the output of prefix 'labels-v2'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == v2, "the other prefix's shards and _SUCCESS untouched"

    assert label(photos, out / "labels-v2", tiny_model, labels_file, "--top-k", "2", "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "labels-v2-00000-of-00001.parquet"]
    assert {len(r["top_k"]) for r in read_output(out / "labels-v2").to_pylist() if r["top_k"]} == {2}


def test_output_under_home_is_expanded(tmp_path, shared, tiny_model, labels_file, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_good_images(tmp_path / "photos", shared)
    assert label(tmp_path / "photos", "~/labels/", tiny_model, labels_file) == 0
    assert read_output(tmp_path / "home" / "labels" / "labels").num_rows == 5
    assert json.loads((tmp_path / "home" / "labels" / "_SUCCESS").read_text())["status"] == "ok"


def test_the_report_reads_only_its_prefixs_shards(tmp_path):
    from beam_pipeline.report.files import resolve_inputs

    for name in ["labels-00000-of-00001.parquet", "labels-v2-00000-of-00001.parquet"]:
        (tmp_path / name).write_bytes(b"")
    _, files = resolve_inputs(str(tmp_path / "labels"))
    assert files == [str(tmp_path / "labels-00000-of-00001.parquet")]
