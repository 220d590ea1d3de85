"""Finds the model that `--model` names and loads it as a classifier that returns class probabilities.

Beam's stock `TFModelHandler*` loads with `tf.keras.models.load_model`, which cannot load TF Hub SavedModels under
Keras 3, so SavedModels are loaded here with `tf.saved_model.load` (TF Hub handles through `tensorflow_hub`).
Only SavedModel protobufs, variables and `.tflite` flatbuffers are read: nothing from a model repository is
unpickled or executed as Python.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import fsspec
import numpy as np

HF_SCHEME = "hf://"
TFHUB_HOSTS = ("tfhub.dev", "www.kaggle.com", "kaggle.com")
HF_ALLOWED_FILES = ["*.pb", "variables/*", "assets/*", "*.tflite", "*.txt", "*.json", "*.md"]
_HF_SPEC = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


class ModelError(Exception):
    """The model cannot be found or loaded."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as resolved at launch: what `--model` said, its kind, and the pinned revision if any."""

    spec: str
    kind: str  # "huggingface" | "tfhub" | "savedmodel" | "tflite"
    revision: str | None = None

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


def resolve(spec: str) -> ModelRef:
    """Resolves `--model` at launch; for the Hugging Face Hub this pins the revision (a commit hash)."""
    kind = kind_of(spec)
    if kind == "huggingface":
        return ModelRef(spec, kind, revision=Path(_hf_snapshot(spec)).name)
    return ModelRef(spec, kind)


_loaded: dict[tuple[ModelRef, int | None], Classifier] = {}
_loading = threading.Lock()


def load(ref: ModelRef, *, num_threads: int | None = None) -> Classifier:
    """The classifier a ModelRef names, loaded once per process; raises ModelError with what and where.

    A local run's workers live in the launcher's process, so they reuse the model the launch check loaded
    (saving a second SavedModel load and trace, ~2 s); elsewhere Beam's Shared handle calls this once per process.
    """
    with _loading:
        key = (ref, num_threads)
        if key not in _loaded:
            _loaded[key] = _load(ref, num_threads)
        return _loaded[key]


def _load(ref: ModelRef, num_threads: int | None) -> Classifier:
    try:
        if ref.kind == "tflite":
            with fsspec.open(ref.spec, "rb") as f:
                return TFLiteClassifier(f.read(), num_threads=num_threads)
        return SavedModelClassifier(_local_savedmodel_dir(ref))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported the same way
        raise ModelError(f"cannot load model {ref.spec!r}: {type(exc).__name__}: {exc}") from exc


def _hf_snapshot(spec: str, revision: str | None = None) -> str:
    """Downloads (or finds in the cache, honouring HF_HUB_OFFLINE) a Hugging Face Hub snapshot."""
    from huggingface_hub import snapshot_download

    match = _HF_SPEC.match(spec)
    assert match is not None
    return snapshot_download(match["repo"], revision=revision or match["revision"], allow_patterns=HF_ALLOWED_FILES)


def _local_savedmodel_dir(ref: ModelRef) -> str:
    """A local directory holding the SavedModel, downloading it first where it lives elsewhere."""
    if ref.kind == "huggingface":
        return _find_savedmodel(_hf_snapshot(ref.spec, ref.revision))
    if ref.kind == "tfhub":
        import tensorflow_hub as hub

        return hub.resolve(ref.spec)
    fs, path = fsspec.core.url_to_fs(ref.spec)
    if "file" in fs.protocol:
        return _find_savedmodel(path)
    local = tempfile.mkdtemp(prefix="beam-image-labeller-model-")
    fs.get(path.rstrip("/") + "/", local, recursive=True)
    return _find_savedmodel(local)


def _find_savedmodel(root: str) -> str:
    """The directory under root that holds saved_model.pb (a Hub repo may keep it in a subfolder)."""
    found = sorted(Path(root).rglob("saved_model.pb"), key=lambda p: len(p.parts))
    if not found:
        raise ModelError(f"no saved_model.pb under {root}")
    return str(found[0].parent)


