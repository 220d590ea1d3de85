"""LabelRows as the job builds it, on Beam's TestPipeline with a fake model (no TensorFlow): one valid row per input,
InferenceError rows for a batch the model raises on, and, with SkipLabelled before it, every input row out exactly
once (a property test)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from fake_job import (
    CARRIED,
    MODEL,
    OTHER_MODEL,
    OUTCOMES,
    PERMANENT,
    POISON,
    TRANSIENT,
    all_of,
    broken_inputs,
    each,
    good_images,
    in_their_branches,
    input_rows,
    job_config,
    label_rows,
    labelled_row_checker,
    model_exception,
    valid_rows,
    write_png,
    write_previous_output,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from beam_pipeline import errors
from beam_pipeline.inputs.incremental import SkipLabelled, earlier_shards
from beam_pipeline.records import (
    MANIFEST_ERROR_KEY,
    STATUS_ERROR,
    STATUS_OK,
    output_schema,
)


def test_label_rows_gives_each_input_one_valid_row(tmp_path, refused_url, fake_model):
    good = good_images(tmp_path / "good", range(100, 130))
    broken = broken_inputs(tmp_path / "broken", refused_url)
    rows = input_rows([*good, *broken, next(iter(good))])  # a duplicate input stays a duplicate output

    ids_carried = equal_to([(row["id"], STATUS_OK if row["uri"] in good else STATUS_ERROR) for row in rows])

    with test_pipeline.TestPipeline() as p:
        out = label_rows(p | beam.Create(rows), job_config())
        checker = labelled_row_checker(good, broken)
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
        checker = labelled_row_checker(good, broken={})
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
    assert len(list(earlier_shards(str(folder)))) == len(earlier)
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
        kept, skipped_rows, _ = p | beam.Create(rows) | SkipLabelled(str(folder), MODEL.model_id, relabel_errors)
        skipped_count = skipped_rows | beam.combiners.Count.Globally()
        out = (
            label_rows(kept, job_config()),
            skipped_count | beam.Map(lambda count: (SKIPPED, count)),
        ) | beam.Flatten()
        assert_that(out, check_skipped_and_labelled)
