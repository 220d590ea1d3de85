"""Feeding a `.tflite` model and reading its output, shared by the litert runtime and TensorFlow's interpreter.

Quantised models are fed the way they were trained: uint8 pixels as they are (int8: shifted by 128), since their
input quantisation already maps the pixel range onto the model's normalised input; quantised outputs are
dequantised with the output tensor's own scale and zero point. Float models get float32 in [0,1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beam_pipeline.model.backends.scores import outputs_are_probabilities


def model_input(image: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """One uint8 [H, W, 3] image as the model's [1, H, W, 3] input tensor."""
    dtype = details["dtype"]
    if dtype == np.uint8:
        x = image
    elif dtype == np.int8:
        x = (image.astype(np.int16) - 128).astype(np.int8)
    else:
        x = image.astype(np.float32) * (1.0 / 255.0)
    return x[None]


def dequantise(out: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """The output tensor as float32 scores."""
    scale, zero_point = details["quantization"]
    if scale:
        return (out.astype(np.float32) - zero_point) * scale
    return out.astype(np.float32)


def needs_softmax(raw: np.ndarray, details: dict[str, Any]) -> bool:
    """Whether the dequantised [1, C] output `raw` is logits rather than probabilities."""
    scale, zero_point = details["quantization"]
    if scale:  # a quantised output whose range is [0, 1) is a softmax; rounding spoils the sum-to-1 probe
        return not (zero_point == 0 and scale * 255 <= 1.0)
    return not outputs_are_probabilities(raw)
