"""`--model hf://...` through huggingface_hub, offline, against a pre-populated Hugging Face cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import read_output

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_hf_model_from_offline_cache(tmp_path, float_model, labels_file, shared):
    repo = tmp_path / "hub" / "models--Dimitre--mobilenet_v3_small"
    shutil.copytree(float_model, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    prefix = tmp_path / "out" / "labels"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_pipeline",
            "--input",
            shared / "images" / "photos",
            "--output",
            prefix,
            "--labels",
            labels_file,
        ],  # no --model: the default, hf://Dimitre/mobilenet_v3_small
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_output(prefix).to_pylist()
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert {r["model"] for r in rows} == {f"hf://Dimitre/mobilenet_v3_small@{COMMIT}"}
    assert {r["label"] for r in rows if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}
