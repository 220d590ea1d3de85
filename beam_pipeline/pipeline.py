"""The pipeline graph: expand inputs -> decode -> RunInference -> one Parquet row per input -> finalize."""

from __future__ import annotations

import dataclasses
import datetime

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_pipeline import errors
from beam_pipeline.decode.dofn import FAILED_TAG, DecodeImage
from beam_pipeline.decode.preprocess import DecodeSpec
from beam_pipeline.decode.reading import ReadPolicy
from beam_pipeline.inputs.expand import ExpandInputs
from beam_pipeline.inputs.incremental import EarlierTable, SkipLabelled
from beam_pipeline.inputs.specs import InputSpec
from beam_pipeline.layout import staging_prefix
from beam_pipeline.model.handler import ImageClassifierHandler
from beam_pipeline.model.ref import ModelRef
from beam_pipeline.output.finalize import FinalizeRun, RowStats, RunInfo
from beam_pipeline.output.iceberg import IcebergTarget
from beam_pipeline.output.sink import WriteParquetFiles
from beam_pipeline.records import METRICS_NAMESPACE, STATUS_OK, error_row, labelled_row, output_schema


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything the pipeline needs, checked and resolved in the launcher."""

    inputs: list[InputSpec]
    expected_rows: int | None  # known at launch for Parquet manifests and local folders (for progress lines)
    uri_column: str
    carried: pa.Schema
    output: str
    overwrite: bool
    run_id: str
    started_at: datetime.datetime
    model: ModelRef
    backend: str  # the runtime every worker loads the model with (also in model.backend, which the handler reads)
    labels: list[str]
    top_k: int
    min_batch_size: int
    max_batch_size: int
    read_policy: ReadPolicy
    decode_spec: DecodeSpec  # its size is the model's input size
    max_error_fraction: float
    skip_labelled: str | EarlierTable | None  # earlier output (a folder or glob, or the table) whose finished URIs
    # are left out
    relabel_errors: bool
    large_model: bool
    threads_per_process: int | None  # model and decode threads of one worker process; None: every core
    iceberg: IcebergTarget | None
    embedding_size: int | None = None  # --embeddings (or a feature-vector model): the embedding's length

    @property
    def schema(self) -> pa.Schema:
        """The output schema of this job's rows."""
        return output_schema(self.carried, self.embedding_size)


def build(pipeline: beam.Pipeline, job: JobConfig, *, spread_rows: bool = True) -> beam.PCollection:
    """Adds the labelling job to `pipeline`; returns the PCollection of the run's summary record.

    `spread_rows` reshuffles the input rows over the workers. Leave it off only where one worker runs every stage
    (the local in-memory runner): there it gains nothing and holds every row in memory.
    """
    rows = pipeline | "ExpandInputs" >> ExpandInputs(job.inputs, job.uri_column, job.carried, spread=spread_rows)
    rows_in = rows | "CountRowsIn" >> beam.combiners.Count.Globally()
    if job.skip_labelled:
        rows, skipped, shards_matched = rows | "SkipLabelled" >> SkipLabelled(
            job.skip_labelled, job.model.model_id, job.relabel_errors, embeddings=job.embedding_size is not None
        )
        rows_skipped = skipped | "CountSkipped" >> beam.combiners.Count.Globally()
        skipped_failed = (
            skipped
            | "FailedEarlier" >> beam.Filter(lambda status: status != STATUS_OK)
            | "CountSkippedFailed" >> beam.combiners.Count.Globally()
        )
    else:
        rows_skipped = pipeline | "NoneSkipped" >> beam.Create([0])
        skipped_failed = pipeline | "NoneSkippedFailed" >> beam.Create([0])
        shards_matched = pipeline | "NoEarlierOutput" >> beam.Create([None])
    # Two batches of rows pending in the decode step, on every layout: the model runs on the bundle's thread, so the
    # rows read while it runs are all that is ready for the next batch (plus --reads-in-flight still reading).
    branches = rows | "LabelRows" >> LabelRows(job, decode_in_flight=2 * job.max_batch_size)
    # Each branch of rows is written and counted on its own: FnApiRunner materialises every multi-input Flatten,
    # which would hold the whole output in memory (measured: +2 KB per row). Only file names and counts are merged.
    staging = staging_prefix(job.output, job.run_id)
    files, stats = [], []
    for name, branch in branches.items():
        files.append(branch | f"Write{name}" >> WriteParquetFiles(staging, job.schema))
        stats.append(branch | f"Count{name}" >> beam.CombineGlobally(RowStats()))
    return {
        "shards": files | "AllFiles" >> beam.Flatten(),
        "row_stats": stats | "AllCounts" >> beam.Flatten(),
        "rows_in": rows_in,
        "rows_skipped": rows_skipped,
        "rows_skipped_failed": skipped_failed,
        "earlier_shards": shards_matched,
    } | "Finalize" >> FinalizeRun(run_info(job))


