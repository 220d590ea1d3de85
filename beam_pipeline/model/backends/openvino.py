"""The openvino backend: the same SavedModel folder, read by OpenVINO's own TensorFlow frontend, without TensorFlow.

`Core.read_model(folder)` parses the SavedModel's protobufs and variables in C++; TensorFlow is never imported (nor
OpenVINO's Python model-conversion tool, `openvino.convert_model`, which gives the same graph but sends usage
telemetry by default). The model is compiled once per process with a static input shape [BATCH, H, W, 3] (uint8 in:
the conversion to float and the scaling to [0,1] are folded into the compiled graph) and PERFORMANCE_HINT=THROUGHPUT,
which runs several CPU streams at once. Each calling thread gets its own AsyncInferQueue on that one compiled model
(a queue is not safe to share between threads; the compiled model's streams are), sized to the model's optimal
number of infer requests: a batch is cut into BATCH-image requests, the last one padded, that run on every stream.
It computes in f32 unless `--precision bf16` asks for bfloat16, which only CPUs with bf16 instructions run.
With embeddings, the tensor that feeds the final classifier (the data input of the last Convolution or MatMul before
the output) becomes a second output of the same compiled model (`Model.add_outputs`), so one request gives both.
"""

from __future__ import annotations

import threading

import numpy as np

from beam_pipeline.imports import modules_hidden
from beam_pipeline.model.backends import ModelOutputs
from beam_pipeline.model.backends.scores import outputs_are_probabilities, probe_image, softmax
from beam_pipeline.model.ref import DEFAULT_PRECISION, PrecisionError

# openvino's __init__ imports its model converter, openvino.tools.ovc (~0.2 s, measured with -X importtime), when it is
# installed; Core.read_model never uses it.
with modules_hidden(["openvino.tools.ovc"]):
    import openvino as ov
import openvino.properties as props  # noqa: E402
import openvino.properties.device as device  # noqa: E402
import openvino.properties.hint as hints  # noqa: E402
from openvino.preprocess import PrePostProcessor  # noqa: E402

# Images per infer request. Measured on 2 cores (THROUGHPUT: 2 streams, 2 requests), batches of 64 and 20 images,
# median images/s: 1: 505, 2: 465, 4: 544, 8: 509, 16: 426; a request as large as the whole batch leaves one stream
# idle, and 1 costs 4x the Python calls. Compiling for 4 also takes 0.3 s against 2 s for 64.
BATCH = 4
# --precision. f32 by default, not the bf16 OpenVINO picks by itself on CPUs that have it: on the 100-image ImageNet
# sample (2-core AMD EPYC with AVX512_BF16, no AMX) bf16 ran 1.6-1.9x faster but its top-1 agreed with TensorFlow's on
# 98 images (f32: on all 100, scores within 3e-4).
INFERENCE_PRECISION = {"f32": ov.Type.f32, "bf16": ov.Type.bf16}
# What OpenVINO's CPU plugin lists among its OPTIMIZATION_CAPABILITIES when the CPU has bf16 instructions (AMX or
# AVX512_BF16); without them it would quietly compute in f32.
NEEDED_CAPABILITY = {"bf16": "BF16"}
DEFAULT_SIZE = 224
# Nodes between a classifier layer and the model's output: reshapes, the bias, a softmax, a type conversion.
_AFTER_CLASSIFIER = {"Reshape", "Squeeze", "Transpose", "Add", "Softmax", "SoftMax", "Convert"}
_CLASSIFIER_LAYERS = {"Convolution", "MatMul"}


