"""The rows that travel through the job and the output record they end as: its explicit pyarrow schema and the
builders of labelled and failed rows. Shared by every stage."""

from __future__ import annotations

import datetime
import os
import posixpath

import pyarrow as pa
from apache_beam.ml.inference.base import PredictionResult

from beam_pipeline import errors

METRICS_NAMESPACE = "beam_image_labeller"
# Set on an input row that could not be parsed from its manifest; read (and dropped) by the decode step.
MANIFEST_ERROR_KEY = "_manifest_error"

STATUS_OK = "ok"
STATUS_ERROR = "error"
# error_kind of an error row: a permanent failure stays failed on a rerun; a transient one may not (see errors.py).
ERROR_KIND_PERMANENT = "permanent"
ERROR_KIND_TRANSIENT = "transient"

TOP_K_TYPE = pa.list_(
    pa.struct(
        [
            pa.field("class_id", pa.int32()),
            pa.field("label", pa.string()),
            pa.field("score", pa.float32()),
        ]
    )
)

# Columns before the manifest's carried columns, then the result columns after them.
LEADING_FIELDS = [pa.field("uri", pa.string())]
RESULT_FIELDS = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_type", pa.string()),
    pa.field("error_kind", pa.string()),
    pa.field("error", pa.string()),
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("top_k", TOP_K_TYPE),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("content_sha256", pa.string()),  # hex sha256 of the bytes read; null when nothing was read
    pa.field("phash", pa.string()),  # 64-bit perceptual hash, 16 hex digits; null when the image did not decode
    pa.field("model", pa.string()),
    pa.field("labelled_at", pa.timestamp("us", tz="UTC")),
]
# With --embeddings, last: float32 vectors of the model's embedding size (1024 for MobileNetV3-Small), null on error
# rows. A variable-size list, each of one length: a fixed-size list would let Arrow readers see the size, but
# Arrow C++ before pyarrow 26 cannot read a null fixed-size list back from Parquet (apache/arrow#35692: "Expected all
# lists to be of size=1024 but index 1 had size=0"), and every run with an error row has one. DuckDB's Parquet reader
# sees FLOAT[] either way (Parquet keeps no list size): `embedding::FLOAT[1024]` makes it an ARRAY.
EMBEDDING = "embedding"
EMBEDDING_TYPE = pa.list_(pa.float32())
RESERVED_NAMES = frozenset(f.name for f in LEADING_FIELDS + RESULT_FIELDS) | {EMBEDDING}


def output_schema(carried: pa.Schema | None = None, embedding_size: int | None = None) -> pa.Schema:
    """The full output schema: `uri`, the manifest's carried columns, the result columns, and with embeddings of
    `embedding_size` the `embedding` column."""
    carried_fields = list(carried) if carried is not None else []
    embedding = [pa.field(EMBEDDING, EMBEDDING_TYPE)] if embedding_size else []
    return pa.schema(LEADING_FIELDS + carried_fields + RESULT_FIELDS + embedding)


def model_identity(model: str | None) -> str | None:
    """The `model` column's value as --skip-labelled compares it: one spelling per model.

    `hf://OWNER/REPO@REVISION` (the revision is pinned at launch) and URLs lose a trailing `/` and `.` segments; a
    local path is made absolute and normalised (`models/float/`, `./models/float` and `/abs/models/float` are one
    model; an older run's relative path is taken from this working directory).
    """
    if not model:
        return None
    if "://" in model:
        scheme, rest = model.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest) if rest.strip('/') else rest}"
    return os.path.normpath(os.path.abspath(os.path.expanduser(model)))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def labelled_row(row: dict, prediction: PredictionResult) -> dict:
    """The output row of an input the model labelled; `row` holds uri, carried columns, width, height and content
    identity. A feature-vector model has no classes: its label columns are null. An embedding, when there is one,
    stays a numpy array (the sink builds its column in one piece)."""
    top_k = [{"class_id": c.class_id, "label": c.label, "score": c.score} for c in prediction.inference.top_k]
    labelled = {
        **row,
        "status": STATUS_OK,
        "error_type": None,
        "error_kind": None,
        "error": None,
        "label": top_k[0]["label"] if top_k else None,
        "score": top_k[0]["score"] if top_k else None,
        "top_k": top_k or None,
        "model": prediction.model_id,
        "labelled_at": _now(),
    }
    if prediction.inference.embedding is not None:
        labelled[EMBEDDING] = prediction.inference.embedding
    return labelled


def error_row(row: dict, exc: BaseException, *, error_type: str, model_id: str) -> dict:
    """The output row of an input that failed; carried columns pass through unchanged."""
    return {
        **row,
        "status": STATUS_ERROR,
        "error_type": error_type,
        "error_kind": ERROR_KIND_TRANSIENT if errors.is_transient(exc, error_type) else ERROR_KIND_PERMANENT,
        "error": errors.describe(exc),
        "label": None,
        "score": None,
        "top_k": None,
        "width": row.get("width"),
        "height": row.get("height"),
        "content_sha256": row.get("content_sha256"),
        "phash": row.get("phash"),
        "model": model_id,
        "labelled_at": _now(),
    }
