"""The job's own flags. Beam's pipeline options (--runner, ...) are parsed by Beam from what these leave.

They are a plain argparse group rather than a PipelineOptions subclass because `--labels` (the label file) would
collide with Dataflow's `--labels` (job labels) in Beam's global option registry.
"""

from __future__ import annotations

import argparse

from beam_pipeline.decode.limits import DEFAULT_READS_IN_FLIGHT, DEFAULT_REQUESTS_PER_HOST
from beam_pipeline.decode.polite import DEFAULT_USER_AGENT
from beam_pipeline.decode.preprocess import DEFAULT_MAX_IMAGE_PIXELS, RESIZE_MODES
from beam_pipeline.decode.reading import (
    DEFAULT_ALLOWED_SCHEMES,
    DEFAULT_MAX_BYTES,
    DEFAULT_READ_RETRIES,
    DEFAULT_READ_TIMEOUT,
)
from beam_pipeline.model.labels import DEFAULT_LABELS_URL
from beam_pipeline.model.ref import DEFAULT_PRECISION, PRECISIONS
from beam_pipeline.model.resolve import BACKENDS

# Pinned to a commit, so that a new upload to the repo cannot change every run's labels (README, "Models", says
# what is in it); `--model hf://Dimitre/mobilenet_v3_small` without `@` follows `main`, resolved once at launch.
DEFAULT_MODEL = "hf://Dimitre/mobilenet_v3_small@e8d5673c1ba9c9efced1284827e582e51c0caec0"
DEFAULT_RESIZE = "center-crop"  # measured: top-1 77% vs 70% (squash) on ../shared/images/imagenet-sample-100
DEFAULT_MIN_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_SIZE = 64


