"""Fast tests of one transform at a time, on Beam's TestPipeline with a fake model (no TensorFlow).

LabelRows runs as the job builds it; only the model behind its ImageClassifierHandler is replaced (see
FakeClassifierHandler). Every output row is checked against the output schema, and the URIs out against the URIs in.
"""

from __future__ import annotations

import collections
import datetime
import io
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from beam_pipeline import errors, pipeline
from beam_pipeline.decode.dofn import FAILED_TAG, DecodeImage
from beam_pipeline.decode.preprocess import DecodeSpec
from beam_pipeline.decode.reading import ReadPolicy
from beam_pipeline.inputs.incremental import SkipLabelled, find_earlier_shards
from beam_pipeline.model.handler import ImageClassifierHandler
from beam_pipeline.model.resolve import ModelRef
from beam_pipeline.output.finalize import RowStats, merge_stats, reconcile
from beam_pipeline.pipeline import JobConfig
from beam_pipeline.records import (
    ERROR_KIND_PERMANENT,
    ERROR_KIND_TRANSIENT,
    MANIFEST_ERROR_KEY,
    STATUS_ERROR,
    STATUS_OK,
    output_schema,
)

MODEL = ModelRef("fake://classifier", "savedmodel")
OTHER_MODEL = "fake://other"
LABELS = [f"class {i}" for i in range(256)]
SIZE = (16, 12)  # the model's input (width, height)
TOP_K = 3
# The fake model's probabilities for classes v, v + 1 and v + 2 of an image whose first pixel is v.
TOP_SCORES = (0.6, 0.3, 0.1)
POISON = frozenset(range(10, 16))  # the fake model raises on a batch holding an image whose first pixel is one of these
CARRIED = pa.schema([pa.field("id", pa.int64())])
SCHEMES = ("file", "http")
# allow_private_hosts: the refused URL is on 127.0.0.1
READ_POLICY = ReadPolicy(max_bytes=1 << 20, allowed_schemes=SCHEMES, retries=0, timeout=10.0, allow_private_hosts=True)
DECODE_SPEC = DecodeSpec(SIZE, "squash", 10**7)
BRANCHES = ("Labelled", "Failed", "InferenceFailed")  # LabelRows' outputs

PERMANENT, TRANSIENT = ERROR_KIND_PERMANENT, ERROR_KIND_TRANSIENT


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


@pytest.fixture
def refused_url() -> Iterator[str]:
    """An http URL on 127.0.0.1 that refuses connections: its port is bound here and never listened on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/image.png"


def broken_inputs(folder: Path, refused_url: str) -> dict[str | None, tuple[str, str]]:
    """Rows that cannot be decoded: uri -> (error type, error kind) each must end as (None: a manifest row that did
    not parse). Only the refused connection may work on a rerun."""
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
        **{str(folder / name): (error_type, PERMANENT) for name, (_, error_type) in files.items()},
        str(folder / "missing.png"): (errors.NOT_FOUND, PERMANENT),
        refused_url: (errors.READ_ERROR, TRANSIENT),
        None: (errors.BAD_MANIFEST_ROW, PERMANENT),
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
        ok = row["error_type"] is None and row["error_kind"] is None and row["error"] is None and bool(row["top_k"])
        ok = ok and row["label"] == row["top_k"][0]["label"] and row["score"] == row["top_k"][0]["score"]
        ok = ok and row["width"] is not None and row["height"] is not None
    elif row["status"] == STATUS_ERROR:
        # `error` is `ExceptionType: message` (for ImageInputError the type is its error type): a CapWords name first,
        # never the repr of a tuple or of an exception.
        ok = row["error_type"] is not None and re.match(r"[A-Z]\w*: ", row["error"] or "") is not None
        ok = ok and row["error_kind"] in (PERMANENT, TRANSIENT)
        ok = ok and row["label"] is None and row["score"] is None and row["top_k"] is None
    else:
        ok = False
    if not ok:
        raise BeamAssertException(f"not a consistent {row['status']!r} row: {row}")


def tag_and_flatten(pcolls: dict[str, beam.PCollection]) -> beam.PCollection:
    """(tag, element) pairs of several PCollections in one, for one assert_that to check them all.

    Each assert_that adds stages, and Beam's cost of building and running a test pipeline grows with its stages.
    """
    tagged = [pcoll | f"Tag{tag}" >> beam.Map(lambda x, tag=tag: (tag, x)) for tag, pcoll in pcolls.items()]
    return tagged | f"Flatten{'And'.join(pcolls)}" >> beam.Flatten()


def by_tag(matchers: dict[str, Callable[[list], None]]) -> Callable[[list[tuple[str, object]]], None]:
    """A matcher of (tag, element) pairs: each tag's matcher on its elements (an empty list when it has none)."""

    def match(pairs: list[tuple[str, object]]) -> None:
        unknown = {tag for tag, _ in pairs} - set(matchers)
        if unknown:
            raise BeamAssertException(f"elements tagged {sorted(unknown)}")
        for tag, matcher in matchers.items():
            matcher([value for t, value in pairs if t == tag])

    return match


