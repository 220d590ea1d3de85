"""`--model hf://...` through huggingface_hub, offline, against a pre-populated Hugging Face cache."""

from __future__ import annotations

import shutil

from conftest import read_output, run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_hf_model_from_offline_cache(tmp_path, float_model, labels_file, shared):
    repo = tmp_path / "hub" / "models--Dimitre--mobilenet_v3_small"
    shutil.copytree(float_model, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    prefix = tmp_path / "out" / "labels"
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    # No --model: the default, hf://Dimitre/mobilenet_v3_small.
    result = run_cli("--input", shared / "images" / "photos", "--output", prefix, "--labels", labels_file, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_output(prefix).to_pylist()
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert {r["model"] for r in rows} == {f"hf://Dimitre/mobilenet_v3_small@{COMMIT}"}
    assert {r["label"] for r in rows if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}
