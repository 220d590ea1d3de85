"""The tensorflow backend: SavedModels with `tf.saved_model.load`, `.tflite` with TensorFlow's TFLite interpreter.

Beam's stock `TFModelHandler*` loads with `tf.keras.models.load_model`, which cannot load TF Hub SavedModels under
Keras 3, so SavedModels are loaded with `tf.saved_model.load`, and TensorFlow is imported without Keras (see
`import_tensorflow`). The model's function is frozen (variables to constants) so that its graph can be read: the
input of the final classifier layer is found in it, and the function is pruned to return the output and, with
embeddings, that tensor too, from one run of the graph.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

import numpy as np

from beam_pipeline.model.backends import ModelOutputs, tflite
from beam_pipeline.model.backends.scores import outputs_are_probabilities, probe_image, softmax

# `import tensorflow` imports this eagerly "so that optimizers register in the SavedModel registry" (b/196254385),
# which pulls in all of Keras 3 and, through it, matplotlib.pyplot and scikit-learn shims: about 0.6 s and 100 MB
# that loading and calling a SavedModel's signature never use.
_EAGER_KERAS_IMPORTS = ("keras.src.optimizers", "tf_keras.src.optimizers")
# Ops between a classifier layer and the output in a frozen graph; the classifier layers themselves.
_AFTER_CLASSIFIER = {"Identity", "Reshape", "Squeeze", "BiasAdd", "Add", "AddV2", "Softmax"}
_CLASSIFIER_OPS = {"Conv2D", "MatMul"}


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
    """A TF2 SavedModel in TF Hub's format: float32 [N,H,W,3] in [0,1] in, logits or probabilities out (or, for a
    feature-vector model, its vectors)."""

    def __init__(self, path: str, *, num_threads: int | None = None, embeddings: bool = False):
        tf = import_tensorflow()
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        if num_threads:
            limit_threads(tf, num_threads)
        module = tf.saved_model.load(path)
        call = module.signatures.get("serving_default")
        if call is None:  # a reusable SavedModel without signatures: its __call__ is the model
            call = module.__call__.get_concrete_function(tf.TensorSpec([None, 224, 224, 3], tf.float32))
        (spec,) = [t for t in call.inputs if t.dtype == tf.float32]
        height, width = spec.shape[1] or 224, spec.shape[2] or 224
        self.input_size = (width, height)
        frozen = convert_variables_to_constants_v2(call)
        graph_def = frozen.graph.as_graph_def()
        (output,) = frozen.outputs
        features = classifier_input(graph_def, output.name)
        self._has_classifier = features is not None
        fetches = [output.name] + ([features] if embeddings and features is not None else [])
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        graph = wrapped.graph
        pruned = wrapped.prune(
            feeds=[graph.get_tensor_by_name(frozen.inputs[0].name)],
            fetches=[graph.get_tensor_by_name(name) for name in fetches],
        )

        def run(images, softmax):
            x = tf.cast(images, tf.float32) * (1.0 / 255.0)
            outputs = [tf.reshape(out, [tf.shape(images)[0], -1]) for out in pruned(x)]
            if softmax:
                outputs[0] = tf.nn.softmax(outputs[0])
            return outputs

        # The scaling to [0,1] and the softmax run inside one tf.function: no float64 and no extra copies.
        self._run = tf.function(
            run,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8), tf.TensorSpec([], tf.bool)],
        )
        raw = [out.numpy() for out in self._run(probe_image(width, height), tf.constant(False))]
        self._softmax = self._has_classifier and not outputs_are_probabilities(raw[0])
        self.num_classes = raw[0].shape[1] if self._has_classifier else 0
        self.embedding_size = raw[-1].shape[1] if len(raw) > 1 or not self._has_classifier else None

    def infer(self, images: np.ndarray) -> ModelOutputs:
        raw = [out.numpy() for out in self._run(images, self._softmax)]
        if not self._has_classifier:
            return ModelOutputs(None, raw[0])
        return ModelOutputs(raw[0], raw[1] if len(raw) > 1 else None)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.infer(images).scores


def classifier_input(graph_def, output: str) -> str | None:
    """The name of the tensor feeding the final classifier layer (Conv2D or MatMul) before `output` in a frozen
    graph, or None when the output comes from no such layer (a feature-vector model)."""
    nodes = {node.name: node for node in graph_def.node}
    node = nodes[output.split(":")[0]]
    while node.op in _AFTER_CLASSIFIER:
        node = nodes[_data_input(node, nodes).split(":")[0]]
    if node.op not in _CLASSIFIER_OPS:
        return None
    name = node.input[0]
    return name if ":" in name else f"{name}:0"


def _data_input(node, nodes: dict) -> str:
    """A node's first input that is not a constant (a bias or a target shape), control inputs left out."""
    inputs = [name for name in node.input if not name.startswith("^")]
    return next((name for name in inputs if nodes[name.split(":")[0]].op != "Const"), inputs[0])


class TFLiteClassifier:
    """A `.tflite` classifier on TensorFlow's (deprecated) `tf.lite.Interpreter`: `--backend tensorflow` for .tflite.

    One interpreter behind a lock, one image at a time; the litert backend is the fast path for `.tflite` files.
    """

    def __init__(self, model_content: bytes, *, num_threads: int | None = None, embeddings: bool = False):
        tf = import_tensorflow()

        self._output, self._has_classifier, self._features = tflite.output_and_features(
            tf.lite.Interpreter,
            tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            model_content,
            embeddings=embeddings,
        )
        if self._features is not None:
            self._interpreter = tflite.preserving_tensors(
                tf.lite.Interpreter, model_content=model_content, num_threads=num_threads
            )
        else:
            self._interpreter = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        _, height, width, _ = self._input["shape"]
        self.input_size = (int(width), int(height))
        self._lock = threading.Lock()  # an interpreter is not thread-safe; Beam shares one between threads
        raw, features_out = self._invoke_one(probe_image(width, height)[0])
        self._softmax = self._has_classifier and tflite.needs_softmax(raw[None], self._output)
        self.num_classes = raw.shape[0] if self._has_classifier else 0
        embeddings_out = raw if not self._has_classifier else features_out
        self.embedding_size = None if embeddings_out is None else embeddings_out.shape[0]

    def infer(self, images: np.ndarray) -> ModelOutputs:
        # The interpreter's batch size is fixed by the file (1 here); resizing it fails under XNNPACK for this model.
        with self._lock:
            results = [self._invoke_one(image) for image in images]
        width = self._output["shape"][-1]
        raw = np.stack([scores for scores, _ in results]) if results else np.empty((0, width), np.float32)
        if not self._has_classifier:
            return ModelOutputs(None, raw)
        features = None
        if self._features is not None:
            features = np.stack([f for _, f in results]) if results else np.empty((0, self.embedding_size), np.float32)
        return ModelOutputs(softmax(raw) if self._softmax else raw, features)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.infer(images).scores

    def _invoke_one(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        self._interpreter.set_tensor(self._input["index"], tflite.model_input(image, self._input))
        self._interpreter.invoke()
        scores = tflite.dequantise(self._interpreter.get_tensor(self._output["index"])[0], self._output).ravel()
        if self._features is None:
            return scores, None
        features = self._interpreter.get_tensor(self._features["index"])[0]
        return scores, tflite.dequantise(features, self._features).ravel()
