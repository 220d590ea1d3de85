"""Helpers for testing one transform at a time on Beam's TestPipeline: input images and rows, matchers that check
every output row against the output schema and the URIs out against the URIs in, earlier output, and a fake model
behind the job's own ImageClassifierHandler (FakeClassifierHandler; no TensorFlow)."""

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
from apache_beam.testing.util import BeamAssertException
from PIL import Image

from beam_pipeline import errors, pipeline
from beam_pipeline.decode.preprocess import DecodeSpec
from beam_pipeline.decode.reading import ReadPolicy
from beam_pipeline.model.backends import ModelOutputs
from beam_pipeline.model.handler import ImageClassifierHandler
from beam_pipeline.model.resolve import ModelRef
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


def write_previous_output(
    path: Path, rows: list[tuple[str | None, str, str]], *, legacy: bool = False, row_group_size: int | None = None
) -> None:
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
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path, row_group_size=row_group_size)


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

    num_classes = len(LABELS)
    embedding_size = None

    def infer(self, images: np.ndarray) -> ModelOutputs:
        return ModelOutputs(self.predict(images), None)

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
        skip_labelled=None,
        relabel_errors=False,
        large_model=False,
        iceberg=None,
        threads_per_process=None,
    )
    return JobConfig(**{**settings, **changes})


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


def labelled_row_checker(good: dict[str, tuple[int, tuple[int, int]]], broken: dict[str | None, tuple[str, str]]):
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
