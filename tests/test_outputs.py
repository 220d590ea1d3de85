"""Output placement: {date}/{run_id} placeholders, _SUCCESS written last, no silent mixing with an earlier run."""

from __future__ import annotations

import datetime
import json

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
