"""Fast tests of one transform at a time, on Beam's TestPipeline with a fake model (no TensorFlow).

LabelRows runs as the job builds it; only the model behind its ImageClassifierHandler is replaced (see
FakeClassifierHandler). Every output row is checked against the output schema, and the URIs out against the URIs in.
"""

from __future__ import annotations

import collections
import datetime
import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from PIL import Image

from beam_pipeline import errors, pipeline
from beam_pipeline.decode import FAILED_TAG, DecodeImage
from beam_pipeline.finalize import RowStats, reconcile
from beam_pipeline.handler import ImageClassifierHandler
from beam_pipeline.incremental import SkipLabelled
from beam_pipeline.inputs import MANIFEST_ERROR_KEY
from beam_pipeline.job import JobConfig
from beam_pipeline.models import ModelRef
from beam_pipeline.schema import STATUS_ERROR, STATUS_OK, output_schema

MODEL = ModelRef("fake://classifier", "savedmodel")
LABELS = [f"class {i}" for i in range(256)]
SIZE = (16, 12)  # the model's input (width, height)
TOP_K = 3
# The fake model's probabilities for classes v, v + 1 and v + 2 of an image whose first pixel is v.
TOP_SCORES = (0.6, 0.3, 0.1)
POISON = frozenset(range(10, 16))  # the fake model raises on a batch holding an image whose first pixel is one of these
CARRIED = pa.schema([pa.field("id", pa.int64())])


# --- inputs -------------------------------------------------------------------------------------------------------


def write_png(path: Path, first_pixel: int, size: tuple[int, int]) -> str:
    """A PNG of one colour whose red value is `first_pixel` (lossless: the decoded pixels keep it exactly)."""
    Image.new("RGB", size, (first_pixel, 255 - first_pixel, 7)).save(path)
    return str(path)


def good_images(folder: Path, first_pixels: Iterable[int]) -> dict[str, tuple[int, tuple[int, int]]]:
    """PNGs of various sizes: uri -> (first pixel, (width, height))."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, value in enumerate(first_pixels):
        size = (20 + i % 7, 9 + i % 5)
        images[write_png(folder / f"good_{value}.png", value, size)] = (value, size)
    return images


def broken_inputs(folder: Path) -> dict[str | None, str]:
    """Rows that cannot be decoded: uri -> the error type each must end as (None: a manifest row that did not parse)."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(noise).save(png, "PNG")
    files = {
        "random.png": (noise.tobytes()[:3000], errors.NOT_AN_IMAGE),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], errors.CORRUPT_IMAGE),
        "empty.png": (b"", errors.EMPTY_FILE),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {
        **{str(folder / name): error_type for name, (_, error_type) in files.items()},
        str(folder / "missing.png"): errors.NOT_FOUND,
        None: errors.BAD_MANIFEST_ROW,
    }


def input_rows(uris: Iterable[str | None]) -> list[dict]:
    """Rows as ExpandInputs makes them, with a carried `id`; a None uri is a manifest row that did not parse."""
    rows = []
    for i, uri in enumerate(uris):
        row = {"uri": uri, "id": i}
        if uri is None:
            row[MANIFEST_ERROR_KEY] = "line 7: not valid JSON"
        rows.append(row)
    return rows


# --- row invariants -----------------------------------------------------------------------------------------------


def _python_type_fits(value: object, arrow_type: pa.DataType) -> bool:
    """Whether a Python value is of the kind `arrow_type` holds, recursively.

    pa.Table.from_pylist coerces silently (12.0 into int32, a naive datetime into a UTC timestamp, a struct with a
    missing or extra key), so the kinds are checked here first; from_pylist then checks ranges.
    """
    if value is None:
        return True
    if pa.types.is_string(arrow_type):
        return isinstance(value, str)
    if pa.types.is_integer(arrow_type):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if pa.types.is_floating(arrow_type):
        return isinstance(value, (float, np.floating))
    if pa.types.is_timestamp(arrow_type):
        return isinstance(value, datetime.datetime) and value.utcoffset() == datetime.timedelta(0)
    if pa.types.is_list(arrow_type):
        return isinstance(value, list) and all(_python_type_fits(v, arrow_type.value_type) for v in value)
    if pa.types.is_struct(arrow_type):
        fields = {f.name: f.type for f in arrow_type}
        return (
            isinstance(value, dict)
            and set(value) == set(fields)
            and all(_python_type_fits(value[k], t) for k, t in fields.items())
        )
    raise AssertionError(f"no check for {arrow_type}")