def all_of(*matchers: Callable[[list], None]) -> Callable[[list], None]:
    def match(actual: list) -> None:
        for matcher in matchers:
            matcher(actual)

    return match


def each(fn: Callable, matcher: Callable[[list], None]) -> Callable[[list], None]:
    """`matcher` on `fn` of each element."""
    return lambda actual: matcher([fn(x) for x in actual])


def test_row_matcher_fails_on_lost_duplicated_or_mistyped_rows():
    """The matcher the tests below rely on rejects each kind of bad output (so they can fail)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ok = {
        "uri": "a.png", "id": 1, "status": "ok", "error_type": None, "error_kind": None, "error": None, "label": "cat",
        "score": 0.5, "top_k": [{"class_id": 3, "label": "cat", "score": 0.5}], "width": 4, "height": 3, "model": "m",
        "labelled_at": now,
    }  # fmt: skip
    error = {**ok, "uri": "b.png", "status": "error", "error_type": "NotFound", "error": "FileNotFoundError: b.png"}
    error.update(error_kind=PERMANENT, label=None, score=None, top_k=None, width=None, height=None)
    match = valid_rows(["a.png", "b.png"], output_schema(CARRIED))
    match([ok, error])
    match([ok, {**error, "error_kind": TRANSIENT}])
    bad_outputs = {
        "lost": [ok],
        "duplicated": [ok, ok, error],
        "float width": [{**ok, "width": 4.0}, error],
        "int in a string column": [{**ok, "label": 3}, error],
        "naive timestamp": [{**ok, "labelled_at": now.replace(tzinfo=None)}, error],
        "top_k without score": [{**ok, "top_k": [{"class_id": 3, "label": "cat"}]}, error],
        "missing column": [{k: v for k, v in ok.items() if k != "height"}, error],
        "missing error_kind": [ok, {k: v for k, v in error.items() if k != "error_kind"}],
        "extra column": [{**ok, MANIFEST_ERROR_KEY: "x"}, error],
        "null status": [{**ok, "status": None}, error],
        "width over int32": [{**ok, "width": 2**40}, error],
        "tuple repr as error": [ok, {**error, "error": "tuple: (<class 'RuntimeError'>, ...)"}],
        "ok row with an error kind": [{**ok, "error_kind": PERMANENT}, error],
        "error row without an error kind": [ok, {**error, "error_kind": None}],
        "error row with another error kind": [ok, {**error, "error_kind": "maybe"}],
    }
    for what, rows in bad_outputs.items():
        with pytest.raises(BeamAssertException):
            match(rows)
            pytest.fail(f"{what} passed the matcher")


def test_combined_matchers_fail_when_a_part_fails():
    """tag_and_flatten's pairs are checked with these; each check must still be able to fail."""
    ok, error = {"status": STATUS_OK, "error_type": None}, {"status": STATUS_ERROR, "error_type": errors.NOT_FOUND}
    inference_error = {"status": STATUS_ERROR, "error_type": errors.INFERENCE_ERROR}
    branches = in_their_branches(lambda rows: None)
    branches([("Labelled", ok), ("Failed", error), ("InferenceFailed", inference_error)])
    tags = by_tag({"a": equal_to([1]), "b": equal_to([])})
    tags([("a", 1)])
    failing = {
        "ok row in Failed": lambda: branches([("Failed", ok)]),
        "error row in Labelled": lambda: branches([("Labelled", error)]),
        "inference error in Failed": lambda: branches([("Failed", inference_error)]),
        "other error in InferenceFailed": lambda: branches([("InferenceFailed", error)]),
        "rows matcher": lambda: in_their_branches(equal_to([]))([("Labelled", ok)]),
        "unknown tag": lambda: tags([("a", 1), ("c", 1)]),
        "a tag's matcher": lambda: tags([("a", 2)]),
        "a tag with no elements": lambda: tags([]),
        "second of all_of": lambda: all_of(equal_to([1]), equal_to([2]))([1]),
        "each": lambda: each(lambda x: x + 1, equal_to([1]))([1]),
    }
    for what, check in failing.items():
        with pytest.raises(BeamAssertException):
            check()
            pytest.fail(f"{what} passed")