def _outputs_are_probabilities(outputs: np.ndarray) -> bool:
    """True when a model already ends in softmax (rows are non-negative and sum to 1)."""
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=0.02))


def _probe_image(width: int, height: int) -> np.ndarray:
    """A fixed, non-uniform probe image for checking what kind of scores a model outputs."""
    ramp = np.linspace(0, 255, width * height * 3, dtype=np.float32).reshape(1, height, width, 3)
    return ramp.astype(np.uint8)


class SavedModelClassifier:
    """A TF2 SavedModel in TF Hub's format: float32 [N,H,W,3] in [0,1] in, logits or probabilities out."""

    def __init__(self, path: str):
        import tensorflow as tf

        self._module = tf.saved_model.load(path)
        call = self._module.signatures.get("serving_default")
        height, width = 224, 224
        if call is not None:
            (spec,) = call.structured_input_signature[1].values()
            height = spec.shape[1] or height
            width = spec.shape[2] or width
            (output_name,) = call.structured_outputs.keys()

            def model_fn(x):
                return call(x)[output_name]
        else:  # a reusable SavedModel without signatures: its __call__ is the model

            def model_fn(x):
                return self._module(x)

        self.input_size = (width, height)

        def predict(images, softmax):
            x = tf.cast(images, tf.float32) * (1.0 / 255.0)
            scores = model_fn(x)
            return tf.nn.softmax(scores) if softmax else scores

        # The scaling to [0,1] and the softmax run inside one tf.function: no float64 and no extra copies.
        self._predict = tf.function(
            predict,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8), tf.TensorSpec([], tf.bool)],
        )
        raw = self._predict(_probe_image(width, height), tf.constant(False)).numpy()
        self._softmax = not _outputs_are_probabilities(raw)
        self.num_classes = raw.shape[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._predict(images, self._softmax).numpy()


class TFLiteClassifier:
    """A `.tflite` classifier run with TensorFlow's TFLite interpreter.

    Quantised models are fed the way they were trained: uint8 pixels as they are (int8: shifted by 128), since their
    input quantisation already maps the pixel range onto the model's normalised input; quantised outputs are
    dequantised with the output tensor's own scale and zero point. Float models get float32 in [0,1].
    """

    def __init__(self, model_content: bytes, *, num_threads: int | None = None):
        import tensorflow as tf

        self._interpreter = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        _, height, width, _ = self._input["shape"]
        self.input_size = (int(width), int(height))
        self._lock = threading.Lock()  # an interpreter is not thread-safe; Beam shares one between threads
        raw = self._invoke_one(_probe_image(width, height)[0])
        scale, zero_point = self._output["quantization"]
        if scale:  # a quantised output whose range is [0, 1) is a softmax; rounding spoils the sum-to-1 probe
            self._softmax = not (zero_point == 0 and scale * 255 <= 1.0)
        else:
            self._softmax = not _outputs_are_probabilities(raw[None])
        self.num_classes = raw.shape[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        # The interpreter's batch size is fixed by the file (1 here); resizing it fails under XNNPACK for this model.
        with self._lock:
            scores = np.stack([self._invoke_one(image) for image in images])
        return _softmax(scores) if self._softmax else scores

    def _invoke_one(self, image: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype == np.uint8:
            x = image
        elif dtype == np.int8:
            x = (image.astype(np.int16) - 128).astype(np.int8)
        else:
            x = image.astype(np.float32) * (1.0 / 255.0)
        self._interpreter.set_tensor(self._input["index"], x[None])
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output["index"])[0]
        scale, zero_point = self._output["quantization"]
        if scale:
            return (out.astype(np.float32) - zero_point) * scale
        return out.astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def default_num_threads() -> int:
    """Cores available to this process."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
