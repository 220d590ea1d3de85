"""The decode step: one input row in, either (row, model-ready pixels) or an error row out."""

from __future__ import annotations

import functools
import hashlib
import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from beam_pipeline import errors
from beam_pipeline.decode import reading
from beam_pipeline.decode.preprocess import DecodeSpec, PixelBudget, decode_image
from beam_pipeline.decode.reading import ReadPolicy
from beam_pipeline.records import MANIFEST_ERROR_KEY, METRICS_NAMESPACE, error_row
from beam_pipeline.worker import default_num_threads

FAILED_TAG = "failed"
# Pixels a worker process decodes at full size at once, over all its threads. Measured: one 80-megapixel RGBA PNG
# takes ~0.6 GB to decode and reduce, so this lets one such image (or several phone photos) through at a time and
# keeps the job under 1.5 GB where six of them on two threads took 3.9 GB.
DECODE_PIXEL_BUDGET = 100_000_000
PIXEL_BUDGET = PixelBudget(DECODE_PIXEL_BUDGET)


class DecodeImage(beam.DoFn):
    """Reads a row's URI with fsspec and decodes it with Pillow, resized for the model.

    Main output: (row with width/height, uint8 [H, W, 3]). Tagged output FAILED_TAG: finished error rows.

    Reads and decodes are separate, because waiting on storage and decoding need different concurrency: an image
    40 ms away takes ~2 ms to decode, so a thread that reads then decodes waits 95% of the time, and on Dataflow (2
    decode threads per one-core SDK process) that made the cores idle. So:

    - http(s), gs and s3 reads are coroutines on fsspec's own event loop (`reading.start_read`), where gcsfs, s3fs
      and fsspec's HTTP filesystem run every request anyway: up to --reads-in-flight of them per process
      (`decode/limits.py`; the bytes finished reads hold are budgeted too), at no thread each. When one finishes,
      its bytes go to the decode pool. Beam itself offers no async DoFn for batch Python, and its RunInference
      handlers batch model calls, not IO; fsspec's loop is the machinery these filesystems already share.
    - Local files (and other filesystems) are read and decoded on the pool, the cheap path they always had.
    - The decode pool has `threads` threads (default: the worker's cores); at most `in_flight` rows (default: 4
      per thread), plus --reads-in-flight, are pending per bundle, while the bundle's own thread goes on to batch
      and run the model. Beam's local runner runs a fused stage on one thread (its multi-threaded mode loses
      elements: docs/runner-data-loss.md). Pillow releases the GIL while decoding.

    Every pending row is emitted by finish_bundle, so a bundle commits only with all of its rows. Beam metrics are
    thread-local, so they are counted on the bundle's thread as results are emitted.
    """

    def __init__(
        self,
        read_policy: ReadPolicy,
        decode_spec: DecodeSpec,
        *,
        model_id: str,
        threads: int | None = None,
        in_flight: int | None = None,
    ):
        self._read_policy = read_policy
        self._decode_spec = decode_spec
        self._model_id = model_id
        self._threads = threads
        self._in_flight_limit = in_flight
        self._max_in_flight = 1
        self._read = Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "images_failed")
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[Future, tuple] = {}

    def setup(self) -> None:
        # Pillow's own decompression-bomb guard follows the flag too (it would otherwise stop at its own limit).
        Image.MAX_IMAGE_PIXELS = self._decode_spec.max_pixels
        threads = self._threads or default_num_threads()
        decoding = max(self._in_flight_limit or 4 * threads, threads)
        self._max_in_flight = decoding + self._read_policy.reads_in_flight
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def start_bundle(self) -> None:
        self._in_flight = {}
        self._finished: queue.SimpleQueue[Future] = queue.SimpleQueue()  # made per bundle: a queue does not pickle

    def process(self, row: dict, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam) -> Iterator:
        future = self._start(row)
        self._in_flight[future] = (timestamp, window)
        # Each row's future reports itself to this bundle's queue when it is done: waiting for the first of N
        # futures with concurrent.futures.wait locks and unlocks all N each time (~170 us of the bundle's thread per
        # row at 136 in flight, under the GIL the decode threads need).
        future.add_done_callback(self._finished.put)
        if len(self._in_flight) >= self._max_in_flight:
            done = [self._finished.get()]
            while not self._finished.empty():
                done.append(self._finished.get_nowait())
            yield from self._emit(done)

    def finish_bundle(self) -> Iterator:
        yield from self._emit(list(self._in_flight))

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def _emit(self, futures: Iterable[Future]) -> Iterator:
        """Outputs finished rows, each in the window and with the timestamp of the row it came from."""
        for future in futures:
            timestamp, window = self._in_flight.pop(future)
            tag, value = future.result()  # decode_row never raises
            self._read.inc()
            if tag == FAILED_TAG:
                self._failed.inc()
                Metrics.counter(METRICS_NAMESPACE, f"failed_{value['error_type']}").inc()
                yield beam.pvalue.TaggedOutput(FAILED_TAG, WindowedValue(value, timestamp, (window,)))
            else:
                yield WindowedValue(value, timestamp, (window,))

    def _start(self, row: dict) -> Future:
        """The row's outcome, to come: a remote read then a decode on the pool, or both on the pool."""
        assert self._pool is not None
        uri = row.get("uri")
        if MANIFEST_ERROR_KEY in row or not isinstance(uri, str) or reading.scheme_of(uri) not in reading.ASYNC_SCHEMES:
            return self._pool.submit(self.decode_row, row)
        outcome: Future = Future()
        try:
            read = reading.start_read(uri, self._read_policy)
        except Exception as exc:  # noqa: BLE001 - a URI refused before any request is its row's error
            outcome.set_result(self._error_row(row, exc, while_reading=True))
            return outcome
        read.add_done_callback(functools.partial(self._after_read, row, outcome))
        return outcome

    def _after_read(self, row: dict, outcome: Future, read: Future) -> None:
        """On fsspec's loop when a read ends: its bytes go to the decode pool, or the row fails."""
        try:
            self._hand_over(row, outcome, read)
        except BaseException as exc:  # a callback that raised would leave its row pending, and the bundle, forever
            if not outcome.done():
                outcome.set_result(self._error_row(row, exc, while_reading=False))
            raise

    def _hand_over(self, row: dict, outcome: Future, read: Future) -> None:
        try:
            data = read.result()
        except Exception as exc:  # noqa: BLE001 - every failure of one input becomes its error row
            outcome.set_result(self._error_row(row, exc, while_reading=True))
            return
        try:
            assert self._pool is not None
            self._pool.submit(self._decode_read, row, data, outcome)
        except RuntimeError as exc:  # the pool was shut down (teardown): nobody waits for this row any more
            reading.release_bytes(len(data), self._read_policy)
            outcome.set_result(self._error_row(row, exc, while_reading=False))

    def _decode_read(self, row: dict, data: bytes, outcome: Future) -> None:
        try:
            outcome.set_result(self._decoded(row, data))
        finally:
            reading.release_bytes(len(data), self._read_policy)

    def decode_row(self, row: dict) -> tuple[str | None, object]:
        """(None, (row with width/height and content identity, pixels)) or (FAILED_TAG, error row); every failure
        becomes a row, and a row whose bytes were read carries their sha256 whether or not they decode."""
        try:
            if MANIFEST_ERROR_KEY in row:
                row = dict(row)
                raise errors.ImageInputError(errors.BAD_MANIFEST_ROW, row.pop(MANIFEST_ERROR_KEY))
            data = reading.read_image_bytes(row["uri"], self._read_policy)
        except Exception as exc:  # noqa: BLE001 - every failure of one input becomes its error row
            return self._error_row(row, exc, while_reading=True)
        return self._decoded(row, data)

    def _decoded(self, row: dict, data: bytes) -> tuple[str | None, object]:
        row = {**row, "content_sha256": hashlib.sha256(data).hexdigest()}
        try:
            pixels, (width, height), phash = decode_image(data, self._decode_spec, budget=PIXEL_BUDGET)
        except Exception as exc:  # noqa: BLE001 - every failure of one input becomes its error row
            return self._error_row(row, exc, while_reading=False)
        return None, ({**row, "width": width, "height": height, "phash": phash}, pixels)

    def _error_row(self, row: dict, exc: Exception, *, while_reading: bool) -> tuple[str, dict]:
        error_type = errors.error_type_of(exc, while_reading=while_reading)
        return FAILED_TAG, error_row(row, exc, error_type=error_type, model_id=self._model_id)
