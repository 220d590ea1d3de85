"""The pipeline graph: expand inputs -> decode -> RunInference -> one Parquet row per input."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_pipeline import errors, outputs
from beam_pipeline.decode import FAILED_TAG, DecodeImage
from beam_pipeline.handler import ImageClassifierHandler
from beam_pipeline.incremental import SkipLabelled
from beam_pipeline.inputs import ExpandInputs
from beam_pipeline.job import JobConfig
from beam_pipeline.records import METRICS_NAMESPACE, error_row, labelled_row
from beam_pipeline.schema import output_schema

PARQUET_CODEC = "snappy"  # Beam's WriteToParquet default is no compression


def build(pipeline: beam.Pipeline, job: JobConfig) -> None:
    """Adds the labelling job to `pipeline`."""
    handler = ImageClassifierHandler(
        job.model,
        job.labels,
        top_k=job.top_k,
        min_batch_size=job.min_batch_size,
        max_batch_size=job.max_batch_size,
        large_model=job.large_model,
    )
    rows = pipeline | "ExpandInputs" >> ExpandInputs(job.inputs, job.uri_column, job.carried)
    if job.skip_labelled:
        rows = rows | "SkipLabelled" >> SkipLabelled(job.skip_labelled, job.model.model_id, job.relabel_errors)
    decoded = rows | "Decode" >> beam.ParDo(
        DecodeImage(
            size=job.input_size,
            resize=job.resize,
            max_bytes=job.max_bytes,
            max_pixels=job.max_image_pixels,
            allowed_schemes=job.allowed_schemes,
            allow_private_hosts=job.allow_private_hosts,
            read_retries=job.read_retries,
            read_timeout=job.read_timeout,
            model_id=job.model.model_id,
        )
    ).with_outputs(FAILED_TAG, main="decoded")
    predictions, dead_letters = (
        decoded.decoded | "Classify" >> RunInference(KeyedModelHandler(handler)).with_exception_handling()
    )
    labelled = predictions | "LabelledRows" >> beam.MapTuple(_count_labelled)
    inference_failed = dead_letters.failed_inferences | "InferenceErrorRows" >> beam.FlatMap(
        _inference_error_rows, model_id=job.model.model_id
    )
    (
        (labelled, decoded[FAILED_TAG], inference_failed)
        | "AllRows" >> beam.Flatten()
        | "WriteParquet"
        >> WriteToParquet(
            job.output,
            schema=output_schema(job.carried),
            codec=PARQUET_CODEC,
            use_compliant_nested_type=True,
            file_name_suffix=outputs.SHARD_SUFFIX,
        )
    )


def _count_labelled(row: dict, prediction) -> dict:
    Metrics.counter(METRICS_NAMESPACE, "images_labelled").inc()
    return labelled_row(row, prediction)


def _inference_error_rows(failed_batch, *, model_id: str):
    """A batch the model raised on: every row in it becomes an InferenceError row."""
    batch, exc = failed_batch
    for row, _pixels in batch:
        Metrics.counter(METRICS_NAMESPACE, "images_failed").inc()
        Metrics.counter(METRICS_NAMESPACE, f"failed_{errors.INFERENCE_ERROR}").inc()
        yield error_row(row, exc, error_type=errors.INFERENCE_ERROR, model_id=model_id)
