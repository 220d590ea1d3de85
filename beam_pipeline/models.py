"""Finds the model that `--model` names, picks the runtime (`--backend`) and loads it as a probability classifier.

Resolution (Hugging Face Hub, TF Hub, any fsspec filesystem) ends in a local SavedModel folder or `.tflite` bytes;
each runtime in `beam_pipeline.backends` loads those. Only SavedModel protobufs, variables and `.tflite`
flatbuffers are read: nothing from a model repository is unpickled or executed as Python. Nothing here imports
TensorFlow unless the tensorflow backend (or a TF Hub handle, see `_tfhub_dir`) needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import fsspec
import numpy as np

from beam_pipeline import staging

HF_SCHEME = "hf://"
TFHUB_HOSTS = ("tfhub.dev", "www.kaggle.com", "kaggle.com")
HF_ALLOWED_FILES = ["*.pb", "variables/*", "assets/*", "*.tflite", "*.txt", "*.json", "*.md"]
_HF_SPEC = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")

BACKENDS = ("tensorflow", "openvino", "litert")
DEFAULT_BACKEND = "tensorflow"
DEFAULT_TFLITE_BACKEND = "litert"
# The module each backend imports, and the setup.py extra that installs it (tensorflow is a core dependency).
_BACKEND_MODULE = {"tensorflow": "tensorflow", "openvino": "openvino", "litert": "ai_edge_litert"}
_BACKEND_EXTRA = {"openvino": "openvino", "litert": "litert"}
# What each backend can read, by ModelRef.kind ("savedmodel" covers huggingface and tfhub too).
_BACKEND_FORMATS = {"tensorflow": {"savedmodel", "tflite"}, "openvino": {"savedmodel"}, "litert": {"tflite"}}


class ModelError(Exception):
    """The model cannot be found or loaded."""


class BackendError(Exception):
    """The chosen --backend is not installed or cannot run the model."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as resolved at launch: what `--model` said, its kind, the pinned revision, and the runtime to use.

    The backend travels with the model so that every worker (through the ModelHandler) loads the same runtime.
    """

    spec: str
    kind: str  # "huggingface" | "tfhub" | "savedmodel" | "tflite"
    revision: str | None = None
    backend: str = DEFAULT_BACKEND
    staged: str | None = None  # where the launcher staged the model's files for workers (staging.py)
    checksum: str | None = None  # the staged files' content checksum, verified by each worker

    @property
    def model_id(self) -> str:
        """Written to the `model` column: the spec and the resolved revision."""
        return f"{self.spec.split('@')[0]}@{self.revision}" if self.revision else self.spec


class Classifier(Protocol):
    """A loaded image classifier."""

    input_size: tuple[int, int]  # (width, height)
    num_classes: int

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, height, width, 3] RGB -> float32 [N, num_classes] probabilities."""


def kind_of(spec: str) -> str:
    """Which loader a `--model` value needs; raises ModelError for a scheme no loader handles."""
    if spec.startswith(HF_SCHEME):
        if not _HF_SPEC.match(spec):
            raise ModelError(f"expected hf://OWNER/REPO[@REVISION], got {spec!r}")
        return "huggingface"
    if spec.startswith(("http://", "https://")):
        host = spec.split("/")[2]
        if host in TFHUB_HOSTS:
            return "tfhub"
        raise ModelError(f"an http(s) model must be a TF Hub or Kaggle Models handle, got host {host!r}")
    if spec.endswith(".tflite"):
        return "tflite"
    protocol = spec.split("://")[0] if "://" in spec else "file"
    if protocol not in fsspec.available_protocols():
        raise ModelError(f"unknown model scheme {protocol!r}: use hf://, a TF Hub URL, a SavedModel path or .tflite")
    return "savedmodel"


def choose_backend(requested: str | None, kind: str) -> str:
    """The runtime for a model of this kind: `requested`, or the default (litert for .tflite, else tensorflow).

    Raises BackendError when that runtime cannot read the model or its extra is not installed.
    """
    fmt = "tflite" if kind == "tflite" else "savedmodel"
    backend = requested or (DEFAULT_TFLITE_BACKEND if fmt == "tflite" else DEFAULT_BACKEND)
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if fmt not in _BACKEND_FORMATS[backend]:
        readers = [b for b in BACKENDS if fmt in _BACKEND_FORMATS[b]]
        what = ".tflite files" if fmt == "tflite" else "SavedModels"
        raise BackendError(f"{backend} cannot run {what}; use {' or '.join(readers)}")
    if importlib.util.find_spec(_BACKEND_MODULE[backend]) is None:
        hint = f"pip install 'beam-image-labeller[{_BACKEND_EXTRA[backend]}]'" if backend in _BACKEND_EXTRA else ""
        if backend == "litert" and requested is None:
            hint += " (or --backend tensorflow for TensorFlow's deprecated TFLite interpreter)"
        raise BackendError(f"{backend} is not installed: {hint}".rstrip(": "))
    return backend


