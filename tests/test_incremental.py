"""Nightly runs over a growing manifest: the second run labels only the new rows; the union has each once."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import read_output, run_job
from images import write_good_images


def _manifest(path: Path, uris: list[str]) -> Path:
    path.write_text("id,uri\n" + "".join(f"{i},{u}\n" for i, u in enumerate(uris)))
    return path


def test_second_run_labels_only_new_rows(tmp_path, shared, tiny_model, labels_file):
    photos = [str(p) for p in write_good_images(tmp_path / "images", shared)]
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"not yet an image")
    first_uris = photos[:3] + [str(broken)]
    out = tmp_path / "labels"
    previous = str(out / "dt=*" / "labels-*.parquet")
    common = ["--model", tiny_model, "--labels", labels_file, "--skip-labelled", previous]

    manifest = _manifest(tmp_path / "m.csv", first_uris)
    assert run_job("--input", manifest, "--output", out / "dt=1" / "labels", *common) == 0
    first = read_output(out / "dt=1" / "labels").to_pylist()
    assert sorted(r["uri"] for r in first) == sorted(first_uris)

    grown = _manifest(tmp_path / "m.csv", first_uris + photos[3:])
    assert run_job("--input", grown, "--output", out / "dt=2" / "labels", *common) == 0
    second = read_output(out / "dt=2" / "labels").to_pylist()
    assert sorted(r["uri"] for r in second) == sorted(photos[3:]), "only the new rows"
    union = [r["uri"] for r in first + second]
    assert sorted(union) == sorted(first_uris + photos[3:]) and len(set(union)) == len(union)

    # The broken file is repaired; --relabel-errors retries it, and only it.
    broken.write_bytes((shared / "images" / "photos" / "hot_dog.jpg").read_bytes())
    assert run_job("--input", grown, "--output", out / "dt=3" / "labels", *common, "--relabel-errors") == 0
    third = read_output(out / "dt=3" / "labels").to_pylist()
    assert [(r["uri"], r["status"], r["label"]) for r in third] == [(str(broken), "ok", third[0]["label"])]


def test_other_model_output_does_not_count(tmp_path, shared, tiny_model, float_model, labels_file):
    photos = [str(p) for p in write_good_images(tmp_path / "images", shared)]
    manifest = _manifest(tmp_path / "m.csv", photos)
    out = tmp_path / "labels"
    assert (
        run_job("--input", manifest, "--output", out / "a" / "labels", "--model", tiny_model, "--labels", labels_file)
        == 0
    )
    args = ["--input", manifest, "--output", out / "b" / "labels", "--model", float_model, "--labels", labels_file]
    assert run_job(*args, "--skip-labelled", str(out / "*" / "labels-*.parquet")) == 0
    assert read_output(out / "b" / "labels").num_rows == len(photos)


def test_skip_labelled_refuses_parquet_that_is_not_this_jobs_output(tmp_path, shared, tiny_model, labels_file, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "earlier").mkdir()
    pq.write_table(pa.table({"path": ["a.jpg"]}), tmp_path / "earlier" / "labels-00000-of-00001.parquet")
    (tmp_path / "earlier" / "_SUCCESS").write_text("{}")
    photos = shared / "images" / "photos"
    args = ["--model", tiny_model, "--labels", labels_file, "--skip-labelled", str(tmp_path / "earlier")]
    assert run_job("--input", photos, "--output", tmp_path / "out" / "labels", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("beam-image-labeller: error: argument --skip-labelled: ") and "no column 'uri'" in err
    assert "\n" not in err


def test_skip_labelled_that_matches_files_but_no_shard_is_a_launch_error(tmp_path, shared, capsys):
    """A typo'd glob, a manifest, or `_SUCCESS` alone would otherwise relabel everything silently."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "_SUCCESS").write_text("{}")
    (earlier / "images.csv").write_text("uri\na.jpg\n")
    (earlier / "_staging-run1").mkdir()
    (earlier / "_staging-run1" / "labels-00000-of-00001.parquet").write_bytes(b"unfinished")
    for location in (earlier, earlier / "*", earlier / "lables-*.parquet*", earlier / "_SUCCESS"):
        photos = shared / "images" / "photos"
        args = ["--input", photos, "--output", tmp_path / "out" / "labels", "--skip-labelled", location]
        code = run_job(*args, "--model", tmp_path / "no-model", "--labels", tmp_path / "no-labels")
        err = capsys.readouterr().err.strip()
        if location == earlier / "lables-*.parquet*":  # matches nothing: the flag is fine, the model is not
            assert "argument --model" in err
            continue
        assert code == 2
        assert err.startswith("beam-image-labeller: error: argument --skip-labelled: ") and "no output shard" in err
        assert "\n" not in err


def test_first_night_says_nothing_matched_later_nights_count_shards(tmp_path, shared, tiny_model, labels_file, capsys):
    """The first night of a schedule: one line saying nothing matched, every input labelled. The next night's
    _SUCCESS says how many earlier shards it matched; its summary tells labelled rows from permanent failures."""
    photos = [str(p) for p in write_good_images(tmp_path / "images", shared)]
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"not an image")
    manifest = _manifest(tmp_path / "m.csv", [*photos, str(broken)])
    out = tmp_path / "n"
    common = ["--input", manifest, "--model", tiny_model, "--labels", labels_file]
    assert run_job(*common, "--output", out / "dt=1" / "labels", "--skip-labelled", f"{out}/dt=*/*") == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "--skip-labelled" in line]
    assert len(notes) == 1 and "nothing matches" in notes[0]
    first = json.loads((out / "dt=1" / "_SUCCESS").read_text())
    assert (first["rows"], first["rows_skipped"], first["earlier_shards_matched"]) == (len(photos) + 1, 0, 0)
    shards = sorted((out / "dt=1").glob("labels-*.parquet"))

    assert run_job(*common, "--output", out / "dt=2" / "labels", "--skip-labelled", f"{out}/dt=*/*") == 0
    summary = capsys.readouterr().out
    second = json.loads((out / "dt=2" / "_SUCCESS").read_text())
    assert (second["rows_skipped"], second["rows_skipped_failed"]) == (len(photos) + 1, 1)
    assert second["earlier_shards_matched"] == len(shards)
    assert f"skipped (labelled by an earlier run): {len(photos)}, failed for good in an earlier run: 1" in summary


def test_skip_labelled_compares_the_model_not_how_it_is_spelled(tmp_path, shared, tiny_model, labels_file, monkeypatch):
    """`.../model/`, `.../model` and a relative path from another folder are one model."""
    photos = [str(p) for p in write_good_images(tmp_path / "images", shared)]
    manifest = _manifest(tmp_path / "m.csv", photos)
    out = tmp_path / "n"
    common = ["--input", manifest, "--labels", labels_file, "--skip-labelled", f"{out}/dt=*/*"]
    assert run_job(*common, "--output", out / "dt=1" / "labels", "--model", tiny_model + "/") == 0
    assert {r["model"] for r in read_output(out / "dt=1" / "labels").to_pylist()} == {tiny_model}
    monkeypatch.chdir(Path(tiny_model).parent.parent)
    relative = Path(".") / Path(tiny_model).parent.name / Path(tiny_model).name
    assert run_job(*common, "--output", out / "dt=2" / "labels", "--model", f"./{relative}") == 0
    second = json.loads((out / "dt=2" / "_SUCCESS").read_text())
    assert (second["rows_in"], second["rows_skipped"], second["rows"]) == (len(photos), len(photos), 0)
