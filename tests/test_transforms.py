"""Fast tests of one transform at a time, on Beam's TestPipeline (no TensorFlow): the row matchers themselves, the
decode DoFn, SkipLabelled, and the final step's row counts."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from fake_job import (
    CARRIED,
    DECODE_SPEC,
    MODEL,
    OTHER_MODEL,
    PERMANENT,
    READ_POLICY,
    SIZE,
    TRANSIENT,
    all_of,
    broken_inputs,
    by_tag,
    each,
    good_images,
    in_their_branches,
    input_rows,
    tag_and_flatten,
    valid_rows,
    write_previous_output,
)

from beam_pipeline import errors
from beam_pipeline.decode.dofn import FAILED_TAG, DecodeImage
from beam_pipeline.inputs.incremental import EarlierTable, LeaveOutFinished, SkipLabelled, earlier_shards
from beam_pipeline.output.finalize import RowStats, merge_stats, reconcile
from beam_pipeline.records import (
    MANIFEST_ERROR_KEY,
    STATUS_ERROR,
    STATUS_OK,
    output_schema,
)


def test_row_matcher_fails_on_lost_duplicated_or_mistyped_rows():
    """The matcher the tests below rely on rejects each kind of bad output (so they can fail)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ok = {
        "uri": "a.png", "id": 1, "status": "ok", "error_type": None, "error_kind": None, "error": None, "label": "cat",
        "score": 0.5, "top_k": [{"class_id": 3, "label": "cat", "score": 0.5}], "width": 4, "height": 3, "model": "m",
        "labelled_at": now, "content_sha256": "ab" * 32, "phash": "0123456789abcdef",
    }  # fmt: skip
    error = {**ok, "uri": "b.png", "status": "error", "error_type": "NotFound", "error": "FileNotFoundError: b.png"}
    error.update(error_kind=PERMANENT, label=None, score=None, top_k=None, width=None, height=None)
    error.update(content_sha256=None, phash=None)
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
    shards = sorted(earlier_shards(str(out)))
    assert shards == [
        str(out / "dt=1" / "labels-00000-of-00002.parquet"),
        str(out / "dt=2" / "labels-00001-of-00002.parquet"),
    ]
    assert sorted(earlier_shards(str(out / "dt=*" / "labels-*.parquet"))) == shards

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
    statuses = ["ok" if uri == "done.png" else "error" for uri in skipped]
    assert len(todo) + len(skipped) == len(rows)

    with test_pipeline.TestPipeline() as p:
        kept, skipped_as, matched = p | beam.Create(rows) | SkipLabelled(str(out), MODEL.model_id, relabel_errors)
        assert_that(
            tag_and_flatten({"kept": kept, "skipped": skipped_as, "matched": matched}),
            by_tag({"kept": equal_to(todo), "skipped": equal_to(statuses), "matched": equal_to([2])}),
        )


def test_skip_labelled_with_no_earlier_output_keeps_every_row(tmp_path):
    assert list(earlier_shards(str(tmp_path / "none"))) == []
    rows = [*input_rows(["a.png", "b.png", "a.png", None]), {"uri": "", "id": 4}]
    with test_pipeline.TestPipeline() as p:
        kept, skipped, matched = p | beam.Create(rows) | SkipLabelled(str(tmp_path / "none"), MODEL.model_id, False)
        assert_that(
            tag_and_flatten({"kept": kept, "skipped": skipped, "matched": matched}),
            by_tag({"kept": equal_to(rows), "skipped": equal_to([]), "matched": equal_to([0])}),
        )


SKIP_COUNTERS = ("skip_labelled_scans", "skip_labelled_indexes_built", "skip_labelled_footers_read")


def _night_over_chunks(tmp_path) -> tuple[list[dict], list[dict], list[str], list[list[tuple[str, str, str]]]]:
    """Tonight's 25 rows (3 chunks of at most 10), and 4 earlier shards: two that labelled 15 of its URIs (in row
    groups of 4 rows), one of URIs far from tonight's, one of another model's."""
    labelled = [f"a{i:02d}.png" for i in range(10)] + [f"b{i:02d}.png" for i in range(5)]
    shards = [
        [(uri, MODEL.model_id, "ok") for uri in labelled[:10]],
        [(uri, MODEL.model_id, "ok") for uri in labelled[10:]] + [("b09.png", MODEL.model_id, "read timed out")],
        [(f"z{i:02d}.png", MODEL.model_id, "ok") for i in range(8)],
        [(f"n{i:02d}.png", OTHER_MODEL, "ok") for i in range(10)],
    ]
    rows = input_rows([*labelled, *(f"n{i:02d}.png" for i in range(9)), "b09.png"])
    todo = [row for row in rows if row["uri"] not in labelled]
    return rows, todo, ["ok"] * len(labelled), shards


