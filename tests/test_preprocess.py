"""The decode step's arithmetic: JPEGs decoded by libjpeg-turbo directly give Pillow's pixels, at Pillow's draft
scale; CMYK JPEGs stay on Pillow; truncated JPEGs are corrupt images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import shared_dir
from images import jpeg_bytes, photo
from PIL import Image

from beam_pipeline import errors
from beam_pipeline.decode import preprocess
from beam_pipeline.decode.preprocess import DecodeSpec, decode_image

PHOTO = photo(shared_dir())


@pytest.fixture(autouse=True)
def pillows_own_pixel_limit(monkeypatch):
    """The decode step sets Pillow's process-wide limit from --max-image-pixels (other tests' runs leave theirs);
    these images are up to 61 megapixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**8)


def _pillow_draft_decode(data: bytes, needed: tuple[int, int]) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", needed)
    return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("size", [(300, 200), (1100, 700), (2100, 1500), (4100, 3100)])  # DCT scale 1, 2, 4, 8
@pytest.mark.parametrize("kind", ["ycbcr-420", "ycbcr-444", "progressive", "gray"])
def test_a_jpeg_decodes_to_the_pixels_pillow_decodes(size, kind):
    im = PHOTO.resize(size).convert("L") if kind == "gray" else PHOTO.resize(size)
    options = {"ycbcr-444": {"subsampling": 0}, "progressive": {"progressive": True}}.get(kind, {})
    data = jpeg_bytes(im, **options)
    opened = Image.open(io.BytesIO(data))
    assert preprocess._is_turbo_jpeg(opened)
    needed = (512, 512)
    turbo = np.asarray(preprocess._decode_jpeg(data, opened, needed, None))
    np.testing.assert_array_equal(turbo, _pillow_draft_decode(data, needed))


@pytest.mark.parametrize("width", [300, 511, 512, 1023, 1024, 2047, 2048, 4095, 4096, 9000])
@pytest.mark.parametrize("needed", [(512, 512), (448, 448)])
def test_the_dct_scale_is_pillows_draft_scale(width, needed):
    size = (width, width * 3 // 4)
    im = Image.open(io.BytesIO(jpeg_bytes(Image.new("RGB", size))))
    im.draft("RGB", needed)
    assert preprocess._dct_scale(size, needed) == -(-width // im.width)


def test_cmyk_jpegs_are_decoded_by_pillow():
    data = jpeg_bytes(PHOTO.convert("CMYK"))
    assert not preprocess._is_turbo_jpeg(Image.open(io.BytesIO(data)))
    pixels, size, _ = decode_image(data, DecodeSpec((224, 224)))
    assert pixels.shape == (224, 224, 3) and size == PHOTO.size


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_a_truncated_jpeg_is_a_corrupt_image(cut):
    data = jpeg_bytes(PHOTO.resize((1100, 700)))
    with pytest.raises(ValueError) as raised:
        decode_image(data[: int(len(data) * cut)], DecodeSpec((224, 224)))
    assert errors.error_type_of(raised.value, while_reading=False) == errors.CORRUPT_IMAGE


def test_the_perceptual_hash_compares_with_numpys_median():
    """The hash's median (of its 64 DCT values) is np.median's value, taken by one sort."""
    for seed in range(20):
        im = Image.merge("RGB", [Image.effect_noise((341, 256), 30 + seed + 10 * i) for i in range(3)])
        gray = im.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
        low = preprocess._PHASH_DCT @ np.asarray(gray, dtype=np.float32) @ preprocess._PHASH_DCT.T
        assert preprocess.perceptual_hash(im) == np.packbits(low > np.median(low)).tobytes().hex()
