"""Builds output rows (see schema.py) for labelled and failed inputs."""

from __future__ import annotations

import datetime

from apache_beam.ml.inference.base import PredictionResult

from beam_pipeline import errors
from beam_pipeline.schema import ERROR_KIND_PERMANENT, ERROR_KIND_TRANSIENT, STATUS_ERROR, STATUS_OK

METRICS_NAMESPACE = "beam_image_labeller"


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
