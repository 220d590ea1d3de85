"""A run killed halfway publishes nothing; the same command run again yields every row once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import read_output
from images import jpeg_bytes, photo

IMAGES = 300


def _has_temp_files(out: Path) -> bool:
    return any(p.is_file() for p in out.glob("_staging-*/**/*"))


def test_sigkill_halfway_then_rerun(tmp_path, shared, float_model, labels_file):
    folder = tmp_path / "in"
    folder.mkdir()
    data = jpeg_bytes(photo(shared).resize((1024, 768)))
    for i in range(IMAGES):
        (folder / f"img_{i:04d}.jpg").write_bytes(data)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "beam_pipeline",
        "--input",
        str(folder),
        "--output",
        str(out / "labels"),
        "--model",
        float_model,
        "--labels",
        labels_file,
    ]

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
    # The killed run's staging folder is left, but readers of the folder skip `_` names: the README's recipe.
    assert len(pd.read_parquet(out)) == IMAGES
