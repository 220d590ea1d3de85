"""run_local.sh end to end, with MODEL and LABELS pointing into ../shared and OUTPUT into the test's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, read_output


def test_run_local_labels_the_sample_photos(tmp_path, float_model, labels_file):
    output = tmp_path / "output"
    env = {**os.environ, "MODEL": float_model, "LABELS": labels_file, "VENV": sys.prefix, "OUTPUT": str(output)}
    result = subprocess.run([str(REPO / "run_local.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images read: 5  labelled: 5  failed: 0" in result.stdout
    rows = read_output(output / "labels" / "labels").to_pylist()
    labels = {Path(r["uri"]).name: r["label"] for r in rows}
    assert labels["chelsea.jpg"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert labels["grace_hopper.jpg"] == "military uniform"
    assert "chelsea.jpg  ->  " in result.stdout
    assert f"Review report: {output / 'report.html'}" in result.stdout
    assert (output / "report.html").read_text().count("data:image/jpeg;base64,") >= 5
    # Nothing a user cannot act on: the only lines on stderr are the job's progress lines (no library warnings).
    noise = [line for line in result.stderr.splitlines() if not line.startswith("labelled ")]
    assert noise == [], noise
    assert "WARNING" not in result.stdout