class OpenVINOClassifier:
    """A SavedModel compiled by OpenVINO for the CPU: uint8 [N,H,W,3] in, probabilities (and embeddings) out."""

    def __init__(
        self,
        saved_model_dir: str,
        *,
        num_threads: int | None = None,
        batch: int = BATCH,
        precision: str = DEFAULT_PRECISION,
        embeddings: bool = False,
    ):
        core = ov.Core()
        needed = NEEDED_CAPABILITY.get(precision)
        if needed and needed not in core.get_property("CPU", device.capabilities):
            cpu = core.get_property("CPU", device.full_name)
            raise PrecisionError(f"{precision} needs a CPU with AMX or AVX512_BF16; this one ({cpu}) has neither")
        model = core.read_model(saved_model_dir)
        if len(model.outputs) != 1:
            raise ValueError(f"expected a model with one output, got {len(model.outputs)}")
        features = classifier_input(model.output(0))
        self._has_classifier = features is not None
        if embeddings and features is not None:
            model.add_outputs([features])
        shape = model.input(0).get_partial_shape()
        height, width = (shape[i].get_length() if shape[i].is_static else DEFAULT_SIZE for i in (1, 2))
        model.reshape([batch, height, width, 3])
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8)
        ppp.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0)
        config = {
            hints.performance_mode: hints.PerformanceMode.THROUGHPUT,
            hints.inference_precision: INFERENCE_PRECISION[precision],
        }
        if num_threads:
            config[props.inference_num_threads] = num_threads
        self._compiled = core.compile_model(ppp.build(), "CPU", config)
        self._jobs = self._compiled.get_property(props.optimal_number_of_infer_requests)
        self._batch = batch
        self._local = threading.local()
        # Each output's values per image ([B,1024,1,1] and [B,1,1,1024] alike are 1024 a row).
        self._widths = [int(np.prod(list(out.get_shape())[1:])) for out in self._compiled.outputs]
        self.input_size = (width, height)
        self.num_classes = self._widths[0] if self._has_classifier else 0
        self.embedding_size = self._widths[-1] if len(self._widths) > 1 or not self._has_classifier else None
        self._softmax = self._has_classifier and not outputs_are_probabilities(
            self._infer(probe_image(width, height))[0]
        )

    def infer(self, images: np.ndarray) -> ModelOutputs:
        raw = self._infer(images)
        if not self._has_classifier:
            return ModelOutputs(None, raw[0])
        scores = softmax(raw[0]) if self._softmax else raw[0]
        return ModelOutputs(scores, raw[1] if len(raw) > 1 else None)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.infer(images).scores

    def _infer(self, images: np.ndarray) -> list[np.ndarray]:
        """Each raw output for uint8 [N,H,W,3], N split into requests of the compiled batch size."""
        queue = self._queue()
        n, batch = len(images), self._batch
        padded = -n % batch
        if padded:
            images = np.concatenate([images, np.zeros((padded, *images.shape[1:]), images.dtype)])
        outputs = [np.empty((n + padded, width), np.float32) for width in self._widths]
        for start in range(0, n + padded, batch):
            # share_inputs: the request reads the batch's own memory (it outlives wait_all) instead of a copy made
            # under the GIL, which the decode threads wait on.
            queue.start_async({0: images[start : start + batch]}, userdata=(outputs, start), share_inputs=True)
        queue.wait_all()
        return [out[:n] for out in outputs]

    def _queue(self) -> ov.AsyncInferQueue:
        """This thread's AsyncInferQueue on the shared compiled model, created on first use."""
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = ov.AsyncInferQueue(self._compiled, self._jobs)
            queue.set_callback(_store_outputs)
            self._local.queue = queue
        return queue


def classifier_input(output: ov.Output) -> ov.Output | None:
    """The tensor feeding the final classifier layer before `output` (a model's result), or None if it has none."""
    node = output.get_node().input_value(0).get_node()
    while node.get_type_name() in _AFTER_CLASSIFIER:
        node = _data_input(node).get_node()
    return _data_input(node) if node.get_type_name() in _CLASSIFIER_LAYERS else None


def _data_input(node: ov.Node) -> ov.Output:
    """A node's first input that is not a constant (a bias, weights or a target shape)."""
    inputs = [node.input_value(i) for i in range(node.get_input_size())]
    return next((i for i in inputs if i.get_node().get_type_name() != "Constant"), inputs[0])


def _store_outputs(request: ov.InferRequest, userdata: tuple[list[np.ndarray], int]) -> None:
    """Copies a finished request's outputs into their place in the batch's output arrays."""
    outputs, start = userdata
    for i, out in enumerate(outputs):
        data = request.get_output_tensor(i).data
        out[start : start + len(data)] = data.reshape(len(data), -1)