# --- DecodeImage --------------------------------------------------------------------------------------------------


def decode_image(**kwargs) -> DecodeImage:
    return DecodeImage(READ_POLICY, DECODE_SPEC, model_id=MODEL.model_id, **kwargs)


@pytest.mark.parametrize(
    "threads, in_flight",
    [(1, 1), (2, 3), (None, None), (2, 1000)],
    ids=["process-only", "process-and-finish-bundle", "defaults", "finish-bundle-only"],
)
def test_decode_sends_every_row_once_to_decoded_or_failed(tmp_path, refused_url, threads, in_flight):
    """46 rows through a pool of `threads` with at most `in_flight` at a time. Results are emitted in process() once
    `in_flight` rows are pending (with one, every row is emitted there) and in finish_bundle() for the rest (with
    1000, every row is emitted there)."""
    good = good_images(tmp_path / "good", range(100, 140))
    broken = broken_inputs(tmp_path / "broken", refused_url)
    rows = input_rows([*good, *broken])

    with test_pipeline.TestPipeline() as p:
        out = (
            p
            | beam.Create(rows)
            | beam.ParDo(decode_image(threads=threads, in_flight=in_flight)).with_outputs(FAILED_TAG, main="decoded")
        )
        summaries = out.decoded | "Summarise" >> beam.MapTuple(_decoded_summary)
        ids = {row["uri"]: row["id"] for row in rows}
        expected_decoded = [
            (uri, ids[uri], w, h, (SIZE[1], SIZE[0], 3), "uint8", value, value) for uri, (value, (w, h)) in good.items()
        ]
        expected_failed = [(uri, ids[uri], *kind, MODEL.model_id, False) for uri, kind in broken.items()]
        assert_that(
            tag_and_flatten({"decoded": summaries, "failed": out[FAILED_TAG]}),
            all_of(
                by_tag(
                    {
                        "decoded": equal_to(expected_decoded),
                        "failed": all_of(
                            each(_failed_summary, equal_to(expected_failed)),
                            valid_rows(broken, output_schema(CARRIED), _error_row_checker(broken)),
                        ),
                    }
                ),
                each(
                    lambda pair: pair[1][0] if pair[0] == "decoded" else pair[1]["uri"],
                    equal_to([row["uri"] for row in rows]),
                ),
            ),
        )


def _failed_summary(row: dict) -> tuple:
    return (row["uri"], row["id"], row["error_type"], row["error_kind"], row["model"], MANIFEST_ERROR_KEY in row)


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


def _error_row_checker(expected: dict[str | None, tuple[str, str]]) -> Callable[[dict], None]:
    def check(row: dict) -> None:
        if (row["error_type"], row["error_kind"]) != expected[row["uri"]]:
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

# How an earlier run ended for a URI: (status, error_type, error_kind).
OUTCOMES = {
    "ok": (STATUS_OK, None, None),
    "not found": (STATUS_ERROR, errors.NOT_FOUND, PERMANENT),
    "corrupt": (STATUS_ERROR, errors.CORRUPT_IMAGE, PERMANENT),
    "read refused for good": (STATUS_ERROR, errors.READ_ERROR, PERMANENT),  # an HTTP 403, say
    "read timed out": (STATUS_ERROR, errors.READ_ERROR, TRANSIENT),
    "inference failed": (STATUS_ERROR, errors.INFERENCE_ERROR, TRANSIENT),
    "unexpected": (STATUS_ERROR, errors.UNEXPECTED_ERROR, TRANSIENT),
    "bad manifest row": (STATUS_ERROR, errors.BAD_MANIFEST_ROW, PERMANENT),
    "empty uri": (STATUS_ERROR, errors.EMPTY_URI, PERMANENT),
}


