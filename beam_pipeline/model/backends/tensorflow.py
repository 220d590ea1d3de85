"""The tensorflow backend: SavedModels with `tf.saved_model.load`, `.tflite` with TensorFlow's TFLite interpreter.

Beam's stock `TFModelHandler*` loads with `tf.keras.models.load_model`, which cannot load TF Hub SavedModels under
Keras 3, so SavedModels are loaded with `tf.saved_model.load`, and TensorFlow is imported without Keras (see
`import_tensorflow`).
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

import numpy as np

from beam_pipeline.model.backends import tflite
from beam_pipeline.model.backends.scores import outputs_are_probabilities, probe_image, softmax

# `import tensorflow` imports this eagerly "so that optimizers register in the SavedModel registry" (b/196254385),
# which pulls in all of Keras 3 and, through it, matplotlib.pyplot and scikit-learn shims: about 0.6 s and 100 MB
# that loading and calling a SavedModel's signature never use.
_EAGER_KERAS_IMPORTS = ("keras.src.optimizers", "tf_keras.src.optimizers")


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, skipping the Keras import its __init__ forces (it catches the ImportError this causes).

    Keras still loads on demand if anything asks for `tf.keras` later.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    blocked = [name for name in _EAGER_KERAS_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes that one import raise ImportError
    try:
        import tensorflow as tf
    finally:
        for name in blocked:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return tf


def limit_threads(tf: ModuleType, num_threads: int) -> None:
    """Caps TensorFlow's op thread pools, where several worker processes share a machine's cores (one SDK process
    per vCPU on Dataflow): uncapped, each sizes its pools to every core and they oversubscribe the machine. Only
    possible before TensorFlow runs its first op in the process; a process that already has is left as it is."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    except RuntimeError:  # "cannot be modified after initialization"
        pass


class SavedModelClassifier:
    """A TF2 SavedModel in TF Hub's format: float32 [N,H,W,3] in [0,1] in, logits or probabilities out."""

    def __init__(self, path: str, *, num_threads: int | None = None):
        tf = import_tensorflow()
        if num_threads:
            limit_threads(tf, num_threads)
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
        raw = self._predict(probe_image(width, height), tf.constant(False)).numpy()
        self._softmax = not outputs_are_probabilities(raw)
        self.num_classes = raw.shape[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._predict(images, self._softmax).numpy()


class TFLiteClassifier:
    """A `.tflite` classifier on TensorFlow's (deprecated) `tf.lite.Interpreter`: `--backend tensorflow` for .tflite.

    One interpreter behind a lock, one image at a time; the litert backend is the fast path for `.tflite` files.
    """

    def __init__(self, model_content: bytes, *, num_threads: int | None = None):
        tf = import_tensorflow()

        self._interpreter = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        _, height, width, _ = self._input["shape"]
        self.input_size = (int(width), int(height))
        self._lock = threading.Lock()  # an interpreter is not thread-safe; Beam shares one between threads
        raw = self._invoke_one(probe_image(width, height)[0])
        self._softmax = tflite.needs_softmax(raw[None], self._output)
        self.num_classes = raw.shape[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        # The interpreter's batch size is fixed by the file (1 here); resizing it fails under XNNPACK for this model.
        with self._lock:
            scores = np.stack([self._invoke_one(image) for image in images])
        return softmax(scores) if self._softmax else scores

    def _invoke_one(self, image: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], tflite.model_input(image, self._input))
        self._interpreter.invoke()
        return tflite.dequantise(self._interpreter.get_tensor(self._output["index"])[0], self._output)
