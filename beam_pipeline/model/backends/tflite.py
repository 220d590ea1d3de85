"""Feeding a `.tflite` model and reading its output, shared by the litert runtime and TensorFlow's interpreter.

Quantised models are fed the way they were trained: uint8 pixels as they are (int8: shifted by 128), since their
input quantisation already maps the pixel range onto the model's normalised input; quantised outputs are
dequantised with the output tensor's own scale and zero point. Float models get float32 in [0,1].

Embeddings: the input of the last CONV_2D or FULLY_CONNECTED before the output (through RESHAPE, SQUEEZE, SOFTMAX
and (de)quantisation), read after `invoke` and dequantised with its own quantisation. TFLite reuses an
intermediate tensor's memory once it is consumed, so an interpreter that reads one is built with
`experimental_preserve_all_tensors` (measured: no slower for this model, whose activations are small).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
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


# Ops between a classifier layer and the output; the classifier layers themselves.
_AFTER_CLASSIFIER = {"RESHAPE", "SQUEEZE", "SOFTMAX", "DEQUANTIZE", "QUANTIZE"}
_CLASSIFIER_OPS = {"CONV_2D", "FULLY_CONNECTED"}


def classifier_input(ops: list[dict[str, Any]], output: int) -> int | None:
    """The index of the tensor feeding the final classifier layer before tensor `output`, or None when the output
    comes from no such layer (a feature-vector model). `ops` are an interpreter's op details without delegates
    (a delegate replaces the ops it runs by DELEGATE nodes)."""
    producers = {int(out): op for op in ops for out in op["outputs"]}
    op = producers.get(output)
    while op is not None and op["op_name"] in _AFTER_CLASSIFIER:
        op = producers.get(int(op["inputs"][0]))
    return int(op["inputs"][0]) if op is not None and op["op_name"] in _CLASSIFIER_OPS else None


def output_and_features(
    make: Callable[..., Any], resolver: Any, model_content: bytes, *, embeddings: bool
) -> tuple[dict[str, Any], bool, dict[str, Any] | None]:
    """The output tensor's details, whether a classifier layer produces it, and (with `embeddings`, where there is
    one) the details of the tensor feeding that layer. Read from the graph as the file has it: an interpreter made
    by `make` with op resolver `resolver` without default delegates (XNNPACK's DELEGATE nodes hide the ops)."""
    plain = make(model_content=model_content, experimental_op_resolver_type=resolver)
    plain.allocate_tensors()
    output = plain.get_output_details()[0]
    features = classifier_input(plain._get_ops_details(), output["index"])
    wanted = None
    if embeddings and features is not None:
        wanted = next(t for t in plain.get_tensor_details() if t["index"] == features)
    return output, features is not None, wanted


def preserving_tensors(make: Callable[..., Any], **kwargs: Any) -> Any:
    """`make(..., experimental_preserve_all_tensors=True)`, without the warning that it is meant for debugging: it
    is how an intermediate tensor stays readable after invoke."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return make(**kwargs, experimental_preserve_all_tensors=True)
