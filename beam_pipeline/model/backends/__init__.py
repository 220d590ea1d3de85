"""The runtimes a model runs on, one module each: openvino (the default for SavedModels), tensorflow and litert.

Each is a `Classifier`, the contract below; a runtime's module is imported only when `model.load` needs it, so a
run never imports a runtime it does not use. Loaded with `embeddings`, a classifier also returns, from the same
forward pass, the tensor that feeds the model's final classifier layer (found in the graph: the last convolution or
matrix product before the output, through reshapes, bias and softmax). A model whose output has no such layer before
it (a feature-vector model, e.g. TF Hub's `feature_vector` interface) has no classes: its output is the embedding.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np


class ModelOutputs(NamedTuple):
    """What one forward pass gives for N images."""

    scores: np.ndarray | None  # float32 [N, num_classes] probabilities; None for a model without a classifier
    embeddings: np.ndarray | None  # float32 [N, embedding_size]; None unless loaded with embeddings


class Classifier(Protocol):
    """A loaded image model."""

    input_size: tuple[int, int]  # (width, height)
    num_classes: int  # 0: a feature-vector model, no classifier
    embedding_size: int | None  # the embedding's length when it returns embeddings, else None

    def infer(self, images: np.ndarray) -> ModelOutputs:
        """uint8 [N, height, width, 3] RGB -> probabilities and/or embeddings, from one forward pass."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, height, width, 3] RGB -> float32 [N, num_classes] probabilities."""
