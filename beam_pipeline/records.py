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
    pa.field("model", pa.string()),
    pa.field("labelled_at", pa.timestamp("us", tz="UTC")),
]
RESERVED_NAMES = frozenset(f.name for f in LEADING_FIELDS + RESULT_FIELDS)


def output_schema(carried: pa.Schema | None = None) -> pa.Schema:
    """The full output schema: `uri`, the manifest's carried columns, then the result columns."""
    carried_fields = list(carried) if carried is not None else []
    return pa.schema(LEADING_FIELDS + carried_fields + RESULT_FIELDS)


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
    """The output row of an input the model labelled; `row` holds uri, carried columns, width and height."""
    top_k = [{"class_id": c.class_id, "label": c.label, "score": c.score} for c in prediction.inference]
    return {
        **row,
        "status": STATUS_OK,
        "error_type": None,
        "error_kind": None,
        "error": None,
        "label": top_k[0]["label"],
        "score": top_k[0]["score"],
        "top_k": top_k,
        "model": prediction.model_id,
        "labelled_at": _now(),
    }


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
        "model": model_id,
        "labelled_at": _now(),
    }