def resolve(spec: str, backend: str | None = None) -> ModelRef:
    """Resolves `--model` and `--backend` at launch; for the Hugging Face Hub this pins the revision (a commit hash).

    Raises ModelError for the model, BackendError for the backend.
    """
    kind = kind_of(spec)
    chosen = choose_backend(backend, kind)
    revision = _hf_revision(spec) if kind == "huggingface" else None
    return ModelRef(spec, kind, revision=revision, backend=chosen)


def _hf_revision(spec: str) -> str:
    """The commit hash a Hugging Face spec names now (fetching the snapshot once); raises ModelError."""
    try:
        return Path(_hf_snapshot(spec)).name
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's errors (offline, not found, HTTP) read the same way
        message = " ".join(str(exc).split())  # the Hub's messages span lines; a launch error is one
        raise ModelError(f"cannot fetch {spec!r} from the Hugging Face Hub: {type(exc).__name__}: {message}") from exc


_loaded: dict[tuple[ModelRef, int | None], Classifier] = {}
_loading = threading.Lock()


def load(ref: ModelRef, *, num_threads: int | None = None) -> Classifier:
    """The classifier a ModelRef names, on its backend, loaded once per process; raises ModelError.

    A local run's workers live in the launcher's process, so they reuse the model the launch check loaded
    (saving a second load, ~2 s with TensorFlow); elsewhere Beam's Shared handle calls this once per process.
    """
    with _loading:
        key = (ref, num_threads)
        if key not in _loaded:
            _loaded[key] = _load(ref, num_threads)
        return _loaded[key]


def _load(ref: ModelRef, num_threads: int | None) -> Classifier:
    try:  # again here: a worker (e.g. on Dataflow) may lack the runtime the launcher had
        choose_backend(ref.backend, ref.kind)
    except BackendError as exc:
        raise ModelError(f"--backend {exc}") from exc
    try:
        with _model_source(ref) as source:
            if ref.kind == "tflite":
                content = Path(source).read_bytes()
                if ref.backend == "litert":
                    from beam_pipeline.backends.litert import LiteRTClassifier

                    return LiteRTClassifier(content, num_threads=num_threads)
                from beam_pipeline.backends.tensorflow import TFLiteClassifier

                return TFLiteClassifier(content, num_threads=num_threads)
            folder = _find_savedmodel(source)
            if ref.backend == "openvino":
                from beam_pipeline.backends.openvino import OpenVINOClassifier

                return OpenVINOClassifier(folder, num_threads=num_threads)
            from beam_pipeline.backends.tensorflow import SavedModelClassifier

            return SavedModelClassifier(folder, num_threads=num_threads)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported the same way
        raise ModelError(f"cannot load model {ref.spec!r}: {type(exc).__name__}: {exc}") from exc


def stage_model(ref: ModelRef, location: str) -> ModelRef:
    """The same model, staged once under `location` for workers to fetch and verify (see staging.py)."""
    with _model_source(ref) as source:
        files = source if ref.kind == "tflite" else _find_savedmodel(source)
        url, checksum = staging.stage(files, location)
    return dataclasses.replace(ref, staged=url, checksum=checksum)


@contextlib.contextmanager
def _model_source(ref: ModelRef) -> Iterator[str]:
    """A local path to the model's files (a .tflite file, or a folder holding the SavedModel) for the block's
    duration: the staged copy when there is one, else the Hub's cache, the local path, or a temporary download."""
    if ref.staged is not None:
        with staging.fetched(ref.staged, ref.checksum or "") as local:
            yield local
    elif ref.kind == "huggingface":
        yield _hf_snapshot(ref.spec, ref.revision)
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


def _hf_snapshot(spec: str, revision: str | None = None) -> str:
    """Downloads (or finds in the cache, honouring HF_HUB_OFFLINE) a Hugging Face Hub snapshot."""
    from huggingface_hub import snapshot_download

    match = _HF_SPEC.match(spec)
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


def _find_savedmodel(root: str) -> str:
    """The directory under root that holds saved_model.pb (a Hub repo may keep it in a subfolder)."""
    found = sorted(Path(root).rglob("saved_model.pb"), key=lambda p: len(p.parts))
    if not found:
        raise ModelError(f"no saved_model.pb under {root}")
    return str(found[0].parent)


def default_num_threads() -> int:
    """Cores available to this process."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
