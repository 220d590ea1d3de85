"""A model as the launcher resolved it (ModelRef): what every stage and worker passes around to name the model."""

from __future__ import annotations

import dataclasses
import re

HF_SPEC = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
DEFAULT_BACKEND = "tensorflow"


class ModelError(Exception):
    """The model cannot be found or loaded."""


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
