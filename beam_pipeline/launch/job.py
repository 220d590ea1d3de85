"""Launch-time checks: turns parsed flags into a JobConfig, or fails with one line naming the flag."""

from __future__ import annotations

import dataclasses
import datetime
import sys
import uuid

from apache_beam.io.filesystems import FileSystems

from beam_pipeline import layout
from beam_pipeline.decode.preprocess import DecodeSpec
from beam_pipeline.decode.reading import DEFAULT_ALLOWED_SCHEMES, ReadPolicy
from beam_pipeline.inputs import checks, incremental
from beam_pipeline.inputs.specs import InputError, InputSpec
from beam_pipeline.model import labels, load, resolve
from beam_pipeline.model.ref import DEFAULT_PRECISION, ModelError, ModelRef, PrecisionError
from beam_pipeline.model.resolve import BackendError
from beam_pipeline.output import publish
from beam_pipeline.output.iceberg import IcebergError, IcebergTarget
from beam_pipeline.pipeline import JobConfig


class LaunchError(Exception):
    """A flag whose value cannot be used; str() is the one-line message, `flag` names the flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(message)
        self.flag = flag


def prepare(
    flags, *, local: bool = True, threads_per_process: int | None = None, model_staging: str | None = None
) -> JobConfig:
    """Checks every flag before any image is read; raises LaunchError. `local`: the workers run on this machine;
    `threads_per_process`: how many cores each worker process may use (None: all of them); `model_staging`: where
    to stage the model for remote workers (None: they load it from where --model says)."""
    if not flags.input:
        raise LaunchError("--input", "is required (a folder, a glob or a manifest of image URIs)")
    if not flags.output:
        raise LaunchError("--output", "is required (an output path prefix)")
    unknown = layout.unknown_placeholders(flags.output)
    if unknown:
        known = " and ".join(layout.PLACEHOLDERS)
        message = f"unknown placeholder {unknown[0]} in {flags.output!r}: the placeholders are {known}"
        raise LaunchError("--output", message)
    if flags.relabel_errors and not flags.skip_labelled:
        raise LaunchError("--relabel-errors", "only applies with --skip-labelled")
    if flags.min_batch_size > flags.max_batch_size:
        raise LaunchError("--min-batch-size", f"{flags.min_batch_size} is larger than --max-batch-size")
    try:
        specs = [checks.check_exists(InputSpec.parse(value)) for value in flags.input]
        carried = checks.carried_schema(specs, flags.uri_column)
    except InputError as exc:
        raise LaunchError("--input", str(exc)) from exc
    from_table = bool(flags.skip_labelled) and flags.skip_labelled == flags.iceberg_table
    try:
        note = incremental.check_earlier_output(flags.skip_labelled) if flags.skip_labelled and not from_table else None
    except incremental.EarlierOutputError as exc:
        raise LaunchError("--skip-labelled", str(exc)) from exc
    try:
        model_ref = resolve.resolve(flags.model, flags.backend, flags.precision)
        # Remote workers' CPUs are not this machine's: whether they run the precision is checked where they load it.
        classifier = load.load(
            model_ref if local else dataclasses.replace(model_ref, precision=DEFAULT_PRECISION),
            embeddings=flags.embeddings,
        )
    except BackendError as exc:
        raise LaunchError("--backend", str(exc)) from exc
    except PrecisionError as exc:
        raise LaunchError("--precision", str(exc)) from exc
    except ModelError as exc:
        raise LaunchError("--model", str(exc)) from exc
    label_names = _label_names(flags, classifier.num_classes)
    if not local:
        model_ref = _staged(model_ref, flags.model_staging or model_staging)
    iceberg = IcebergTarget(flags.iceberg_table, flags.iceberg_catalog) if flags.iceberg_table else None
    if iceberg is not None:
        try:
            iceberg.check()
        except IcebergError as exc:
            raise LaunchError("--iceberg-table", str(exc)) from exc
    skip_labelled = flags.skip_labelled
    if from_table:
        try:
            current = iceberg.current_snapshot()
        except IcebergError as exc:
            raise LaunchError("--skip-labelled", str(exc)) from exc
        skip_labelled = incremental.EarlierTable(iceberg, *(current or (None, 0)))
        if current is None:
            note = f"--skip-labelled: table {iceberg.table} has no snapshot yet (a first run?): every input is labelled"
    if note:
        print(note, file=sys.stderr)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    run_id = layout.new_run_id(started_at)
    output = layout.expand_prefix(flags.output, now=started_at, run_id=run_id)
    _check_writable(output)
    others = publish.other_prefixes(output)
    if others:
        raise LaunchError(
            "--output",
            f"{layout.folder_of(output)} holds the output of prefix {others[0]!r}; give each prefix a folder of "
            "its own (_SUCCESS is per folder)",
        )
    if publish.final_shards(output) and not flags.overwrite:
        raise LaunchError("--output", f"an earlier run's shards exist at {output}; pass --overwrite to replace them")
    return JobConfig(
        inputs=specs,
        expected_rows=checks.count_rows(specs),
        uri_column=flags.uri_column,
        carried=carried,
        output=output,
        overwrite=flags.overwrite,
        run_id=run_id,
        started_at=started_at,
        model=model_ref,
        backend=model_ref.backend,
        labels=label_names,
        top_k=flags.top_k,
        min_batch_size=flags.min_batch_size,
        max_batch_size=flags.max_batch_size,
        read_policy=ReadPolicy(
            max_bytes=flags.max_bytes,
            allowed_schemes=flags.allowed_schemes or default_schemes(local),
            retries=flags.read_retries,
            timeout=flags.read_timeout,
            allow_private_hosts=flags.allow_private_hosts,
            reads_in_flight=flags.reads_in_flight,
            requests_per_host=flags.requests_per_host,
            user_agent=flags.user_agent,
            honour_robots_tag=not flags.ignore_robots_tag,
        ),
        decode_spec=DecodeSpec(size=classifier.input_size, resize=flags.resize, max_pixels=flags.max_image_pixels),
        max_error_fraction=flags.max_error_fraction,
        skip_labelled=skip_labelled,
        relabel_errors=flags.relabel_errors,
        large_model=flags.large_model,
        threads_per_process=threads_per_process,
        iceberg=iceberg,
        # A feature-vector model (no classes) writes its vectors whether or not --embeddings was given.
        embedding_size=classifier.embedding_size,
    )


def _label_names(flags, num_classes: int) -> list[str]:
    """The label file's names, checked against the model's classes; none for a model without a classifier (a
    feature-vector model: its rows get embeddings and null label columns)."""
    if num_classes == 0:
        return []
    try:
        label_names = labels.read_labels(flags.labels)
    except labels.LabelsError as exc:
        raise LaunchError("--labels", str(exc)) from exc
    if len(label_names) != num_classes:
        raise LaunchError(
            "--labels", f"{flags.labels} has {len(label_names)} labels but the model outputs {num_classes} classes"
        )
    if flags.top_k > num_classes:
        raise LaunchError("--top-k", f"{flags.top_k} is more than the model's {num_classes} classes")
    return label_names


def _staged(model_ref: ModelRef, location: str | None) -> ModelRef:
    """The model staged for remote workers; without a location only a model they can read in place is allowed."""
    if location is None:
        if model_ref.kind in ("huggingface", "tfhub"):
            raise LaunchError(
                "--model-staging",
                "remote workers would each download the model from its hub: give --temp_location or --model-staging",
            )
        return model_ref
    try:
        return load.stage_model(model_ref, location)
    except Exception as exc:  # noqa: BLE001 - every cause is reported as one line naming the place
        message = f"cannot stage the model at {location}: {type(exc).__name__}: {exc}"
        raise LaunchError("--model-staging", message) from exc


def default_schemes(local: bool) -> tuple[str, ...]:
    """--allowed-schemes when not given: on remote workers file:// would read the worker's own disk."""
    return DEFAULT_ALLOWED_SCHEMES if local else tuple(s for s in DEFAULT_ALLOWED_SCHEMES if s != "file")


def _check_writable(output: str) -> None:
    """Writes and deletes a probe file beside the output, through Beam's filesystems as the sink will."""
    directory, _ = FileSystems.split(output)
    probe = FileSystems.join(directory, f".beam-image-labeller-write-check-{uuid.uuid4().hex}")
    try:
        FileSystems.mkdirs(directory)
    except Exception:  # noqa: BLE001, S110 - it may exist already; the write below tells
        pass
    try:
        # Not empty: Beam's S3 filesystem cannot close an empty file (it completes a multipart upload of 0 parts).
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # noqa: BLE001 - every cause is reported as one line naming the place
        raise LaunchError("--output", f"cannot write to {directory}: {type(exc).__name__}: {exc}") from exc
