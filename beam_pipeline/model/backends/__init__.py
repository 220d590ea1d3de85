"""The runtimes a model runs on, one module each: openvino (the default for SavedModels), tensorflow and litert.

Each is a `Classifier`, the contract below; a runtime's module is imported only when `model.load` needs it, so a
run never imports a runtime it does not use.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Classifier(Protocol):
    """A loaded image classifier."""

    input_size: tuple[int, int]  # (width, height)
    num_classes: int

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, height, width, 3] RGB -> float32 [N, num_classes] probabilities."""