def valid_rows(
    uris_in: Iterable[str | None], schema: pa.Schema, check_row: Callable[[dict], None] | None = None
) -> Callable[[list[dict]], None]:
    """A matcher for assert_that: each input URI exactly once, every row of `schema`'s columns and types, errors in
    `ExceptionType: message` form; then `check_row` on each row."""
    expected_uris = collections.Counter(list(uris_in))

    def match(rows: list[dict]) -> None:
        got = collections.Counter(row.get("uri") for row in rows)
        if got != expected_uris:
            raise BeamAssertException(
                f"uris out != uris in: missing {dict(expected_uris - got)}, extra {dict(got - expected_uris)}"
            )
        for row in rows:
            if set(row) != set(schema.names):
                raise BeamAssertException(f"columns {sorted(row)} are not the schema's {schema.names}")
            for field in schema:
                if row[field.name] is None and not field.nullable:
                    raise BeamAssertException(f"{field.name} is null in {row}")
                if not _python_type_fits(row[field.name], field.type):
                    raise BeamAssertException(f"{field.name}={row[field.name]!r} is not {field.type}")
            _check_status(row)
            if check_row is not None:
                check_row(row)
        try:
            pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise BeamAssertException(f"rows do not convert to the output schema: {exc}") from exc

    return match


def _check_status(row: dict) -> None:
    if row["status"] == STATUS_OK:
        ok = row["error_type"] is None and row["error"] is None and bool(row["top_k"])
        ok = ok and row["label"] == row["top_k"][0]["label"] and row["score"] == row["top_k"][0]["score"]
        ok = ok and row["width"] is not None and row["height"] is not None
    elif row["status"] == STATUS_ERROR:
        # `error` is `ExceptionType: message` (for ImageInputError the type is its error type): a CapWords name first,
        # never the repr of a tuple or of an exception.
        ok = row["error_type"] is not None and re.match(r"[A-Z]\w*: ", row["error"] or "") is not None
        ok = ok and row["label"] is None and row["score"] is None and row["top_k"] is None
    else:
        ok = False
    if not ok:
        raise BeamAssertException(f"not a consistent {row['status']!r} row: {row}")