def write_previous_output(path: Path, rows: list[tuple[str | None, str, str]], *, legacy: bool = False) -> None:
    """An earlier run's shard of (uri, model, outcome name) rows, written with the job's own output schema; `legacy`
    writes it as runs did before the `error_kind` column existed."""
    now = datetime.datetime.now(datetime.timezone.utc)
    schema = output_schema()
    if legacy:
        schema = schema.remove(schema.get_field_index("error_kind"))
    records = []
    for uri, model, outcome in rows:
        status, error_type, error_kind = OUTCOMES[outcome]
        error = None if status == STATUS_OK else f"{error_type}: earlier"
        record = {"uri": uri, "status": status, "error_type": error_type, "error": error, "model": model}
        records.append({**record, "labelled_at": now, **({} if legacy else {"error_kind": error_kind})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)


@pytest.mark.parametrize("relabel_errors", [False, True])
def test_skip_labelled_skips_rows_the_same_model_finished(tmp_path, relabel_errors):
    """Skipped: rows whose URI an earlier run of the same model labelled, or failed on for good (unless
    relabel_errors). Kept: new URIs, other models' results, transient failures (by error_kind, or by error type in
    older output without it), and every row without a usable URI, even when the earlier output has one like it."""
    out = tmp_path / "out"
    write_previous_output(
        out / "dt=1" / "labels-00000-of-00002.parquet",
        [
            ("done.png", MODEL.model_id, "ok"),
            ("done.png", OTHER_MODEL, "ok"),
            ("other_model.png", OTHER_MODEL, "ok"),
            ("other_model_missing.png", OTHER_MODEL, "not found"),
            ("missing.png", MODEL.model_id, "not found"),
            ("forbidden.png", MODEL.model_id, "read refused for good"),
            ("timed_out.png", MODEL.model_id, "read timed out"),
            ("batch_failed.png", MODEL.model_id, "inference failed"),
            (None, MODEL.model_id, "bad manifest row"),
            ("", MODEL.model_id, "empty uri"),
            ("   ", MODEL.model_id, "empty uri"),
        ],
    )
    write_previous_output(
        out / "dt=2" / "labels-00001-of-00002.parquet",
        [
            ("done.png", MODEL.model_id, "ok"),  # in both shards: still one skip per input row
            ("old_missing.png", MODEL.model_id, "not found"),
            ("old_corrupt.png", MODEL.model_id, "corrupt"),
            ("old_read_error.png", MODEL.model_id, "read timed out"),
            ("old_batch_failed.png", MODEL.model_id, "inference failed"),
            ("old_unexpected.png", MODEL.model_id, "unexpected"),
        ],
        legacy=True,
    )
    # Not shards of a finished run: an unfinished run's staging folder and the _SUCCESS file.
    write_previous_output(out / "_staging-run2" / "labels-00000-of-00001.parquet", [("new.png", MODEL.model_id, "ok")])
    (out / "_SUCCESS").write_text("{}")
    shards = find_earlier_shards(str(out))
    assert shards == [
        str(out / "dt=1" / "labels-00000-of-00002.parquet"),
        str(out / "dt=2" / "labels-00001-of-00002.parquet"),
    ]
    assert find_earlier_shards(str(out / "dt=*" / "labels-*.parquet")) == shards

    keyed = [
        *("done.png", "done.png", "new.png", "other_model.png", "other_model_missing.png"),
        *("missing.png", "forbidden.png", "timed_out.png", "batch_failed.png"),
        *("old_missing.png", "old_corrupt.png", "old_read_error.png", "old_batch_failed.png", "old_unexpected.png"),
    ]
    keyless = [
        {"uri": None, MANIFEST_ERROR_KEY: "line 7: not valid JSON"},
        {"uri": "done.png", MANIFEST_ERROR_KEY: "column 'id' has 'x', which is not int64"},
        {"uri": "missing.png", MANIFEST_ERROR_KEY: "column 'id' has 'y', which is not int64"},
        {"uri": None},
        {"uri": ""},
        {"uri": "   "},
    ]
    rows = [{**row, "id": i} for i, row in enumerate([*({"uri": uri} for uri in keyed), *keyless])]
    skipped = ["done.png", "done.png"]
    if not relabel_errors:
        skipped += ["missing.png", "forbidden.png", "old_missing.png", "old_corrupt.png"]
    todo = [row for row in rows if MANIFEST_ERROR_KEY in row or row["uri"] not in skipped]
    assert len(todo) + len(skipped) == len(rows)

    with test_pipeline.TestPipeline() as p:
        kept, skipped_count = p | beam.Create(rows) | SkipLabelled(shards, MODEL.model_id, relabel_errors)
        assert_that(
            tag_and_flatten({"kept": kept, "skipped": skipped_count}),
            by_tag({"kept": equal_to(todo), "skipped": equal_to([len(skipped)])}),
        )


def test_skip_labelled_with_no_earlier_output_keeps_every_row(tmp_path):
    shards = find_earlier_shards(str(tmp_path / "none"))
    assert shards == []
    rows = [*input_rows(["a.png", "b.png", "a.png", None]), {"uri": "", "id": 4}]
    with test_pipeline.TestPipeline() as p:
        kept, skipped_count = p | beam.Create(rows) | SkipLabelled(shards, MODEL.model_id, False)
        assert_that(
            tag_and_flatten({"kept": kept, "skipped": skipped_count}),
            by_tag({"kept": equal_to(rows), "skipped": equal_to([0])}),
        )


# --- LabelRows with a fake model ------------------------------------------------------------------------------------


class ModelCrashed(Exception):
    """An exception type of the model's own (its traceback names it with its module)."""


def model_exception(first_pixels: list[int]) -> Exception | None:
    """What the fake model raises on a batch: None unless an image's first pixel is in POISON."""
    poisoned = sorted(POISON.intersection(first_pixels))
    if not poisoned:
        return None
    kind = ModelCrashed if poisoned[0] % 2 else RuntimeError
    # Two lines: the message is carried whole, not read back from the traceback's text.
    return kind(f"model failed on a batch\nwith first pixels {sorted(first_pixels)}")


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
        expected_rows=None,
        uri_column="uri",
        carried=CARRIED,
        output="unused",
        overwrite=False,
        run_id="test-run",
        started_at=datetime.datetime.now(datetime.timezone.utc),
        model=MODEL,
        backend="fake",
        labels=LABELS,
        top_k=TOP_K,
        min_batch_size=1,
        max_batch_size=4,
        read_policy=READ_POLICY,
        decode_spec=DECODE_SPEC,
        max_error_fraction=1.0,
        earlier_shards=(),
        relabel_errors=False,
        large_model=False,
        iceberg=None,
        threads_per_process=None,
    )
    return JobConfig(**{**settings, **changes})


