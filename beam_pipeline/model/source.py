"""Where a resolved model's files are: a local path to a `.tflite` file or a SavedModel folder, from the staged copy,
the Hugging Face Hub's cache, TF Hub, a local path or any fsspec filesystem (a temporary download)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec

from beam_pipeline.model import staging
from beam_pipeline.model.ref import HF_SPEC, ModelError, ModelRef

HF_ALLOWED_FILES = ["*.pb", "variables/*", "assets/*", "*.tflite", "*.txt", "*.json", "*.md"]


@contextlib.contextmanager
def model_source(ref: ModelRef) -> Iterator[str]:
    """A local path to the model's files (a .tflite file, or a folder holding the SavedModel) for the block's
    duration: the staged copy when there is one, else the Hub's cache, the local path, or a temporary download."""
    if ref.staged is not None:
        with staging.fetched(ref.staged, ref.checksum or "") as local:
            yield local
    elif ref.kind == "huggingface":
        yield hf_snapshot(ref.spec, ref.revision)
    elif ref.kind == "tfhub":
        yield _tfhub_dir(ref.spec, in_process=ref.backend == "tensorflow")
    else:
        fs, path = fsspec.core.url_to_fs(ref.spec)
        if "file" in fs.protocol:
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="beam-image-labeller-model-") as local:
            if ref.kind == "tflite":
                target = os.path.join(local, os.path.basename(path))
                fs.get_file(path, target)
                yield target
            else:
                fs.get(path.rstrip("/") + "/", local, recursive=True)
                yield local


def hf_snapshot(spec: str, revision: str | None = None) -> str:
    """Downloads (or finds in the cache, honouring HF_HUB_OFFLINE) a Hugging Face Hub snapshot."""
    from huggingface_hub import snapshot_download

    match = HF_SPEC.match(spec)
    assert match is not None
    return snapshot_download(match["repo"], revision=revision or match["revision"], allow_patterns=HF_ALLOWED_FILES)


def _tfhub_dir(handle: str, *, in_process: bool) -> str:
    """tensorflow_hub's download and cache (honouring TFHUB_CACHE_DIR) for a TF Hub / Kaggle handle.

    tensorflow_hub imports TensorFlow, so for the other backends it runs in a child process: the worker itself stays
    free of TensorFlow's import time and memory, and the handle resolves exactly as the tensorflow backend's would.
    """
    if importlib.util.find_spec("tensorflow_hub") is None:
        raise ModelError("TF Hub handles need tensorflow-hub: pip install 'beam-image-labeller[tfhub]'")
    if in_process:
        import tensorflow_hub as hub

        return hub.resolve(handle)
    done = subprocess.run(
        [sys.executable, "-c", "import sys, tensorflow_hub as hub; print(hub.resolve(sys.argv[1]))", handle],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"cannot resolve TF Hub handle {handle!r}: {last}")
    return done.stdout.strip().splitlines()[-1]


def find_savedmodel(root: str) -> str:
    """The directory under root that holds saved_model.pb (a Hub repo may keep it in a subfolder)."""
    found = sorted(Path(root).rglob("saved_model.pb"), key=lambda p: len(p.parts))
    if not found:
        raise ModelError(f"no saved_model.pb under {root}")
    return str(found[0].parent)
