"""Every input row comes out exactly once, and a run that loses one says so (docs/runner-data-loss.md)."""

from __future__ import annotations

import json

import apache_beam as beam
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from conftest import label, read_output
from images import write_good_images

from beam_pipeline import pipeline
from beam_pipeline.launch.cli import local_defaults

ROWS = 200_000


@pytest.mark.slow  # runs 200k elements through Beam
def test_default_local_layout_keeps_every_element_of_the_beam_reproduction():
    """The 5-line reproduction of Beam 2.77's multi_threading loss, on the job's default local layout."""
    with beam.Pipeline(options=PipelineOptions(local_defaults([]))) as p:
        ids = (
            p
            | beam.Create(["x"])
            | beam.FlatMap(lambda _: ({"uri": f"/n/{i}.jpg"} for i in range(ROWS)))
            | beam.Reshuffle()
            | beam.Map(lambda row: int(row["uri"][3:-4]))
        )
        count_and_sum = ids | beam.combiners.Count.Globally(), ids | "Sum" >> beam.CombineGlobally(sum)
        assert_that(count_and_sum[0], equal_to([ROWS]), label="count")
        assert_that(count_and_sum[1], equal_to([ROWS * (ROWS - 1) // 2]), label="sum of ids")


def test_job_writes_each_of_200k_manifest_rows_exactly_once(tmp_path, shared, tiny_model, labels_file):
    photos = write_good_images(tmp_path / "photos", shared)
    uris = [str(tmp_path / "missing" / f"{i}.jpg") for i in range(ROWS)]
    for i, photo in zip(range(0, ROWS, ROWS // len(photos)), photos):
        uris[i] = str(photo)
    pq.write_table(pa.table({"id": pa.array(range(ROWS), pa.int64()), "uri": uris}), tmp_path / "manifest.parquet")

    prefix = tmp_path / "out" / "labels"
    assert label(tmp_path / "manifest.parquet", prefix, tiny_model, labels_file, "--top-k", "1") == 0

    table = read_output(prefix).select(["id", "status", "error_type"])
    ids = table.column("id").to_numpy()
    assert len(ids) == ROWS and len(set(ids.tolist())) == ROWS, "every id exactly once"
    statuses = table.group_by("status").aggregate([("id", "count")]).to_pydict()
    assert dict(zip(statuses["status"], statuses["id_count"])) == {"ok": len(photos), "error": ROWS - len(photos)}
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert success["status"] == "ok" and success["rows_in"] == success["rows"] == ROWS


def test_a_lost_row_fails_the_run_loudly(tmp_path, shared, tiny_model, labels_file, monkeypatch, capsys):
    """A transform that drops a row on purpose: nothing is published, _SUCCESS says failed with both counts and
    where the rows written are kept (`_failed-RUNID/`), and the launcher exits 1 with one line saying how many rows
    are missing."""
    photos = write_good_images(tmp_path / "photos", shared)
    dropped = photos[0].name
    label_rows = pipeline.LabelRows.expand

    def expand_dropping_one_row(self, rows):
        branches = label_rows(self, rows)
        keep = beam.Filter(lambda row: not row["uri"].endswith(dropped))
        return {**branches, "Labelled": branches["Labelled"] | "DropOneRow" >> keep}

    monkeypatch.setattr(pipeline.LabelRows, "expand", expand_dropping_one_row)
    prefix = tmp_path / "out" / "labels"
    assert label(tmp_path / "photos", prefix, tiny_model, labels_file) == 1

    message = capsys.readouterr().err.strip()
    assert f"error: 1 rows missing: {len(photos)} rows in, 0 skipped, {len(photos) - 1} written" in message
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert success["status"] == "failed" and not success["published"] and success["shards"] == []
    assert (success["rows_in"], success["rows"]) == (len(photos), len(photos) - 1)
    kept = f"_failed-{success['run_id']}"
    assert success["failed_folder"] == str(tmp_path / "out" / kept)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_SUCCESS", kept], "incomplete output unpublished"
    uris = pd.read_parquet(tmp_path / "out" / kept).uri
    assert sorted(uris) == sorted(str(p) for p in photos if p.name != dropped), "the rows written are kept"