@pytest.fixture
def fake_model(monkeypatch):
    """LabelRows builds FakeClassifierHandler where the job builds ImageClassifierHandler.

    Patching the one name keeps LabelRows.expand as the job runs it (decode, RunInference with its dead-letter
    output, error rows), where rebuilding that graph here would test a copy of it.
    """
    monkeypatch.setattr(pipeline, "ImageClassifierHandler", FakeClassifierHandler)


def label_rows(rows: beam.PCollection, job: JobConfig) -> beam.PCollection:
    """LabelRows' output as (branch name, row) pairs, all its branches flattened."""
    branches = rows | pipeline.LabelRows(job, decode_in_flight=3)
    assert sorted(branches) == sorted(BRANCHES)
    tagged = [
        branch | f"Tag{name}" >> beam.Map(lambda row, name=name: (name, row)) for name, branch in branches.items()
    ]
    return tagged | "AllRows" >> beam.Flatten()


def in_their_branches(match: Callable[[list[dict]], None]) -> Callable[[list[tuple[str, dict]]], None]:
    """A matcher of (branch name, row) pairs: each branch holds only its own kind of row; then `match` on the rows."""

    def match_pairs(pairs: list[tuple[str, dict]]) -> None:
        for name, row in pairs:
            inference_error = row["error_type"] == errors.INFERENCE_ERROR
            belongs = {
                "Labelled": row["status"] == STATUS_OK,
                "Failed": row["status"] == STATUS_ERROR and not inference_error,
                "InferenceFailed": row["status"] == STATUS_ERROR and inference_error,
            }[name]
            if not belongs:
                raise BeamAssertException(f"a {row['status']} {row['error_type']} row in {name}: {row}")
        match([row for _, row in pairs])

    return match_pairs


