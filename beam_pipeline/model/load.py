"""Loads the model a ModelRef names, on its runtime (`beam_pipeline.model.backends`), as a probability classifier,
once per process.

Only SavedModel protobufs, variables and `.tflite` flatbuffers are read: nothing from a model repository is
unpickled or executed as Python. Nothing here imports TensorFlow unless the tensorflow backend (or a TF Hub handle,
see `source._tfhub_dir`) needs it.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from beam_pipeline.model import staging
from beam_pipeline.model.backends import Classifier
from beam_pipeline.model.ref import ModelError, ModelRef
from beam_pipeline.model.resolve import BackendError, choose_backend
from beam_pipeline.model.source import find_savedmodel, model_source

_loaded: dict[tuple[ModelRef, int | None, bool], Classifier] = {}
_loading = threading.Lock()


def load(ref: ModelRef, *, num_threads: int | None = None, embeddings: bool = False) -> Classifier:
    """The classifier a ModelRef names, on its backend, loaded once per process; raises ModelError. With
    `embeddings` it also returns the input of its final classifier layer (see `backends`).

    A local run's workers live in the launcher's process, so they reuse the model the launch check loaded
    (saving a second load, ~2 s with TensorFlow); elsewhere Beam's Shared handle calls this once per process.
    """
    with _loading:
        key = (ref, num_threads, embeddings)
        if key not in _loaded:
            _loaded[key] = _load(ref, num_threads, embeddings)
        return _loaded[key]


def _load(ref: ModelRef, num_threads: int | None, embeddings: bool) -> Classifier:
    try:  # again here: a worker (e.g. on Dataflow) may lack the runtime the launcher had
        choose_backend(ref.backend, ref.kind)
    except BackendError as exc:
        raise ModelError(f"--backend {exc}") from exc
    try:
        with model_source(ref) as source:
            if ref.kind == "tflite":
                content = Path(source).read_bytes()
                if ref.backend == "litert":
                    from beam_pipeline.model.backends.litert import LiteRTClassifier

                    return LiteRTClassifier(content, num_threads=num_threads, embeddings=embeddings)
                from beam_pipeline.model.backends.tensorflow import TFLiteClassifier

                return TFLiteClassifier(content, num_threads=num_threads, embeddings=embeddings)
            folder = find_savedmodel(source)
            if ref.backend == "openvino":
                from beam_pipeline.model.backends.openvino import OpenVINOClassifier

                return OpenVINOClassifier(
                    folder, num_threads=num_threads, precision=ref.precision, embeddings=embeddings
                )
            from beam_pipeline.model.backends.tensorflow import SavedModelClassifier

            return SavedModelClassifier(folder, num_threads=num_threads, embeddings=embeddings)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported the same way
        raise ModelError(f"cannot load model {ref.spec!r}: {type(exc).__name__}: {exc}") from exc


def stage_model(ref: ModelRef, location: str) -> ModelRef:
    """The same model, staged once under `location` for workers to fetch and verify (see staging.py)."""
    with model_source(ref) as source:
        files = source if ref.kind == "tflite" else find_savedmodel(source)
        url, checksum = staging.stage(files, location)
    return dataclasses.replace(ref, staged=url, checksum=checksum)
