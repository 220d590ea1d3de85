"""run_local.sh end to end, with MODEL and LABELS pointing into ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, read_output


def test_run_local_labels_the_sample_photos(float_model, labels_file):
    env = {**os.environ, "MODEL": float_model, "LABELS": labels_file, "VENV": sys.prefix}
    result = subprocess.run([str(REPO / "run_local.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images read: 5  labelled: 5  failed: 0" in result.stdout
    rows = read_output(REPO / "output" / "labels" / "labels").to_pylist()
    labels = {Path(r["uri"]).name: r["label"] for r in rows}
    assert labels["chelsea.jpg"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert labels["grace_hopper.jpg"] == "military uniform"
    assert "chelsea.jpg  ->  " in result.stdout
    report = REPO / "output" / "report.html"
    assert "Review report: output/report.html" in result.stdout
    assert report.read_text().count("data:image/jpeg;base64,") >= 5