def test_row_matcher_fails_on_lost_duplicated_or_mistyped_rows():
    """The matcher the tests below rely on rejects each kind of bad output (so they can fail)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ok = {
        "uri": "a.png", "id": 1, "status": "ok", "error_type": None, "error": None, "label": "cat", "score": 0.5,
        "top_k": [{"class_id": 3, "label": "cat", "score": 0.5}], "width": 4, "height": 3, "model": "m",
        "labelled_at": now,
    }  # fmt: skip
    error = {**ok, "uri": "b.png", "status": "error", "error_type": "NotFound", "error": "FileNotFoundError: b.png"}
    error.update(label=None, score=None, top_k=None, width=None, height=None)
    match = valid_rows(["a.png", "b.png"], output_schema(CARRIED))
    match([ok, error])
    bad_outputs = {
        "lost": [ok],
        "duplicated": [ok, ok, error],
        "float width": [{**ok, "width": 4.0}, error],
        "int in a string column": [{**ok, "label": 3}, error],
        "naive timestamp": [{**ok, "labelled_at": now.replace(tzinfo=None)}, error],
        "top_k without score": [{**ok, "top_k": [{"class_id": 3, "label": "cat"}]}, error],
        "missing column": [{k: v for k, v in ok.items() if k != "height"}, error],
        "extra column": [{**ok, MANIFEST_ERROR_KEY: "x"}, error],
        "null status": [{**ok, "status": None}, error],
        "width over int32": [{**ok, "width": 2**40}, error],
        "tuple repr as error": [ok, {**error, "error": "tuple: (<class 'RuntimeError'>, ...)"}],
    }
    for what, rows in bad_outputs.items():
        with pytest.raises(BeamAssertException):
            match(rows)
            pytest.fail(f"{what} passed the matcher")


# --- DecodeImage --------------------------------------------------------------------------------------------------


def decode_image(**kwargs) -> DecodeImage:
    settings = dict(
        size=SIZE,
        resize="squash",
        max_bytes=1 << 20,
        max_pixels=10**7,
        allowed_schemes=("file",),
        allow_private_hosts=False,
        read_retries=0,
        model_id=MODEL.model_id,
    )
    return DecodeImage(**{**settings, **kwargs})


@pytest.mark.parametrize(
    "threads, in_flight",
    [(1, 1), (2, 3), (None, None), (2, 1000)],
    ids=["process-only", "process-and-finish-bundle", "defaults", "finish-bundle-only"],
)
def test_decode_sends_every_row_once_to_decoded_or_failed(tmp_path, threads, in_flight):
    """45 rows through a pool of `threads` with at most `in_flight` at a time. Results are emitted in process() once
    `in_flight` rows are pending (with one, every row is emitted there) and in finish_bundle() for the rest (with
    1000, every row is emitted there)."""
    good = good_images(tmp_path / "good", range(100, 140))
    broken = broken_inputs(tmp_path / "broken")
    rows = input_rows([*good, *broken])

    with test_pipeline.TestPipeline() as p:
        out = (
            p
            | beam.Create(rows)
            | beam.ParDo(decode_image(threads=threads, in_flight=in_flight)).with_outputs(FAILED_TAG, main="decoded")
        )
        decoded = out.decoded | "Summarise" >> beam.MapTuple(_decoded_summary)
        failed = out[FAILED_TAG] | "ErrorTypes" >> beam.Map(
            lambda row: (row["uri"], row["id"], row["error_type"], row["model"], MANIFEST_ERROR_KEY in row)
        )
        all_uris = (
            out.decoded | "DecodedUris" >> beam.MapTuple(lambda row, _: row["uri"]),
            out[FAILED_TAG] | "FailedUris" >> beam.Map(lambda row: row["uri"]),
        )
        ids = {row["uri"]: row["id"] for row in rows}
        assert_that(
            decoded,
            equal_to(
                [
                    (uri, ids[uri], w, h, (SIZE[1], SIZE[0], 3), "uint8", value, value)
                    for uri, (value, (w, h)) in good.items()
                ]
            ),
            label="decoded",
        )
        assert_that(
            failed,
            equal_to([(uri, ids[uri], error_type, MODEL.model_id, False) for uri, error_type in broken.items()]),
            label="failed",
        )
        assert_that(all_uris | beam.Flatten(), equal_to([row["uri"] for row in rows]), label="each row once")
        assert_that(
            out[FAILED_TAG],
            valid_rows(broken, output_schema(CARRIED), _error_row_checker(broken)),
            label="failed rows are output rows",
        )


def _decoded_summary(row: dict, pixels: np.ndarray) -> tuple:
    """What the decoded output must hold: the row with its original size, and uniform model-sized uint8 pixels."""
    red = pixels[..., 0]
    return (
        row["uri"],
        row["id"],
        row["width"],
        row["height"],
        pixels.shape,
        pixels.dtype.name,
        int(red[0, 0]),
        int(red.min()),
    )


def _error_row_checker(expected: dict[str | None, str]) -> Callable[[dict], None]:
    def check(row: dict) -> None:
        if row["error_type"] != expected[row["uri"]]:
            raise BeamAssertException(f"{row['uri']}: {row['error_type']} is not {expected[row['uri']]}")
        if row["uri"] is None and row["error"] != "BadManifestRow: line 7: not valid JSON":
            raise BeamAssertException(f"the manifest's problem is lost: {row['error']}")

    return check


@pytest.mark.parametrize("in_flight", [3, 1000])
def test_decode_keeps_each_rows_timestamp_and_window(tmp_path, in_flight):
    """Results are emitted later than their rows arrive (from the pool, or in finish_bundle), as WindowedValues
    carrying the row's own timestamp and window."""
    good = good_images(tmp_path, range(100, 112))
    broken = str(tmp_path / "missing.png")
    uris = [*good, broken]
    stamped = [TimestampedValue({"uri": uri, "id": i}, 10 * i + 3) for i, uri in enumerate(uris)]

    with test_pipeline.TestPipeline() as p:
        out = (
            p
            | beam.Create(stamped)
            | beam.WindowInto(FixedWindows(10))
            | beam.ParDo(decode_image(threads=2, in_flight=in_flight)).with_outputs(FAILED_TAG, main="decoded")
        )
        placed = (
            out.decoded | beam.MapTuple(lambda row, _: row["id"]),
            out[FAILED_TAG] | beam.Map(lambda row: row["id"]),
        ) | beam.Flatten()
        assert_that(
            placed,
            lambda values: _check_placement(values, len(uris)),
            reify_windows=True,
        )