def _labelled_row_checker(good: dict[str, tuple[int, tuple[int, int]]], broken: dict[str | None, tuple[str, str]]):
    """Labelled rows carry their own image's classes and size; error rows the type and kind their input must end as
    (a good image only ever fails with its batch, as a transient InferenceError)."""

    def check(row: dict) -> None:
        if row["status"] == STATUS_ERROR:
            expected = broken[row["uri"]] if row["uri"] in broken else (errors.INFERENCE_ERROR, TRANSIENT)
            if (row["error_type"], row["error_kind"]) != expected:
                raise BeamAssertException(f"{row['uri']}: {row['error_type']}/{row['error_kind']} is not {expected}")
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


def test_label_rows_gives_each_input_one_valid_row(tmp_path, refused_url, fake_model):
    good = good_images(tmp_path / "good", range(100, 130))
    broken = broken_inputs(tmp_path / "broken", refused_url)
    rows = input_rows([*good, *broken, next(iter(good))])  # a duplicate input stays a duplicate output

    ids_carried = equal_to([(row["id"], STATUS_OK if row["uri"] in good else STATUS_ERROR) for row in rows])

    with test_pipeline.TestPipeline() as p:
        out = label_rows(p | beam.Create(rows), job_config())
        checker = _labelled_row_checker(good, broken)
        assert_that(
            out,
            in_their_branches(
                all_of(
                    valid_rows([r["uri"] for r in rows], output_schema(CARRIED), checker),
                    each(lambda row: (row["id"], row["status"]), ids_carried),
                )
            ),
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
        out = label_rows(p | beam.Create(input_rows(good)), job)
        checker = _labelled_row_checker(good, broken={})
        assert_that(
            out, in_their_branches(all_of(valid_rows(good, output_schema(CARRIED), checker), check_failed_batches))
        )


# --- SkipLabelled then LabelRows: every input row comes out exactly once ----------------------------------------------

# The files the property test's rows name: file name -> first pixel (None: absent). The fake model raises on batches
# holding a poison image. Each example mixes rows and earlier output for all of them, so one pipeline covers many cases.
POOL = {
    **{f"good_{v}.png": v for v in range(100, 106)},
    **{f"poison_{v}.png": v for v in sorted(POISON)[:2]},
    **{f"missing_{i}.png": None for i in range(2)},
}
BLANK_URIS = (None, "", "   ")
SKIPPED = "skipped"  # tags SkipLabelled's count among the (branch, row) pairs
OLDER_TRANSIENT_TYPES = (errors.READ_ERROR, errors.INFERENCE_ERROR, errors.UNEXPECTED_ERROR)

# An input row: ("image", pool name), ("blank", uri) or ("bad manifest", pool name or None).
input_row_specs = st.one_of(
    st.tuples(st.just("image"), st.sampled_from(sorted(POOL))),
    st.tuples(st.just("blank"), st.sampled_from(BLANK_URIS)),
    st.tuples(st.just("bad manifest"), st.sampled_from([*sorted(POOL), None])),
)
# An earlier shard: (legacy, [(pool name or blank uri, model, outcome name)]).
earlier_shard_specs = st.tuples(
    st.booleans(),
    st.lists(
        st.tuples(
            st.sampled_from([*sorted(POOL), *BLANK_URIS]),
            st.sampled_from([MODEL.model_id, OTHER_MODEL]),
            st.sampled_from(sorted(OUTCOMES)),
        ),
        max_size=16,
    ),
)


@pytest.fixture(scope="module")
def image_pool(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pool")
    for name, first_pixel in POOL.items():
        if first_pixel is not None:
            write_png(folder / name, first_pixel, (20, 10))
    return folder


def _finished_uris(earlier: list[tuple[bool, list]], uri_of: Callable, relabel_errors: bool) -> set[str]:
    """The URIs earlier output finished with MODEL: labelled, or failed for good unless relabel_errors (older output
    without error_kind: ReadError, InferenceError and UnexpectedError count as transient)."""
    finished = set()
    for legacy, rows in earlier:
        for name, model, outcome in rows:
            status, error_type, kind = OUTCOMES[outcome]
            if legacy:
                kind = TRANSIENT if error_type in OLDER_TRANSIENT_TYPES else PERMANENT
            done = status == STATUS_OK or (not relabel_errors and kind == PERMANENT)
            if model == MODEL.model_id and done and uri_of(name):
                finished.add(uri_of(name))
    return finished


def _has_usable_uri(row: dict) -> bool:
    return isinstance(row["uri"], str) and bool(row["uri"].strip()) and MANIFEST_ERROR_KEY not in row


@settings(
    max_examples=10,
    deadline=None,  # each example runs a pipeline
    database=None,  # nothing written into the repository; a failure prints its example
    # fake_model's patch is the same for every example, so its being function-scoped does not matter.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(  # every kind of row at once, whatever the random draws cover
    specs=[
        *(("image", name) for name in ("good_100.png", "good_100.png", "good_101.png", "good_102.png")),
        *(("image", name) for name in ("good_103.png", "poison_10.png", "missing_0.png", "missing_1.png")),
        *(("blank", uri) for uri in BLANK_URIS),
        *(("bad manifest", name) for name in ("good_100.png", "missing_0.png", None)),
    ],
    earlier=[
        (
            False,
            [
                ("good_100.png", MODEL.model_id, "ok"),
                ("missing_0.png", MODEL.model_id, "not found"),
                ("good_101.png", OTHER_MODEL, "ok"),
                ("good_102.png", MODEL.model_id, "read timed out"),
                ("   ", MODEL.model_id, "empty uri"),
            ],
        ),
        (
            True,
            [
                ("good_100.png", MODEL.model_id, "ok"),
                ("poison_10.png", MODEL.model_id, "corrupt"),
                ("good_103.png", MODEL.model_id, "read timed out"),
            ],
        ),
    ],
    relabel_errors=False,
)
@given(
    specs=st.lists(input_row_specs, max_size=24),
    earlier=st.lists(earlier_shard_specs, max_size=3),
    relabel_errors=st.booleans(),
)
def test_every_input_row_is_skipped_or_labelled_exactly_once(
    image_pool, tmp_path_factory, fake_model, specs, earlier, relabel_errors
):
    """SkipLabelled then LabelRows: each input row is either skipped (counted; exactly the rows with a usable URI
    that the earlier output finished) or comes out as one output row carrying its own id."""

    def uri_of(name: str | None) -> str | None:
        return str(image_pool / name) if name in POOL else name

    rows = []
    for i, (kind, value) in enumerate(specs):
        row = {"uri": uri_of(value), "id": i}
        if kind == "bad manifest":
            row[MANIFEST_ERROR_KEY] = "line 3: not valid JSON"
        rows.append(row)
    folder = tmp_path_factory.mktemp("earlier")
    for n, (legacy, shard_rows) in enumerate(earlier):
        shard_rows = [(uri_of(name), model, outcome) for name, model, outcome in shard_rows]
        write_previous_output(folder / f"labels-{n:05d}-of-{len(earlier):05d}.parquet", shard_rows, legacy=legacy)
    shards = find_earlier_shards(str(folder))
    assert len(shards) == len(earlier)
    finished = _finished_uris(earlier, uri_of, relabel_errors)
    skipped = [row for row in rows if _has_usable_uri(row) and row["uri"] in finished]
    labelled = [row for row in rows if row not in skipped]  # each row has its own id

    def expected_error(row: dict) -> set[tuple[str, str] | None]:
        """What a row may end as: None (labelled) or (error type, error kind)."""
        if MANIFEST_ERROR_KEY in row:
            return {(errors.BAD_MANIFEST_ROW, PERMANENT)}
        if not _has_usable_uri(row):
            return {(errors.EMPTY_URI, PERMANENT)}
        first_pixel = POOL[Path(row["uri"]).name]
        if first_pixel is None:
            return {(errors.NOT_FOUND, PERMANENT)}
        if first_pixel in POISON:
            return {(errors.INFERENCE_ERROR, TRANSIENT)}
        return {None, (errors.INFERENCE_ERROR, TRANSIENT)}  # a good image fails with a batch holding the poison

    expected = {row["id"]: expected_error(row) for row in labelled}

    def check_outcome(row: dict) -> None:
        got = None if row["status"] == STATUS_OK else (row["error_type"], row["error_kind"])
        if got not in expected[row["id"]]:
            raise BeamAssertException(f"row {row['id']} ({row['uri']!r}) ended as {got}, not one of {expected}")

    check_rows = in_their_branches(
        all_of(
            valid_rows([row["uri"] for row in labelled], output_schema(CARRIED), check_outcome),
            each(lambda row: (row["id"], row["uri"]), equal_to([(row["id"], row["uri"]) for row in labelled])),
        )
    )

    def check_skipped_and_labelled(items: list[tuple[str, object]]) -> None:
        counts = [count for tag, count in items if tag == SKIPPED]
        if counts != [len(skipped)]:
            raise BeamAssertException(f"skipped {counts}, expected [{len(skipped)}]")
        check_rows([item for item in items if item[0] != SKIPPED])

    with test_pipeline.TestPipeline() as p:
        kept, skipped_count = p | beam.Create(rows) | SkipLabelled(shards, MODEL.model_id, relabel_errors)
        out = (
            label_rows(kept, job_config()),
            skipped_count | beam.Map(lambda count: (SKIPPED, count)),
        ) | beam.Flatten()
        assert_that(out, check_skipped_and_labelled)


# --- RowStats, merge_stats and reconcile ----------------------------------------------------------------------------


def accumulate(stats: RowStats, rows: list[dict]) -> dict:
    acc = stats.create_accumulator()
    for row in rows:
        acc = stats.add_input(acc, row)
    return acc


def ok_rows(labels: list[str]) -> list[dict]:
    return [{"status": STATUS_OK, "error_type": None, "label": label} for label in labels]


def error_rows(error_types: list[str]) -> list[dict]:
    return [{"status": STATUS_ERROR, "error_type": t, "label": None} for t in error_types]


EMPTY_STATS = {"rows": 0, "status_counts": {STATUS_OK: 0, STATUS_ERROR: 0}, "errors_by_type": {}, "top_labels": []}


def test_row_stats_counts_statuses_error_types_and_top_labels():
    labels = [f"label {i}" for i in range(12) for _ in range(i + 1)]  # label i on i + 1 rows
    error_types = ["NotFound"] * 4 + ["CorruptImage"] * 3 + [errors.INFERENCE_ERROR]
    rows = ok_rows(labels) + error_rows(error_types)
    stats = RowStats()

    expected = {
        "rows": len(rows),
        "status_counts": {STATUS_OK: len(labels), STATUS_ERROR: len(error_types)},
        "errors_by_type": {"CorruptImage": 3, errors.INFERENCE_ERROR: 1, "NotFound": 4},
        "top_labels": [(f"label {i}", i + 1) for i in range(11, 1, -1)],
    }
    assert stats.extract_output(accumulate(stats, rows)) == expected
    parts = [accumulate(stats, rows[::3]), accumulate(stats, rows[1::3]), accumulate(stats, rows[2::3])]
    assert stats.extract_output(stats.merge_accumulators(parts)) == expected
    assert stats.extract_output(stats.create_accumulator()) == EMPTY_STATS


def test_merge_stats_adds_up_the_row_stats_of_each_branch():
    """As the job's final step sees them: one RowStats output per branch of rows (an empty branch's too)."""
    stats = RowStats()
    labels = [f"label {i}" for i in range(12) for _ in range(i + 1)]  # label i on i + 1 rows
    branches = [
        ok_rows(labels),
        error_rows(["NotFound"] * 4 + ["CorruptImage"] * 3),
        error_rows(["NotFound"] * 2 + ["EmptyUri"]),
        error_rows([errors.INFERENCE_ERROR] * 2),
        [],
    ]
    outputs = [stats.extract_output(accumulate(stats, branch)) for branch in branches]
    expected = {
        "rows": len(labels) + 12,
        "status_counts": {STATUS_OK: len(labels), STATUS_ERROR: 12},
        "errors_by_type": {"CorruptImage": 3, "EmptyUri": 1, errors.INFERENCE_ERROR: 2, "NotFound": 6},
        "top_labels": [(f"label {i}", i + 1) for i in range(11, 1, -1)],
    }
    assert merge_stats(outputs) == expected
    assert merge_stats(outputs[::-1]) == expected
    assert merge_stats(outputs) == stats.extract_output(accumulate(stats, [r for b in branches for r in b]))
    assert merge_stats([outputs[1], outputs[1]])["errors_by_type"] == {"CorruptImage": 6, "NotFound": 8}
    assert merge_stats([]) == EMPTY_STATS


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
