"""Output placement: {date}/{run_id} placeholders, _SUCCESS written last, no silent mixing with an earlier run."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
from conftest import read_output, run_job
from images import write_broken_images, write_good_images


def test_placeholders_success_file_and_overwrite(tmp_path, shared, tiny_model, labels_file, capsys):
    folder = tmp_path / "in"
    good = write_good_images(folder, shared)
    broken = write_broken_images(folder, shared)
    common = ["--input", folder, "--model", tiny_model, "--labels", labels_file]
    assert (
        run_job(*common, "--output", str(tmp_path / "out" / "dt={date}" / "run={run_id}") + "/", "--large-model") == 0
    )

    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    (run_dir,) = (tmp_path / "out" / f"dt={today}").glob("run=*")
    summary = json.loads((run_dir / "_SUCCESS").read_text())
    assert run_dir.name == f"run={summary['run_id']}"
    assert summary["rows"] == len(good) + len(broken) == read_output(run_dir / "labels").num_rows
    assert summary["status_counts"] == {"ok": len(good), "error": len(broken)}
    assert summary["errors_by_type"] == {"EmptyFile": 1, "NotAnImage": 2, "CorruptImage": 1}
    assert summary["model"] == tiny_model and summary["shards"]
    assert summary["started_at"] <= summary["finished_at"]

    fixed = run_dir / "labels"
    assert run_job(*common, "--output", fixed) == 2, "an earlier run's shards are not silently mixed with new ones"
    assert "--overwrite" in capsys.readouterr().err
    assert run_job(*common, "--output", fixed, "--overwrite") == 0
    assert read_output(fixed).num_rows == len(good) + len(broken)


def test_an_output_folder_above_a_large_tree_is_listed_one_level_deep(tmp_path, shared, tiny_model, labels_file):
    """The launch checks, the final step's moves and --overwrite's clean-up list the output's own folder, never
    what lies below it: Beam's FileSystems.match walks the whole subtree (an output beside a home folder's 2 million
    files cost 9.7 s a listing), so a user's `--output ~/labels` must not read ~/ recursively."""
    images = tmp_path / "in"
    good = write_good_images(images, shared)
    home = tmp_path / "home"
    below = home / "archive"
    for i in range(3):
        (below / f"d{i}" / "deeper").mkdir(parents=True)
        (below / f"d{i}" / "deeper" / "old-00000-of-00001.parquet").write_bytes(b"not ours")
    opened: list[str] = []
    scandir = os.scandir

    def recording_scandir(path="."):
        if not isinstance(path, int):  # a file descriptor (os.fwalk's) is below a folder already recorded
            opened.append(os.fspath(path))
        return scandir(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "scandir", recording_scandir)
        common = ["--input", images, "--model", tiny_model, "--labels", labels_file, "--output", home / "labels"]
        assert run_job(*common) == 0
        assert run_job(*common, "--overwrite") == 0
    assert read_output(home / "labels").num_rows == len(good)
    assert any(Path(p) == home for p in opened), "the output folder itself is listed"
    assert not [p for p in opened if Path(p).is_relative_to(below)], "nothing below the output folder is listed"
