"""`--model hf://...` through huggingface_hub, offline, against a pre-populated Hugging Face cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import HF_MAIN, HF_PINNED, HF_REPO, REPO, read_output, run_cli

from beam_pipeline.launch.options import DEFAULT_MODEL


def test_the_default_model_is_pinned_to_a_commit():
    assert re.fullmatch(r"hf://[\w.-]+/[\w.-]+@[0-9a-f]{40}", DEFAULT_MODEL), DEFAULT_MODEL


def test_default_model_runs_the_pinned_commit_not_main(tmp_path, hf_cache, labels_file, shared):
    prefix = tmp_path / "out" / "labels"
    # No --model: the default. The cache's `main` holds an unloadable model, so following `main` would fail the run.
    result = run_cli("--input", shared / "images" / "photos", "--output", prefix, "--labels", labels_file, env=hf_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_output(prefix).to_pylist()
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert {r["model"] for r in rows} == {f"hf://{HF_REPO}@{HF_PINNED}"}
    assert {r["label"] for r in rows if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}
    success = json.loads((prefix.parent / "_SUCCESS").read_text())
    assert success["model_revision"] == HF_PINNED


def test_a_spec_without_revision_follows_main_and_is_pinned_for_the_run(hf_cache):
    """What a user gets by naming the repo without `@`: `main` as it is at launch, recorded as a commit hash."""
    code = (
        "import json, sys; from beam_pipeline.model import resolve; "
        "print(json.dumps([resolve.resolve(s).model_id for s in sys.argv[1:]]))"
    )
    specs = [f"hf://{HF_REPO}", f"hf://{HF_REPO}@main", DEFAULT_MODEL]
    result = subprocess.run(
        [sys.executable, "-c", code, *specs],
        cwd=REPO,
        env={**os.environ, **hf_cache},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    main, at_main, default = json.loads(result.stdout)
    assert main == at_main == f"hf://{HF_REPO}@{HF_MAIN}"
    assert default == f"hf://{HF_REPO}@{HF_PINNED}"


def test_a_model_the_hub_cannot_give_is_a_launch_error(tmp_path, shared, labels_file):
    """Offline with an empty cache: exit 2 and one line naming --model, not a failed run."""
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    prefix = tmp_path / "out" / "labels"
    result = run_cli("--input", shared / "images" / "photos", "--output", prefix, "--labels", labels_file, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"beam-image-labeller: error: argument --model: cannot fetch '{DEFAULT_MODEL}'"), line
    assert not prefix.parent.exists()
