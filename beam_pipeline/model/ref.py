"""A model as the launcher resolved it (ModelRef): what every stage and worker passes around to name the model."""

from __future__ import annotations

import dataclasses
import re

HF_SPEC = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# The runtime for SavedModels when --backend is not given: OpenVINO, measured faster than TensorFlow (start-up without
# TensorFlow's import, a faster model, a third of the memory) with the same top-1 on all 100 images of the ImageNet
# sample in both resize modes (docs/performance.md).
DEFAULT_BACKEND = "openvino"
# --precision: the arithmetic the model runs in. f32 is exact (the same labels as TensorFlow); bf16 (bfloat16, on CPUs
# with AMX or AVX512_BF16, openvino only) is faster and moves a few labels (docs/models.md).
PRECISIONS = ("f32", "bf16")
DEFAULT_PRECISION = "f32"


class ModelError(Exception):
    """The model cannot be found or loaded."""


class PrecisionError(ModelError):
    """The chosen --precision cannot apply: another backend, or a CPU without the instructions it needs."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as resolved at launch: what `--model` said, its kind, the pinned revision, and the runtime to use.

    The backend and precision travel with the model so that every worker (through the ModelHandler) loads the same
    runtime, computing the same way.
    """

    spec: str
    kind: str  # "huggingface" | "tfhub" | "savedmodel" | "tflite"
    revision: str | None = None
    backend: str = DEFAULT_BACKEND
    precision: str = DEFAULT_PRECISION
    staged: str | None = None  # where the launcher staged the model's files for workers (staging.py)
    checksum: str | None = None  # the staged files' content checksum, verified by each worker

    @property
    def model_id(self) -> str:
        """Written to the `model` column: the spec and the resolved revision."""
        return f"{self.spec.split('@')[0]}@{self.revision}" if self.revision else self.spec
