"""The litert backend: `.tflite` models on Google's LiteRT runtime (`ai-edge-litert`), without TensorFlow.

An interpreter is not thread-safe and this model's batch size is fixed at 1, so the classifier keeps a pool of
single-threaded interpreters, one per core, each owned by one thread of its own executor: a batch is split across
them, and Beam threads calling `predict` at the same time share the pool instead of queueing on one lock.
`Interpreter.invoke` releases the GIL, so the interpreters run in parallel.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from beam_pipeline.model.backends import tflite
from beam_pipeline.model.backends.scores import probe_image, softmax
from beam_pipeline.worker import default_num_threads


class LiteRTClassifier:
    """A `.tflite` classifier: uint8 [N,H,W,3] in, float32 [N,C] probabilities out, on every core."""

    def __init__(self, model_content: bytes, *, num_threads: int | None = None):
        self._content = model_content
        self._workers = num_threads or default_num_threads()
        self._local = threading.local()
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="litert")
        interpreter = self._pool.submit(self._interpreter).result()
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]
        _, height, width, _ = self._input["shape"]
        self.input_size = (int(width), int(height))
        raw = self._pool.submit(self._run, probe_image(width, height)).result()
        self._softmax = tflite.needs_softmax(raw, self._output)
        self.num_classes = raw.shape[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        chunks = np.array_split(images, min(len(images), self._workers)) if len(images) else [images]
        scores = np.concatenate(list(self._pool.map(self._run, chunks)))
        return softmax(scores) if self._softmax else scores

    def _interpreter(self) -> Interpreter:
        """This executor thread's own interpreter, created on first use."""
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = Interpreter(model_content=self._content, num_threads=1)
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
        return interpreter

    def _run(self, images: np.ndarray) -> np.ndarray:
        """Dequantised scores for uint8 [n,H,W,3], one image at a time (the file fixes the batch size at 1)."""
        interpreter = self._interpreter()
        scores = np.empty((len(images), self._output["shape"][-1]), np.float32)
        for i, image in enumerate(images):
            interpreter.set_tensor(self._input["index"], tflite.model_input(image, self._input))
            interpreter.invoke()
            scores[i] = tflite.dequantise(interpreter.get_tensor(self._output["index"])[0], self._output)
        return scores
