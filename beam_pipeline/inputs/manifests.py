"""Manifest files (.txt, .csv, .jsonl, .parquet): their columns' types at launch, and their rows, streamed.

Types cover the whole manifest and a row never fails the run:
- Parquet: each file's footer. CSV: the header, types inferred by pyarrow from the first block (later values
  whose text does not convert become BadManifestRow rows). JSON Lines: one pass over every line at launch (streamed,
  nothing kept but the columns), the first non-null value of a column fixing its type, an integer column widened
  to float where floats appear; a later value of another type makes its row a BadManifestRow row.
- Columns that disagree between manifests are a launch error naming the files and the column.
- An empty field of a CSV manifest is null. Blank lines and `#` comments of a .txt manifest are not rows.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from beam_pipeline.records import MANIFEST_ERROR_KEY

MANIFEST_BATCH_ROWS = 8192  # Parquet manifest rows turned into dicts at a time
TXT_COMMENT = "#"  # .txt manifest lines starting with it are comments
CSV_NULL_VALUES = [""]  # only an empty CSV field is null ("NA" stays the text NA)


class ManifestError(ValueError):
    """A manifest whose columns cannot be used; the message names the file and what was found."""


def manifest_schema(path: str, manifest_format: str, uri_column: str) -> pa.Schema:
    """All columns of one manifest with their types (see the module docstring for how each format is read)."""
    with fsspec.open(path, "rb") as f:
        if manifest_format == "parquet":
            schema = pq.read_schema(f)
        elif manifest_format == "csv":
            skip_bad_rows = pa_csv.ParseOptions(invalid_row_handler=lambda row: "skip")  # they say nothing of types
            schema = pa_csv.open_csv(f, parse_options=skip_bad_rows).schema
        else:
            schema = _jsonl_schema(f)
    duplicates = sorted({name for name in schema.names if schema.names.count(name) > 1})
    if duplicates:
        raise ManifestError(f"manifest {path} has the column {duplicates[0]!r} more than once")
    if uri_column not in schema.names:
        found = ", ".join(repr(n) for n in schema.names[:5]) or "none"
        hint = " (only comma-separated CSV is read)" if manifest_format == "csv" and len(schema.names) == 1 else ""
        raise ManifestError(f"manifest {path} has no column {uri_column!r}; columns found: {found}{hint}")
    return schema


def _jsonl_schema(lines) -> pa.Schema:
    types: dict[str, pa.DataType] = {}
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue  # malformed lines become error rows later; they say nothing about the columns
        if not isinstance(row, dict):
            continue
        for name, value in row.items():
            if value is None:
                continue
            try:
                kind = pa.scalar(value).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                continue  # such a value makes its row a BadManifestRow; it cannot type a column
            if name not in types:
                types[name] = kind
            elif types[name] == pa.int64() and kind == pa.float64():
                types[name] = kind
    return pa.schema(types)


def read_manifest(path: str, manifest_format: str, uri_column: str, carried: pa.Schema) -> Iterator[dict]:
    """Streams a manifest's rows as dicts (never the whole file at once); unusable rows carry MANIFEST_ERROR_KEY."""
    with fsspec.open(path, "rb") as f:
        if manifest_format == "txt":
            # Undecodable bytes become U+FFFD: such a URI then fails as one NotFound row instead of the whole file.
            # utf-8-sig drops a byte order mark.
            for line in io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace"):
                if line.strip() and not line.lstrip().startswith(TXT_COMMENT):
                    yield {uri_column: line.strip()}
        elif manifest_format == "jsonl":
            for line in f:
                if line.strip():
                    yield json_row(line, uri_column, carried)
        elif manifest_format == "csv":
            yield from _csv_rows(f, uri_column, carried)
        else:
            parquet = pq.ParquetFile(f)  # one footer read: its schema picks the columns this file has
            columns = [uri_column] + [n for n in carried.names if n in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=MANIFEST_BATCH_ROWS, columns=columns):
                yield from batch.to_pylist()


def json_row(line: bytes, uri_column: str, carried: pa.Schema) -> dict:
    """One JSON Lines row; a line that is not a JSON object, or a value of the wrong type, makes a BadManifestRow."""
    try:
        row = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        return bad_row(None, uri_column, f"a line that is not JSON: {line.strip()[:200]!r}")
    if not isinstance(row, dict):
        return bad_row(None, uri_column, f"a JSON line that is not an object: {line.strip()[:200]!r}")
    for field in carried:
        value = row.get(field.name)
        if value is not None and not _fits(value, field.type):
            return bad_row(row.get(uri_column), uri_column, _misfit(field, value))
    return row


def _fits(value: object, type_: pa.DataType) -> bool:
    try:
        pa.scalar(value, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False
    return not (isinstance(value, str) and not pa.types.is_string(type_))


def _csv_rows(f, uri_column: str, carried: pa.Schema) -> Iterator[dict]:
    """CSV rows with carried columns converted to their launch types; a field that does not convert (or a row
    with the wrong number of fields) makes its row a BadManifestRow. Fields are read as text first, because pyarrow's
    typed reader stops the whole file at the first value that does not convert."""
    bad_lines: list[str] = []

    def keep_bad_line(row) -> str:
        bad_lines.append(row.text)
        return "skip"

    as_text = {name: pa.string() for name in [uri_column, *carried.names]}
    reader = pa_csv.open_csv(
        f,
        convert_options=pa_csv.ConvertOptions(
            column_types=as_text, strings_can_be_null=True, null_values=CSV_NULL_VALUES
        ),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=keep_bad_line),
    )
    for batch in reader:
        columns = {name: batch.column(name) for name in batch.schema.names}
        misfits: dict[int, str] = {}
        for field in carried:
            if field.name in columns and not pa.types.is_string(field.type):
                columns[field.name] = _convert(columns[field.name], field, misfits)
        for i, row in enumerate(pa.table(columns).to_pylist()):
            yield bad_row(row.get(uri_column), uri_column, misfits[i]) if i in misfits else row
        while bad_lines:
            yield bad_row(None, uri_column, f"a CSV row with the wrong number of fields: {bad_lines.pop(0)!r}")


def _convert(text: pa.Array, field: pa.Field, misfits: dict[int, str]) -> pa.Array:
    """Text to the column's type, at once; value by value only when some value does not convert."""
    try:
        return text.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = []
    for i, value in enumerate(text.to_pylist()):
        try:
            values.append(None if value is None else pa.scalar(value).cast(field.type).as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values.append(None)
            misfits.setdefault(i, _misfit(field, value))
    return pa.array(values, field.type)


def _misfit(field: pa.Field, value: object) -> str:
    return f"column {field.name!r} has {value!r}, which is not {field.type} like the rest of the column"


def bad_row(uri: object, uri_column: str, problem: str) -> dict:
    """A manifest row that could not be used: it still comes out, as a BadManifestRow error row."""
    return {uri_column: uri, MANIFEST_ERROR_KEY: problem}
