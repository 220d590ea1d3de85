"""Decodes image bytes with Pillow into the model's input: RGB, a fixed size, uint8 (scaled to [0,1] by the model)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
from collections.abc import Iterator
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from beam_pipeline import errors

ResizeMode = Literal["squash", "center-crop"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("squash", "center-crop")
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
CENTER_CROP_FRACTION = 0.875  # the usual ImageNet evaluation crop: the central 87.5% of the shorter side
DRAFT_MARGIN = 2
BAND_ROWS = 256  # rows of a full-size image reduced at a time
WHITE = (255, 255, 255)
PHASH_SIZE = 32  # the perceptual hash's grayscale thumbnail, a side
PHASH_BITS_SIDE = 8  # its 8x8 lowest DCT frequencies: 64 bits
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# What ImageOps.exif_transpose does per EXIF orientation; applied here after reducing, on the small image.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """What the decode step makes of an image: the model's input `size` (width, height), how the image is fitted
    to it (--resize), and the most pixels an image may have (--max-image-pixels, checked on the header)."""

    size: tuple[int, int]
    resize: ResizeMode = "center-crop"
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def decode_image(
    data: bytes, spec: DecodeSpec, *, budget: PixelBudget | None = None
) -> tuple[np.ndarray, tuple[int, int], str]:
    """Returns (uint8 array [height, width, 3], (original width, original height), perceptual hash).

    The original size is the one a viewer shows: after the EXIF orientation is applied. The perceptual hash is of
    the whole image, taken from the already reduced pixels (see `perceptual_hash`). The full-size decode holds
    `budget` for its pixel count until the image is reduced, so a worker's threads never decode several huge
    images at once.
    """
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        format_name = _format_by_signature(data)
        if format_name:
            raise errors.ImageInputError(errors.CORRUPT_IMAGE, f"a {format_name} file whose header is broken") from None
        raise errors.ImageInputError(errors.NOT_AN_IMAGE, "Pillow recognises no image format in the bytes") from None
    size, resize, max_pixels = spec.size, spec.resize, spec.max_pixels
    width, height = im.size
    if width * height > max_pixels:
        # Checked on the header, before any pixel is decoded: a decompression bomb never allocates.
        raise errors.ImageInputError(
            errors.IMAGE_TOO_LARGE, f"{width}x{height} pixels is over --max-image-pixels ({max_pixels})"
        )
    orientation = im.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    # JPEGs are decoded scaled by 1/2, 1/4 or 1/8 (libjpeg's DCT scaling), never below what the resize needs, so a
    # 4000x3000 photo is not decoded at full size for a 224x224 input.
    needed = _draft_size(size, resize)
    im = _decode_jpeg(data, im, needed, budget) if _is_turbo_jpeg(im) else _decode_other(im, needed, budget)
    if orientation in _ORIENTATION_TRANSPOSE:
        im = im.transpose(_ORIENTATION_TRANSPOSE[orientation])
    rgb = to_rgb(im)
    if resize == "center-crop":
        whole = _scale_shorter_side(rgb, size)
        resized = _crop_center(whole, size)
    else:
        whole = resized = rgb.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8), (width, height), perceptual_hash(whole)


def _dct_rows(n: int, rows: int) -> np.ndarray:
    """The first `rows` rows of the n-point DCT-II matrix (unnormalised: `D @ x` is scipy.fftpack.dct(x, axis=0)
    halved, which a comparison with the median does not see)."""
    k, i = np.mgrid[0:rows, 0:n]
    return np.cos(np.pi * k * (2 * i + 1) / (2 * n)).astype(np.float32)


_PHASH_DCT = _dct_rows(PHASH_SIZE, PHASH_BITS_SIDE)


def perceptual_hash(im: Image.Image) -> str:
    """The standard 64-bit DCT perceptual hash (pHash) as 16 hex digits: grayscale, 32x32 (Lanczos), 2-D DCT, and
    the 8x8 lowest frequencies each compared with their median, row by row, most significant bit first.

    The steps and bit order of `imagehash.phash` (whose str() is this hex), written out rather than imported: a few
    lines of numpy on pixels the decode already holds, where imagehash would add PyWavelets and scipy to every
    worker for one function. `im` is the whole image as the resize step already reduced it (shorter side 256, or
    squashed to the model's size), and Lanczos runs after a box reduction (`reducing_gap`): the cost is a few percent
    of a decode, not the 60% that Lanczos over the decoded pixels took. Measured against imagehash on the full-size
    files in docs/embeddings.md (within 2 of 64 bits on the ImageNet sample).
    """
    gray = im.convert("L").resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    low = _PHASH_DCT @ np.asarray(gray, dtype=np.float32) @ _PHASH_DCT.T
    ranked = np.sort(low, axis=None)
    median = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2  # np.median's value, at a tenth its cost
    return np.packbits(low > median).tobytes().hex()


def hamming_distance(a: str, b: str) -> int:
    """Bits that differ between two perceptual hashes (hex strings)."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _is_turbo_jpeg(im: Image.Image) -> bool:
    """A JPEG that libjpeg-turbo decodes straight to RGB: YCbCr (Pillow's mode RGB) or grayscale, not CMYK/YCCK."""
    return im.format == "JPEG" and im.mode in ("RGB", "L")


def _decode_jpeg(data: bytes, im: Image.Image, needed: tuple[int, int], budget: PixelBudget | None) -> Image.Image:
    """The JPEG decoded to RGB by libjpeg-turbo through simplejpeg, at the DCT scale Pillow's draft mode would pick.

    Pillow's own JPEG decoder is libjpeg-turbo too; simplejpeg calls it once on the whole buffer, without Pillow's
    chunked feeding from Python, and releases the GIL while it decodes: measured more images/s on two decode threads
    (docs/performance.md), with the same pixels (the same decoder, scale and colour conversion). Corrupt or truncated
    data raises ValueError (`strict`), a CorruptImage row.
    """
    scale = _dct_scale(im.size, needed)
    width, height = (-(-side // scale) for side in im.size)  # libjpeg's scaled size, rounded up
    with budget.reserve(width * height) if budget else contextlib.nullcontext():
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=width, min_height=height)
    return Image.fromarray(pixels)


def _decode_other(im: Image.Image, needed: tuple[int, int], budget: PixelBudget | None) -> Image.Image:
    """Any other image decoded by Pillow (CMYK JPEGs in draft mode), reduced right after to no less than `needed`."""
    im.draft("RGB", needed)
    with budget.reserve(im.width * im.height) if budget else contextlib.nullcontext():
        im.load()  # truncated or corrupt data raises here
        # Other formats decode at full size; reduce (a box filter, by a whole factor) to no less than the draft size
        # at once, so the conversions below work on the small image.
        factor = min(im.width // needed[0], im.height // needed[1])
        if factor >= 2:
            im = reduce_in_bands(_reducible(im), factor)
    return im


def _dct_scale(size: tuple[int, int], needed: tuple[int, int]) -> int:
    """The largest of 8, 4, 2 and 1 that keeps `size` divided by it no smaller than `needed` (Pillow's draft rule)."""
    most = min(size[0] // needed[0], size[1] // needed[1])
    return next((scale for scale in (8, 4, 2) if most >= scale), 1)


class PixelBudget:
    """Pixels that a worker process's threads may hold decoded at full size at once, shared by all of them.

    An image larger than the whole budget waits until it is alone, then runs: the budget bounds concurrency, not
    which images can be decoded (--max-image-pixels does that).
    """

    def __init__(self, pixels: int):
        self._capacity = pixels
        self._free = pixels
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        wanted = min(pixels, self._capacity)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= wanted)
            self._free -= wanted
        try:
            yield
        finally:
            with self._changed:
                self._free += wanted
                self._changed.notify_all()


def reduce_in_bands(im: Image.Image, factor: int) -> Image.Image:
    """Image.reduce(factor), a band of rows at a time: for RGBA and LA, Pillow's reduce first copies the whole
    image to premultiplied alpha, which for an 80-megapixel PNG is another 320 MB; a band's copy is a few MB."""
    out = Image.new(im.mode, (-(-im.width // factor), -(-im.height // factor)))
    rows = factor * max(1, BAND_ROWS // factor)
    for top in range(0, im.height, rows):
        out.paste(im.crop((0, top, im.width, min(top + rows, im.height))).reduce(factor), (0, top // factor))
    return out


def _reducible(im: Image.Image) -> Image.Image:
    """`im` in a mode Image.reduce takes (it refuses 1, P and the 16-bit integer modes)."""
    if im.mode == "1":
        return im.convert("L")
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in _SIXTEEN_BIT_MODES:
        return im.convert("I")
    return im


def _format_by_signature(data: bytes) -> str | None:
    """The image format whose magic bytes `data` starts with, by Pillow's own plugin checks."""
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        if accept is not None and accept(data[:16]):
            return name
    return None


def to_rgb(im: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB: alpha is composited on white, 16-bit samples keep their top 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(im)
        if samples.max(initial=0) > 255:
            samples = samples >> 8
        return Image.fromarray(samples.astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _draft_size(size: tuple[int, int], resize: ResizeMode) -> tuple[int, int]:
    """The smallest size a JPEG may be decoded to (DCT scaling): twice what the resize starts from.

    The margin keeps the final bilinear resize averaging over real pixels, so labels match a full decode. Measured
    on 2,000 camera-like photos (benchmarks/corpus.py's mixed corpus, 0.2-12 MP), top-1 equal to today's decode:
    margin 1: 98.2%, 1.5: 99.4% (decoding 1024x768 photos at half size), 2: 100%; with no margin one of the 100
    ImageNet sample images changes its top-1 label.
    """
    if resize == "center-crop":
        side = DRAFT_MARGIN * round(max(size) / CENTER_CROP_FRACTION)
        return side, side
    return DRAFT_MARGIN * size[0], DRAFT_MARGIN * size[1]


def _scale_shorter_side(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The whole image with its shorter side resized to size / CENTER_CROP_FRACTION (256 for 224), never smaller
    than `size`: the first half of the center crop (`_crop_center` takes the central `size` of it).

    This order (resize, then crop) reproduces the reference accuracy figures in ../shared/README.md. Resizing only
    the crop's source box (`resize(size, box=...)`, the same per-axis scale) was measured 23% less decode CPU on
    500x375 photos, with the same float-model labels, but it moves 0.13% of pixel values by one level, which moves
    the 8-bit TFLite model's top-5 (its scores tie at multiples of 1/256) from 97% to 94% on the ImageNet sample:
    not used, so that every model keeps its labels.
    """
    width, height = im.size
    short_side = round(max(size) / CENTER_CROP_FRACTION)
    scale = short_side / min(width, height)
    new_width, new_height = max(size[0], round(width * scale)), max(size[1], round(height * scale))
    return im.resize((new_width, new_height), Image.Resampling.BILINEAR)


def _crop_center(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    left, top = (im.width - size[0]) // 2, (im.height - size[1]) // 2
    return im.crop((left, top, left + size[0], top + size[1]))
