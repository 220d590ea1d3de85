"""Resolves `--model` and `--backend` at launch into a ModelRef: which kind of model it is, the runtime to run it on,
and for the Hugging Face Hub the revision pinned (a commit hash), so that every worker loads the same thing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import fsspec

from beam_pipeline.model.ref import DEFAULT_BACKEND, DEFAULT_PRECISION, HF_SPEC, ModelError, ModelRef, PrecisionError
from beam_pipeline.model.source import hf_snapshot

HF_SCHEME = "hf://"
TFHUB_HOSTS = ("tfhub.dev", "www.kaggle.com", "kaggle.com")

BACKENDS = ("tensorflow", "openvino", "litert")
DEFAULT_TFLITE_BACKEND = "litert"
# The module each backend imports, and the setup.py extra that installs it (tensorflow and openvino are core
# dependencies).
_BACKEND_MODULE = {"tensorflow": "tensorflow", "openvino": "openvino", "litert": "ai_edge_litert"}
_BACKEND_EXTRA = {"litert": "litert"}
# What each backend can read, by ModelRef.kind ("savedmodel" covers huggingface and tfhub too).
_BACKEND_FORMATS = {"tensorflow": {"savedmodel", "tflite"}, "openvino": {"savedmodel"}, "litert": {"tflite"}}
# What the error for a default backend that is not installed suggests instead: TensorFlow runs either format.
_FALLBACK_NOTE = {"tflite": " for TensorFlow's deprecated TFLite interpreter", "savedmodel": ""}


class BackendError(Exception):
    """The chosen --backend is not installed or cannot run the model."""


def kind_of(spec: str) -> str:
    """Which loader a `--model` value needs; raises ModelError for a scheme no loader handles."""
    if spec.startswith(HF_SCHEME):
        if not HF_SPEC.match(spec):
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
    """The runtime for a model of this kind: `requested`, or the default (litert for .tflite, else openvino).

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
        if backend in _BACKEND_EXTRA:
            hint = f"pip install 'beam-image-labeller[{_BACKEND_EXTRA[backend]}]'"
        else:  # a core dependency missing: an install that skipped dependencies, or an image built without them
            hint = "it is a dependency of beam-image-labeller: pip install beam-image-labeller"
        if requested is None:
            hint += f" (or --backend tensorflow{_FALLBACK_NOTE[fmt]})"
        raise BackendError(f"{backend} is not installed: {hint}")
    return backend


def resolve(spec: str, backend: str | None = None, precision: str = DEFAULT_PRECISION) -> ModelRef:
    """Resolves `--model`, `--backend` and `--precision` at launch; for the Hugging Face Hub this pins the revision
    (a commit hash).

    Raises ModelError for the model, BackendError for the backend, PrecisionError for a precision the backend does
    not offer (whether the CPU can run it is checked where the model is compiled, backends/openvino.py).
    """
    kind = kind_of(spec)
    if kind in ("savedmodel", "tflite") and "://" not in spec:
        # One spelling of a local model (`m/float/`, `./m/float`, from another folder) in the `model` column, which
        # --skip-labelled compares (records.model_identity). Imported here: records imports Beam, which the launcher
        # imports later without its unused connectors (launch/cli.import_beam), and options.py imports this module.
        from beam_pipeline.records import model_identity

        spec = model_identity(spec)
    chosen = choose_backend(backend, kind)
    if precision != DEFAULT_PRECISION and chosen != "openvino":
        raise PrecisionError(f"{precision} is for --backend openvino; this model runs on {chosen}")
    revision = _hf_revision(spec) if kind == "huggingface" else None
    return ModelRef(spec, kind, revision=revision, backend=chosen, precision=precision)


def _hf_revision(spec: str) -> str:
    """The commit hash a Hugging Face spec names now (fetching the snapshot once); raises ModelError."""
    try:
        return Path(hf_snapshot(spec)).name
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's errors (offline, not found, HTTP) read the same way
        message = " ".join(str(exc).split())  # the Hub's messages span lines; a launch error is one
        raise ModelError(f"cannot fetch {spec!r} from the Hugging Face Hub: {type(exc).__name__}: {message}") from exc