def _counters(result) -> dict[str, int]:
    return {
        name: sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])
        for name in SKIP_COUNTERS
    }


def test_skip_labelled_reads_each_footer_once_for_a_night_of_many_chunks(tmp_path):
    """The earlier shards' footers are read once per worker (an index of each row group's URI range), not once per
    chunk of tonight's rows; chunks read only the row groups whose range holds one of their URIs."""
    rows, todo, statuses, shards = _night_over_chunks(tmp_path)
    for i, shard in enumerate(shards):
        write_previous_output(tmp_path / "out" / f"dt={i}" / "labels-00000-of-00001.parquet", shard, row_group_size=4)
    p = test_pipeline.TestPipeline()
    kept, skipped, matched = (
        p | beam.Create(rows) | SkipLabelled(str(tmp_path / "out"), MODEL.model_id, False, chunk_rows=10)
    )
    assert_that(
        tag_and_flatten({"kept": kept, "skipped": skipped, "matched": matched}),
        by_tag({"kept": equal_to(todo), "skipped": equal_to(statuses), "matched": equal_to([4])}),
    )
    counters = _counters(p.run())
    assert counters["skip_labelled_scans"] >= 3, "tonight spans several chunks"
    assert (counters["skip_labelled_indexes_built"], counters["skip_labelled_footers_read"]) == (1, len(shards))


def test_skip_labelled_index_is_rebuilt_for_another_side_input(tmp_path):
    """The index is kept for the side input it was built from: another list of shards builds another."""
    first, second = tmp_path / "labels-00000-of-00002.parquet", tmp_path / "labels-00001-of-00002.parquet"
    write_previous_output(first, [("a.png", MODEL.model_id, "ok")])
    write_previous_output(second, [("b.png", MODEL.model_id, "ok")])
    leave_out = LeaveOutFinished(MODEL.model_id, False)
    rows = input_rows(["a.png", "b.png"])
    side_inputs = ([str(first)], [str(first), str(second)], [str(first)])
    kept = [[row["uri"] for row in leave_out.process(rows, shards) if isinstance(row, dict)] for shards in side_inputs]
    assert kept == [["b.png"], [], ["b.png"]]


def test_skip_labelled_plans_the_table_once_for_a_night_of_many_chunks(tmp_path):
    """--skip-labelled naming the table: it is loaded and its files planned once per worker, whatever the chunks."""
    from beam_pipeline.output.iceberg import IcebergTarget

    rows, todo, statuses, shards = _night_over_chunks(tmp_path)
    target = IcebergTarget("vision.labels", f"type=sql,uri=sqlite:///{tmp_path}/c.db,warehouse=file://{tmp_path}/w")
    for i, shard in enumerate(shards):
        path = tmp_path / "out" / f"dt={i}" / "labels-00000-of-00001.parquet"
        write_previous_output(path, shard, row_group_size=4)
        snapshot = target.commit([str(path)], output_schema(), f"run-{i}")
    p = test_pipeline.TestPipeline()
    earlier = EarlierTable(target, snapshot, len(shards))
    kept, skipped, matched = p | beam.Create(rows) | SkipLabelled(earlier, MODEL.model_id, False, chunk_rows=10)
    assert_that(
        tag_and_flatten({"kept": kept, "skipped": skipped, "matched": matched}),
        by_tag({"kept": equal_to(todo), "skipped": equal_to(statuses), "matched": equal_to([4])}),
    )
    counters = _counters(p.run())
    assert counters["skip_labelled_scans"] >= 3 and counters["skip_labelled_indexes_built"] == 1


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
        (
            10,
            0,
            10,
            11,
            ["1 rows too many: 10 rows in, 0 skipped, 11 written", "the sink was sent 10 rows but its shards hold 11"],
        ),
        (5, 5, 0, 0, []),
        (0, 0, 0, 0, []),
    ],
)
def test_reconcile(rows_in, skipped, sent, written, problems):
    assert reconcile(rows_in=rows_in, rows_skipped=skipped, rows_sent=sent, written=written) == problems
