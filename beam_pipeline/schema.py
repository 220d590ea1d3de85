"""The output record: one Parquet row per input URI, with an explicit pyarrow schema."""

from __future__ import annotations

import pyarrow as pa

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
