"""Turns `--input` values (globs, directories, manifests) into rows of {uri, carried columns}, inside the pipeline.

Expansion runs in a DoFn on a worker and streams: directories are walked, manifests are read in record batches,
so neither the launcher nor a worker ever holds a whole dataset. Beam's own file IOs read through Beam's
filesystems; fsspec is used here because it reaches the same stores plus memory:// and http(s) listings with one
API, and pyarrow's streaming readers take fsspec file objects directly.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.io.textio import ReadAllFromText
from fsspec.core import split_protocol

from beam_pipeline.inputs import manifests
from beam_pipeline.inputs.fanout import ListInPages, page_rows
from beam_pipeline.inputs.specs import InputSpec, image_uris, matching_files
from beam_pipeline.records import MANIFEST_ERROR_KEY
from beam_pipeline.worker import TALLY


class ExpandInputs(beam.PTransform):
    """InputSpecs -> rows {uri_column: uri, carried...}; with `spread`, read in parallel and reshuffled over workers.

    Without `spread` (one local worker) every input is streamed by one DoFn. With it, Parquet, .txt and .jsonl
    manifests on Beam's filesystems (gs, s3, local, ...) are read by Beam's splittable readers, so a
    10-million-row manifest is read by many workers a byte range or row group each; folders and globs are listed
    by sub-prefix on many workers, in pages of URIs that are reshuffled and turned into rows (`inputs/fanout.py`);
    CSV (quoted fields may hold newlines, so it cannot be split by byte ranges) and manifests on fsspec-only stores
    are streamed by one worker each. The rows are then reshuffled so that decoding spreads over every worker.
    """

    def __init__(self, specs: list[InputSpec], uri_column: str, carried: pa.Schema, *, spread: bool = True):
        super().__init__()
        self._specs = specs
        self._uri_column = uri_column
        self._carried = carried
        self._spread = spread

    def expand(self, pbegin):
        split = [s for s in self._specs if self._spread and splittable(s)]
        listed = [s for s in self._specs if self._spread and s.manifest_format is None]
        streamed = [s for s in self._specs if s not in split and s not in listed]
        parts = []
        if listed:
            parts.append(
                pbegin
                | "ImageSpecs" >> beam.Create(listed)
                | "ListPages" >> ListInPages()
                | "SpreadPages" >> beam.Reshuffle()
                | "PageRows" >> beam.FlatMap(page_rows, carried=self._carried)
            )
        if streamed:
            parts.append(
                pbegin
                | "InputSpecs" >> beam.Create(streamed)
                | "ListUris" >> beam.FlatMap(expand_input, uri_column=self._uri_column, carried=self._carried)
            )
        for fmt in ("parquet", "txt", "jsonl"):
            files = [path for spec in split if spec.manifest_format == fmt for path in matching_files(spec)]
            if files:
                parts.append(pbegin | f"Read{fmt.capitalize()}" >> self._read_in_parallel(fmt, files))
        rows = parts[0] if len(parts) == 1 else parts | "AllInputs" >> beam.Flatten()
        return rows | "SpreadOverWorkers" >> beam.Reshuffle() if self._spread else rows

    def _read_in_parallel(self, manifest_format: str, files: list[str]) -> beam.PTransform:
        uri_column, carried = self._uri_column, self._carried

        def read(pbegin):
            names = pbegin | "Files" >> beam.Create(files)
            if manifest_format == "parquet":
                tables = names | "RowGroups" >> ReadAllFromParquetBatched(with_filename=True)
                return tables | "Rows" >> beam.FlatMap(_parquet_rows, uri_column=uri_column, carried=carried)
            lines = names | "Lines" >> ReadAllFromText(coder=coders.BytesCoder(), with_filename=True)
            return lines | "Rows" >> beam.FlatMap(
                _line_row, manifest_format=manifest_format, uri_column=uri_column, carried=carried
            )

        return beam.ptransform_fn(read)()


def splittable(spec: InputSpec) -> bool:
    """Whether Beam's splittable readers can read this manifest (its format splits, Beam reaches its store)."""
    if spec.manifest_format not in ("parquet", "txt", "jsonl"):
        return False
    try:
        FileSystems.get_filesystem(spec.path)
    except ValueError:  # a scheme only fsspec knows (memory://, http://, ...)
        return False
    return True


def _parquet_rows(file_and_table: tuple[str, pa.Table], *, uri_column: str, carried: pa.Schema) -> Iterator[dict]:
    """A row group's rows, as dicts a record batch at a time (a whole 1M-row group as dicts is ~1 GB)."""
    path, table = file_and_table
    table = table.select([uri_column, *(n for n in carried.names if n in table.column_names)])
    for batch in table.to_batches(max_chunksize=manifests.MANIFEST_BATCH_ROWS):
        for row in batch.to_pylist():
            yield _output_row(row, path, uri_column, carried)


def _line_row(
    file_and_line: tuple[str, bytes], *, manifest_format: str, uri_column: str, carried: pa.Schema
) -> Iterator[dict]:
    path, line = file_and_line
    line = line.removeprefix(b"\xef\xbb\xbf")  # a byte order mark on a file's first line
    if not line.strip():
        return
    if manifest_format == "txt":
        text = line.decode("utf-8", errors="replace").strip()
        if not text.startswith(manifests.TXT_COMMENT):
            yield _output_row({uri_column: text}, path, uri_column, carried)
    else:
        yield _output_row(manifests.json_row(line, uri_column, carried), path, uri_column, carried)


def expand_input(spec: InputSpec, *, uri_column: str, carried: pa.Schema) -> Iterator[dict]:
    """Streams the rows of one InputSpec: {"uri": ..., carried column: value, ...} (counted for progress lines)."""
    for row in _rows_of(spec, uri_column, carried):
        TALLY.add_input()
        yield row
    TALLY.finish_input()


def _rows_of(spec: InputSpec, uri_column: str, carried: pa.Schema) -> Iterator[dict]:
    if spec.manifest_format is None:
        for uri in image_uris(spec):
            yield {"uri": uri, **dict.fromkeys(carried.names)}
        return
    for path in matching_files(spec):
        for row in manifests.read_manifest(path, spec.manifest_format, uri_column, carried):
            yield _output_row(row, path, uri_column, carried)


def _output_row(row: dict, manifest: str, uri_column: str, carried: pa.Schema) -> dict:
    """A manifest row as the job carries it: `uri` (resolved against the manifest), then the carried columns."""
    out = {"uri": _resolve(row.get(uri_column), manifest), **{name: row.get(name) for name in carried.names}}
    if MANIFEST_ERROR_KEY in row:
        out[MANIFEST_ERROR_KEY] = row[MANIFEST_ERROR_KEY]
    return out


def _resolve(uri: object, manifest: str) -> str | None:
    """A manifest's URI as the job reads it: a relative path is relative to the manifest's own folder (and a local
    manifest's folder is made absolute, so that the row names the file from anywhere, as folder inputs do)."""
    if uri is None:
        return None
    text = str(uri)
    if not text.strip() or split_protocol(text)[0] or posixpath.isabs(text):
        return text
    if split_protocol(manifest)[0]:
        return posixpath.join(posixpath.dirname(manifest), text)
    return os.path.normpath(os.path.join(os.path.abspath(os.path.dirname(manifest)), text))
