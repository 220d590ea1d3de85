"""Decoding memory is bounded: large images are reduced in bands, and a worker's threads share a pixel budget."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from beam_pipeline.decode.preprocess import DecodeSpec, PixelBudget, decode_image, reduce_in_bands


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "L"])
@pytest.mark.parametrize("factor", [2, 7, 19])
def test_reduce_in_bands_equals_pillows_reduce(mode, factor):
    rng = np.random.default_rng(factor)
    shape = (1003, 1505, len(mode)) if len(mode) > 1 else (1003, 1505)
    im = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)
    assert np.array_equal(np.asarray(reduce_in_bands(im, factor)), np.asarray(im.reduce(factor)))


def test_the_budget_never_lets_two_large_decodes_overlap():
    budget, running, overlaps = PixelBudget(100), [0], []

    def decode(pixels: int) -> None:
        with budget.reserve(pixels):
            running[0] += 1
            overlaps.append(running[0])
            time.sleep(0.02)
            running[0] -= 1

    threads = [threading.Thread(target=decode, args=(pixels,)) for pixels in [80, 80, 80, 500, 80]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(overlaps) == 5 and max(overlaps) == 1, "an image over the budget waits until it is alone, then runs"


def test_a_large_rgba_png_is_reduced_before_compositing_and_matches_a_full_decode():
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 255, (2400, 3200, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", compress_level=1)
    pixels, size, _ = decode_image(buffer.getvalue(), DecodeSpec((224, 224), "squash", 10**8))
    assert size == (3200, 2400) and pixels.shape == (224, 224, 3)
    # Reference: composite on white at full size, then the same bilinear resize.
    white = Image.new("RGBA", (3200, 2400), (255, 255, 255, 255))
    full = Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB")
    reference = np.asarray(full.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.int16)
    assert np.abs(pixels.astype(np.int16) - reference).mean() < 2.0
