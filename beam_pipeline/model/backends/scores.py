"""What every runtime does to a model's raw output: find out whether it is already probabilities, else softmax."""

from __future__ import annotations

import numpy as np


def outputs_are_probabilities(outputs: np.ndarray) -> bool:
    """True when a model already ends in softmax (rows are non-negative and sum to 1)."""
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=0.02))


def probe_image(width: int, height: int) -> np.ndarray:
    """A fixed, non-uniform uint8 [1, height, width, 3] probe image for checking what kind of scores a model outputs."""
    ramp = np.linspace(0, 255, width * height * 3, dtype=np.float32).reshape(1, height, width, 3)
    return ramp.astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)
