"""The decode step: one input row in, either (row, model-ready pixels) or an error row out."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from PIL import Image

from beam_pipeline import errors
from beam_pipeline.inputs import MANIFEST_ERROR_KEY
from beam_pipeline.preprocess import ResizeMode, decode_image
from beam_pipeline.reading import read_image_bytes
from beam_pipeline.records import METRICS_NAMESPACE, error_row

FAILED_TAG = "failed"


class DecodeImage(beam.DoFn):
    """Reads a row's URI with fsspec and decodes it with Pillow, resized for the model.

    Main output: (row with width/height, uint8 [H, W, 3]). Tagged output FAILED_TAG: finished error rows.
    Pillow releases the GIL while decoding, so several threads of one worker decode in parallel.
    """

    def __init__(
        self,
        *,
        size: tuple[int, int],
        resize: ResizeMode,
        max_bytes: int,
        max_pixels: int,
        allowed_schemes: tuple[str, ...],
        allow_private_hosts: bool,
        read_retries: int,
        read_timeout: float,
        model_id: str,
    ):
        self._size = size
        self._resize = resize
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._allowed_schemes = allowed_schemes
        self._allow_private_hosts = allow_private_hosts
        self._read_retries = read_retries
        self._read_timeout = read_timeout
        self._model_id = model_id
        self._read = Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "images_failed")

    def setup(self) -> None:
        # Pillow's own decompression-bomb guard follows the flag too (it would otherwise stop at its own limit).
        Image.MAX_IMAGE_PIXELS = self._max_pixels

    def process(self, row: dict) -> Iterator:
        self._read.inc()
        stage_is_read = True
        try:
            if MANIFEST_ERROR_KEY in row:
                row = dict(row)
                raise errors.ImageInputError(errors.BAD_MANIFEST_ROW, row.pop(MANIFEST_ERROR_KEY))
            data = read_image_bytes(
                row["uri"],
                max_bytes=self._max_bytes,
                allowed_schemes=self._allowed_schemes,
                retries=self._read_retries,
                timeout=self._read_timeout,
                allow_private_hosts=self._allow_private_hosts,
            )
            stage_is_read = False
            pixels, (width, height) = decode_image(
                data, size=self._size, resize=self._resize, max_pixels=self._max_pixels
            )
        except Exception as exc:  # noqa: BLE001 - every failure of one input becomes its error row
            error_type = errors.error_type_of(exc, while_reading=stage_is_read)
            failed = error_row(row, exc, error_type=error_type, model_id=self._model_id)
            self._failed.inc()
            Metrics.counter(METRICS_NAMESPACE, f"failed_{failed['error_type']}").inc()
            yield beam.pvalue.TaggedOutput(FAILED_TAG, failed)
            return
        yield {**row, "width": width, "height": height}, pixels
