"""A run killed halfway publishes nothing; the same command run again yields every row once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_output
from images import jpeg_bytes, photo

IMAGES = 300


def _has_temp_files(out: Path) -> bool:
    return any(p.is_file() for p in out.glob("_staging-*/**/*"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared) -> Path:
    folder = tmp_path_factory.mktemp("in")
    data = jpeg_bytes(photo(shared).resize((1024, 768)))
    for i in range(IMAGES):
        (folder / f"img_{i:04d}.jpg").write_bytes(data)
    return folder


def _command(folder: Path, out: Path, model: str, labels: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "beam_pipeline",
        "--input",
        str(folder),
        "--output",
        str(out / "labels"),
        "--model",
        model,
        "--labels",
        labels,
    ]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_prints_one_line_and_leaves_nothing(tmp_path, folder, float_model, labels_file, signum, code):
    out = tmp_path / "out"
    run = subprocess.Popen(_command(folder, out, float_model, labels_file), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _has_temp_files(out) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be interrupted"
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == code
    name = signal.Signals(signum).name
    assert stderr.strip().splitlines()[-1] == f"beam-image-labeller: interrupted ({name}): no output was published"
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == [], "the staging folder is removed"


def test_sigkill_halfway_then_rerun(tmp_path, folder, float_model, labels_file):
    out = tmp_path / "out"
    command = _command(folder, out, float_model, labels_file)
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _has_temp_files(out) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed halfway"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    assert _has_temp_files(out), "the sink had started writing"
    assert not list(out.glob("labels-*-of-*.parquet")), "no final shards after a kill"
    assert not (out / "_SUCCESS").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    uris = read_output(out / "labels").column("uri").to_pylist()
    assert sorted(uris) == sorted(str(p) for p in folder.iterdir())
    assert (out / "_SUCCESS").exists()
    # The rerun removed the killed run's staging folder; readers of the folder see only published shards.
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "labels-00000-of-00001.parquet"]
    assert len(pd.read_parquet(out)) == IMAGES
