"""Incremental runs: drop input rows whose URI earlier runs already labelled with the same model.

The earlier output is joined with a CoGroupByKey on the URI inside the pipeline, so a nightly run over a growing
manifest never holds the set of labelled URIs in one process.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.parquetio import ReadAllFromParquet

from beam_pipeline.schema import STATUS_OK

SKIPPED_TAG = "skipped"


class SkipLabelled(beam.PTransform):
    """Rows -> (the rows whose URI no earlier output (a glob of Parquet shards) holds for `model_id`, the count of
    rows skipped).

    By default an earlier error row counts as done too; with `relabel_errors` only `ok` rows do.
    """

    def __init__(self, previous_output_glob: str, model_id: str, relabel_errors: bool):
        super().__init__()
        self._glob = previous_output_glob
        self._model_id = model_id
        self._relabel_errors = relabel_errors

    def expand(self, rows):
        done = (
            rows.pipeline
            | "PreviousOutput" >> beam.Create([self._glob])
            # Beam's own reader: a glob that matches nothing (the first night) reads nothing.
            | "ReadPrevious" >> ReadAllFromParquet(columns=["uri", "status", "model"])
            | "SameModel" >> beam.Filter(self._counts_as_done)
            | "DoneByUri" >> beam.Map(lambda row: (row["uri"], True))
        )
        todo = rows | "ByUri" >> beam.Map(lambda row: (row["uri"], row))
        joined = (
            {"todo": todo, "done": done}
            | "JoinOnUri" >> beam.CoGroupByKey()
            | "NotYetLabelled" >> beam.FlatMap(_rows_not_done).with_outputs(SKIPPED_TAG, main="todo")
        )
        return joined.todo, joined[SKIPPED_TAG] | "CountSkipped" >> beam.combiners.Count.Globally()

    def _counts_as_done(self, row: dict) -> bool:
        return row["model"] == self._model_id and (row["status"] == STATUS_OK or not self._relabel_errors)


def _rows_not_done(joined: tuple) -> Iterator:
    _, groups = joined
    skip = any(True for _ in groups["done"])
    for row in groups["todo"]:
        yield beam.pvalue.TaggedOutput(SKIPPED_TAG, row["uri"]) if skip else row