def _check_placement(values: list, count: int) -> None:
    placed = sorted((v.value, v.timestamp.micros // 10**6, list(v.windows)) for v in values)
    expected = [(i, 10 * i + 3, [IntervalWindow(10 * i, 10 * i + 10)]) for i in range(count)]
    if placed != expected:
        raise BeamAssertException(f"rows moved: {placed} != {expected}")


# --- SkipLabelled -------------------------------------------------------------------------------------------------


def write_previous_output(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """An earlier run's shard: (uri, status, model) rows, written with the job's own output schema."""
    now = datetime.datetime.now(datetime.timezone.utc)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [{"uri": uri, "status": status, "model": model, "labelled_at": now} for uri, status, model in rows],
        schema=output_schema(),
    )
    pq.write_table(table, path)


@pytest.mark.parametrize("relabel_errors", [False, True])
def test_skip_labelled_drops_rows_done_with_the_same_model(tmp_path, relabel_errors):
    write_previous_output(
        tmp_path / "dt=1" / "labels-00000-of-00002.parquet",
        [("done.png", "ok", MODEL.model_id), ("failed.png", "error", MODEL.model_id), ("done.png", "ok", "other")],
    )
    write_previous_output(
        tmp_path / "dt=2" / "labels-00001-of-00002.parquet",
        [("done.png", "ok", MODEL.model_id), ("other_model.png", "ok", "other")],
    )
    rows = input_rows(["done.png", "new.png", "failed.png", "other_model.png", "done.png", "new2.png"])
    skipped = ["done.png", "done.png"] + ([] if relabel_errors else ["failed.png"])
    todo = [row for row in rows if row["uri"] not in skipped]

    with test_pipeline.TestPipeline() as p:
        kept, skipped_count = (
            p
            | beam.Create(rows)
            | SkipLabelled(str(tmp_path / "dt=*" / "labels-*.parquet"), MODEL.model_id, relabel_errors)
        )
        assert_that(kept, equal_to(todo), label="rows to label")
        assert_that(skipped_count, equal_to([len(skipped)]), label="count skipped")


def test_skip_labelled_with_no_earlier_output_keeps_every_row(tmp_path):
    rows = input_rows(["a.png", "b.png", "a.png"])
    with test_pipeline.TestPipeline() as p:
        kept, skipped_count = (
            p | beam.Create(rows) | SkipLabelled(str(tmp_path / "none" / "*.parquet"), MODEL.model_id, False)
        )
        assert_that(kept, equal_to(rows), label="rows to label")
        assert_that(skipped_count, equal_to([0]), label="count skipped")


# --- LabelRows with a fake model ------------------------------------------------------------------------------------


class ModelCrashed(Exception):
    """An exception type of the model's own (its traceback names it with its module)."""


def model_exception(first_pixels: list[int]) -> Exception | None:
    """What the fake model raises on a batch: None unless an image's first pixel is in POISON."""
    poisoned = sorted(POISON.intersection(first_pixels))
    if not poisoned:
        return None
    kind = ModelCrashed if poisoned[0] % 2 else RuntimeError
    return kind(f"model failed on a batch with first pixels {sorted(first_pixels)}")


class FakeClassifier:
    """Probabilities TOP_SCORES for classes v, v + 1, v + 2 of an image whose first pixel is v."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        first_pixels = [int(v) for v in images[:, 0, 0, 0]]
        exc = model_exception(first_pixels)
        if exc is not None:
            raise exc
        probabilities = np.zeros((len(images), len(LABELS)), np.float32)
        for i, value in enumerate(first_pixels):
            for rank, score in enumerate(TOP_SCORES):
                probabilities[i, (value + rank) % len(LABELS)] = score
        return probabilities


class FakeClassifierHandler(ImageClassifierHandler):
    """The job's handler (batching, top-k, labels) with the TensorFlow model replaced by FakeClassifier."""

    def load_model(self) -> FakeClassifier:
        return FakeClassifier()


def job_config(**changes) -> JobConfig:
    settings = dict(
        inputs=[],
        uri_column="uri",
        carried=CARRIED,
        output="unused",
        overwrite=False,
        run_id="test-run",
        started_at=datetime.datetime.now(datetime.timezone.utc),
        model=MODEL,
        backend="fake",
        labels=LABELS,
        input_size=SIZE,
        top_k=TOP_K,
        resize="squash",
        min_batch_size=1,
        max_batch_size=4,
        max_bytes=1 << 20,
        max_image_pixels=10**7,
        allowed_schemes=("file",),
        allow_private_hosts=False,
        read_retries=0,
        max_error_fraction=1.0,
        skip_labelled=None,
        relabel_errors=False,
        large_model=False,
    )
    return JobConfig(**{**settings, **changes})


@pytest.fixture
def fake_model(monkeypatch):
    """LabelRows builds FakeClassifierHandler where the job builds ImageClassifierHandler.

    Patching the one name keeps LabelRows.expand as the job runs it (decode, RunInference with its dead-letter
    output, error rows, Flatten), where rebuilding that graph here would test a copy of it.
    """
    monkeypatch.setattr(pipeline, "ImageClassifierHandler", FakeClassifierHandler)


def _labelled_row_checker(good: dict[str, tuple[int, tuple[int, int]]], broken: dict[str | None, str]):
    """Labelled rows carry their own image's classes and size; error rows the type their input must end as."""

    def check(row: dict) -> None:
        if row["status"] == STATUS_ERROR:
            if row["uri"] in broken and row["error_type"] != broken[row["uri"]]:
                raise BeamAssertException(f"{row['uri']}: {row['error_type']} is not {broken[row['uri']]}")
            return
        value, size = good[row["uri"]]
        top_k = [
            {"class_id": value + rank, "label": LABELS[value + rank], "score": float(np.float32(score))}
            for rank, score in enumerate(TOP_SCORES)
        ]
        got = (row["top_k"], row["score"], (row["width"], row["height"]), row["model"])
        if got != (top_k, top_k[0]["score"], size, MODEL.model_id):
            raise BeamAssertException(f"{row['uri']}: {got} is not {(top_k, size)}")

    return check


def test_label_rows_gives_each_input_one_valid_row(tmp_path, fake_model):
    good = good_images(tmp_path / "good", range(100, 130))
    broken = broken_inputs(tmp_path / "broken")
    rows = input_rows([*good, *broken, next(iter(good))])  # a duplicate input stays a duplicate output

    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(rows) | pipeline.LabelRows(job_config(), decode_in_flight=3)
        assert_that(
            out, valid_rows([r["uri"] for r in rows], output_schema(CARRIED), _labelled_row_checker(good, broken))
        )
        assert_that(
            out | beam.Map(lambda row: (row["id"], row["status"])),
            equal_to([(row["id"], STATUS_OK if row["uri"] in good else STATUS_ERROR) for row in rows]),
            label="ids carried",
        )


@pytest.mark.parametrize("min_batch_size, max_batch_size", [(1, 1), (2, 4)])
def test_every_row_of_a_batch_the_model_raises_on_is_an_inference_error_row(
    tmp_path, fake_model, min_batch_size, max_batch_size
):
    good = good_images(tmp_path, [*sorted(POISON), *range(100, 130)])
    first_pixel = {uri: value for uri, (value, _) in good.items()}
    job = job_config(min_batch_size=min_batch_size, max_batch_size=max_batch_size)

    def check_failed_batches(rows: list[dict]) -> None:
        """Each distinct error is one failed batch: the rows carrying it are exactly the images it names."""
        batches = collections.defaultdict(set)
        for row in rows:
            if row["status"] == STATUS_OK:
                continue
            if row["error_type"] != errors.INFERENCE_ERROR:
                raise BeamAssertException(f"{row['uri']}: {row['error_type']} ({row['error']})")
            batches[row["error"]].add(first_pixel[row["uri"]])
        if not POISON <= set().union(*batches.values()):
            raise BeamAssertException(f"an image the model raises on was labelled: {batches}")
        for error, values in batches.items():
            expected = model_exception(sorted(values))
            if error != f"{type(expected).__name__}: {expected}":
                raise BeamAssertException(f"{error!r} is not the error of the batch holding {sorted(values)}")
        if max_batch_size == 1 and {len(v) for v in batches.values()} != {1}:
            raise BeamAssertException(f"batches of one expected: {batches}")
        if max_batch_size == 1 and {e.split(":")[0] for e in batches} != {"RuntimeError", "ModelCrashed"}:
            raise BeamAssertException(f"both exception types expected: {sorted(batches)}")
        if min_batch_size > 1 and max(map(len, batches.values()), default=0) < 2:
            raise BeamAssertException(f"no failed batch held a good image too, so this tested nothing: {batches}")

    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(input_rows(good)) | pipeline.LabelRows(job, decode_in_flight=3)
        checker = _labelled_row_checker(good, broken={})
        assert_that(out, valid_rows(good, output_schema(CARRIED), checker), label="valid rows")
        assert_that(out, check_failed_batches, label="failed batches")


# --- RowStats and reconcile -----------------------------------------------------------------------------------------


def test_row_stats_counts_statuses_error_types_and_top_labels():
    labels = [f"label {i}" for i in range(12) for _ in range(i + 1)]  # label i on i + 1 rows
    ok_rows = [{"status": STATUS_OK, "error_type": None, "label": label} for label in labels]
    error_types = ["NotFound"] * 4 + ["CorruptImage"] * 3 + [errors.INFERENCE_ERROR]
    error_rows = [{"status": STATUS_ERROR, "error_type": t, "label": None} for t in error_types]
    rows = ok_rows + error_rows
    stats = RowStats()

    def accumulate(part: list[dict]) -> dict:
        acc = stats.create_accumulator()
        for row in part:
            acc = stats.add_input(acc, row)
        return acc

    expected = {
        "rows": len(rows),
        "status_counts": {STATUS_OK: len(ok_rows), STATUS_ERROR: len(error_rows)},
        "errors_by_type": {"CorruptImage": 3, errors.INFERENCE_ERROR: 1, "NotFound": 4},
        "top_labels": [(f"label {i}", i + 1) for i in range(11, 1, -1)],
    }
    assert stats.extract_output(accumulate(rows)) == expected
    merged = stats.merge_accumulators([accumulate(rows[::3]), accumulate(rows[1::3]), accumulate(rows[2::3])])
    assert stats.extract_output(merged) == expected
    assert stats.extract_output(stats.create_accumulator()) == {
        "rows": 0,
        "status_counts": {STATUS_OK: 0, STATUS_ERROR: 0},
        "errors_by_type": {},
        "top_labels": [],
    }


@pytest.mark.parametrize(
    "rows_in, skipped, sent, written, problems",
    [
        (10, 3, 7, 7, []),
        (10, 0, 9, 9, ["1 rows missing: 10 rows in, 0 skipped, 9 written"]),
        (10, 3, 8, 8, ["1 rows too many: 10 rows in, 3 skipped, 8 written"]),
        (
            10,
            0,
            10,
            9,
            ["1 rows missing: 10 rows in, 0 skipped, 9 written", "the sink was sent 10 rows but its shards hold 9"],
        ),
        (5, 5, 0, 0, []),
    ],
)
def test_reconcile(rows_in, skipped, sent, written, problems):
    assert reconcile(rows_in=rows_in, rows_skipped=skipped, rows_sent=sent, written=written) == problems