def _int_at_least(minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        return number

    return parse


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {number}")
    return number


def _positive_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return number


def _scheme_list(value: str) -> tuple[str, ...]:
    schemes = tuple(s.strip().lower() for s in value.split(",") if s.strip())
    if not schemes:
        raise argparse.ArgumentTypeError("expected a comma-separated list of URI schemes")
    return schemes


def _switch(value: str) -> bool:
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value == "true"


class _FlagGroup:
    """An argparse group that also accepts each --multi-word flag as --multi_word, and each switch as --switch=true
    or --switch=false too (Beam's and Flex Templates' style: a template passes every parameter as --name=value)."""

    def __init__(self, group):
        self._group = group

    def add_argument(self, flag: str, **kwargs) -> None:
        aliases = [flag.replace("-", "_").replace("__", "--", 1)] if "-" in flag[2:] else []
        if kwargs.get("action") == "store_true":
            kwargs = {**kwargs, "action": "store", "nargs": "?", "const": True, "default": False, "type": _switch}
            kwargs["metavar"] = "true|false"
        self._group.add_argument(flag, *aliases, **kwargs)


def add_labeller_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the job's flags to `parser`."""
    group = _FlagGroup(parser.add_argument_group("beam-image-labeller"))
    group.add_argument(
        "--input",
        action="append",
        required=True,
        help="Images to label, repeatable: a directory (its image files, recursively), a glob, one image, or a "
        "manifest of URIs (.txt one per line, .csv, .jsonl, .parquet) on any fsspec filesystem.",
    )
    group.add_argument("--uri-column", default="uri", help="Manifest column holding the URIs (default: uri).")
    group.add_argument(
        "--output",
        required=True,
        help="Output path prefix on any filesystem Beam writes (local, gs://, ...); shards are written as "
        "PREFIX-SSSSS-of-NNNNN.parquet, then PREFIX's folder gets _SUCCESS. A prefix ending in / writes "
        "PREFIX/labels-...; {date} (UTC, YYYY-MM-DD) and {run_id} are filled in, e.g. out/dt={date}/.",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an earlier run's shards at --output (default: refuse to launch).",
    )
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="hf://OWNER/REPO[@REVISION], a TF Hub/Kaggle handle URL, a SavedModel directory (local or any "
        f"fsspec URL), or a .tflite file (default: {DEFAULT_MODEL}).",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Runtime for the model: openvino (SavedModels, without TensorFlow), tensorflow, or litert (.tflite "
        "files, without TensorFlow; the [litert] extra). Default: litert for .tflite files, else openvino.",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="Arithmetic of the model on --backend openvino: f32 (exact: TensorFlow's labels) or bf16 (bfloat16, "
        "faster, on CPUs with AMX or AVX512_BF16; it moves a few labels) (default: f32).",
    )
    group.add_argument(
        "--model-staging",
        metavar="LOCATION",
        help="Off the local runner, where the launcher copies the resolved model once for the workers, named by its "
        "content checksum (default: TEMP_LOCATION/beam-image-labeller/models from --temp_location); workers load "
        "and verify that copy and never call a model hub. Local runs load the model in place.",
    )
    group.add_argument(
        "--labels",
        default=DEFAULT_LABELS_URL,
        help="Label file, one class name per line, line i = class id i (default: TensorFlow's ImageNetLabels.txt).",
    )
    group.add_argument("--top-k", type=_int_at_least(1), default=5, help="Classes kept per image (default: 5).")
    group.add_argument(
        "--embeddings",
        action="store_true",
        help="Also write each image's embedding (the input of the model's final classifier layer, from the same "
        "forward pass: 1024 float32 for MobileNetV3-Small) in an `embedding` column. A feature-vector model as --model "
        "writes embeddings and no labels.",
    )
    group.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default=DEFAULT_RESIZE,
        help="squash: the whole image to the model's size; center-crop: the central 87.5%% of the shorter side "
        f"(default: {DEFAULT_RESIZE}, the more accurate on the ImageNet sample).",
    )
    group.add_argument(
        "--min-batch-size",
        type=_int_at_least(1),
        default=DEFAULT_MIN_BATCH_SIZE,
        help=f"Smallest batch RunInference sends to the model (default: {DEFAULT_MIN_BATCH_SIZE}).",
    )
    group.add_argument(
        "--max-batch-size",
        type=_int_at_least(1),
        default=DEFAULT_MAX_BATCH_SIZE,
        help=f"Largest batch RunInference sends to the model (default: {DEFAULT_MAX_BATCH_SIZE}).",
    )
    group.add_argument(
        "--max-bytes",
        type=_int_at_least(1),
        default=DEFAULT_MAX_BYTES,
        help="Larger files become FileTooLarge error rows (default: 50000000).",
    )
    group.add_argument(
        "--max-image-pixels",
        type=_int_at_least(1),
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="Images with more pixels become ImageTooLarge error rows, checked before decoding (default: 1e8).",
    )
    group.add_argument(
        "--allowed-schemes",
        type=_scheme_list,
        help=f"URI schemes that may be read; others become error rows (default: {','.join(DEFAULT_ALLOWED_SCHEMES)}; "
        "without file on runners other than the local one, where a worker's own disk is nobody's input).",
    )
    group.add_argument(
        "--allow-private-hosts",
        action="store_true",
        help="Allow http(s) URIs whose host is loopback, link-local or private, and follow redirects (default: "
        "refused, as BlockedHost rows).",
    )
    group.add_argument(
        "--read-retries",
        type=_int_at_least(0),
        default=DEFAULT_READ_RETRIES,
        help="Retries of a read that failed transiently (timeouts, resets, HTTP 429/5xx), with exponential backoff "
        f"(default: {DEFAULT_READ_RETRIES}).",
    )
    group.add_argument(
        "--read-timeout",
        type=_positive_seconds,
        default=DEFAULT_READ_TIMEOUT,
        help="Seconds one read attempt may wait to connect, and then for each next part of the response, on http(s), "
        f"gs and s3; then it is retried per --read-retries (default: {DEFAULT_READ_TIMEOUT:g}).",
    )
    group.add_argument(
        "--reads-in-flight",
        type=_int_at_least(1),
        default=DEFAULT_READS_IN_FLIGHT,
        help="http(s), gs and s3 reads one worker process keeps in flight at once, apart from its decode threads "
        f"(default: {DEFAULT_READS_IN_FLIGHT}).",
    )
    group.add_argument(
        "--requests-per-host",
        type=_int_at_least(1),
        default=DEFAULT_REQUESTS_PER_HOST,
        help="http(s) requests one worker process sends one host at once (a job's total is this times its worker "
        f"processes) (default: {DEFAULT_REQUESTS_PER_HOST}).",
    )
    group.add_argument(
        "--user-agent",
        default=DEFAULT_USER_AGENT,
        help=f"User-Agent of http(s) requests (default: {DEFAULT_USER_AGENT}).",
    )
    group.add_argument(
        "--ignore-robots-tag",
        action="store_true",
        help="Read http(s) images whose response says X-Robots-Tag noai or noimageai (default: such images become "
        "Disallowed rows, refused before the body is read).",
    )
    group.add_argument(
        "--max-error-fraction",
        type=_fraction,
        default=1.0,
        help="Exit non-zero (after writing every row) when more than this fraction of inputs failed (default: 1).",
    )
    group.add_argument(
        "--skip-labelled",
        metavar="GLOB_OR_FOLDER_OR_TABLE",
        help="Output of earlier runs (a folder or a glob, e.g. 'out/dt=*/*'; only this job's published shards "
        "count), or the --iceberg-table's name: inputs it labelled, or that failed permanently, with the same model "
        "are not labelled again; transient failures are retried (checked inside the pipeline).",
    )
    group.add_argument(
        "--relabel-errors",
        action="store_true",
        help="With --skip-labelled: retry every URI whose earlier row is an error, permanent ones too (default: only "
        "transient failures are retried).",
    )
    group.add_argument(
        "--iceberg-table",
        metavar="NAMESPACE.TABLE",
        help="Also commit the run's shards to this Apache Iceberg table, in one snapshot, in the run's final step "
        "(created from the output schema on first use; needs the `iceberg` extra).",
    )
    group.add_argument(
        "--iceberg-catalog",
        default="default",
        help="The pyiceberg catalog: a name from .pyiceberg.yaml, or properties inline, e.g. "
        "'type=sql,uri=sqlite:///PATH/catalog.db,warehouse=file:///PATH' (default: the catalog named default).",
    )
    group.add_argument(
        "--quiet",
        action="store_true",
        help="No progress line while a local run runs (it is printed to stderr every 5 s by default).",
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="Let TensorFlow, absl and Beam print their own notices and warnings (hidden by default).",
    )
    group.add_argument(
        "--large-model",
        action="store_true",
        help="Share one model per machine instead of one per worker process (Beam's share_model_across_processes).",
    )