class LabelRows(beam.PTransform):
    """Input rows -> output rows, one each: decoded and labelled, or an error row saying why not.

    The output is a dict of three PCollections of rows: `Labelled`, `Failed` (could not be read or decoded) and
    `InferenceFailed` (the model raised on their batch).
    """

    def __init__(self, job: JobConfig, *, decode_in_flight: int | None = None):
        super().__init__()
        self._job = job
        self._decode_in_flight = decode_in_flight

    def expand(self, rows):
        job = self._job
        handler = ImageClassifierHandler(
            job.model,
            job.labels,
            top_k=job.top_k,
            min_batch_size=job.min_batch_size,
            max_batch_size=job.max_batch_size,
            large_model=job.large_model,
            num_threads=job.threads_per_process,
            embeddings=job.embedding_size is not None,
        )
        decoded = rows | "Decode" >> beam.ParDo(
            DecodeImage(
                job.read_policy,
                job.decode_spec,
                model_id=job.model.model_id,
                # At least 2 decode threads, so that one image's read overlaps another's decode.
                threads=None if job.threads_per_process is None else max(2, job.threads_per_process),
                in_flight=self._decode_in_flight,
            )
        ).with_outputs(FAILED_TAG, main="decoded")
        predictions, dead_letters = (
            decoded.decoded | "Classify" >> RunInference(KeyedModelHandler(handler)).with_exception_handling()
        )
        labelled = predictions | "LabelledRows" >> beam.MapTuple(_count_labelled)
        inference_failed = dead_letters.failed_inferences | "InferenceErrorRows" >> beam.FlatMap(
            _inference_error_rows, model_id=job.model.model_id
        )
        return {"Labelled": labelled, "Failed": decoded[FAILED_TAG], "InferenceFailed": inference_failed}


def run_info(job: JobConfig) -> RunInfo:
    return RunInfo(
        run_id=job.run_id,
        started_at=job.started_at,
        output=job.output,
        schema=job.schema,
        overwrite=job.overwrite,
        iceberg=job.iceberg,
        model_id=job.model.model_id,
        model_spec=job.model.spec,
        model_revision=job.model.revision,
        backend=job.backend,
        max_error_fraction=job.max_error_fraction,
    )


def _count_labelled(row: dict, prediction) -> dict:
    Metrics.counter(METRICS_NAMESPACE, "images_labelled").inc()
    return labelled_row(row, prediction)


def _inference_error_rows(failed_batch, *, model_id: str):
    """A batch the model raised on: every row in it becomes an InferenceError row naming what the model raised."""
    batch, exc_info = failed_batch
    error = _dead_letter_error(*exc_info)
    for row, _pixels in batch:
        Metrics.counter(METRICS_NAMESPACE, "images_failed").inc()
        Metrics.counter(METRICS_NAMESPACE, f"failed_{errors.INFERENCE_ERROR}").inc()
        # error_row describes an exception object, which the dead letter does not carry: `error` is set from its text.
        failed = error_row(row, Exception(error), error_type=errors.INFERENCE_ERROR, model_id=model_id)
        yield {**failed, "error": error}


def _dead_letter_error(exc_type: type, exc_repr: str, _formatted_traceback: list[str]) -> str:
    """`ExceptionType: message` (errors.describe's form) from what RunInference's dead-letter output carries.

    `failed_inferences` holds (batch, (exception type, repr(exception), traceback lines)), not the exception: the
    handler raises errors.BatchFailed, whose repr is the model's error described. Anything else (raised by Beam's
    own code around the handler) is named by its type and repr.
    """
    if issubclass(exc_type, errors.BatchFailed):
        return exc_repr
    return f"{exc_type.__name__}: {exc_repr}"
