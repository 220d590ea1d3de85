"""Turns `--input` values (globs, directories, manifests) into rows of {uri, carried columns}, inside the pipeline.

Expansion runs in a DoFn on a worker and streams: directories are walked, manifests are read in record batches,
so neither the launcher nor a worker ever holds a whole dataset. Beam's own file IOs read through Beam's
filesystems; fsspec is used here because it reaches the same stores plus memory:// and http(s) listings with one
API, and pyarrow's streaming readers take fsspec file objects directly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from fsspec.core import split_protocol
from fsspec.utils import glob_translate

from beam_pipeline.schema import RESERVED_NAMES

MANIFEST_FORMATS = {".txt": "txt", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_GLOB_CHARS = frozenset("*?[")
MANIFEST_BATCH_ROWS = 8192  # Parquet manifest rows turned into dicts at a time
TXT_COMMENT = "#"  # .txt manifest lines starting with it are comments
MANIFEST_ERROR_KEY = "_manifest_error"  # set on rows that could not be parsed; read (and dropped) by the decode step
_SCHEMA_SAMPLE_LINES = 1000  # JSON Lines manifests: rows read at launch to infer the carried columns' types


class InputError(ValueError):
    """An `--input` (or `--uri-column`) that cannot be used; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One `--input` value: a path or glob, its manifest format (None for images), and whether it names an existing
    file or folder (then `[`, `?` and `*` in it are part of its name, not a pattern)."""

    path: str
    manifest_format: str | None
    literal: bool = False

    @classmethod
    def parse(cls, value: str) -> InputSpec:
        suffix = PurePosixPath(split_protocol(value)[1]).suffix.lower()
        return cls(value, MANIFEST_FORMATS.get(suffix))

    @property
    def is_glob(self) -> bool:
        return not self.literal and any(c in self.path for c in _GLOB_CHARS)


def check_exists(spec: InputSpec) -> InputSpec:
    """The spec as the pipeline will read it; fails at launch when it names nothing to read.

    A path that exists is taken literally (a folder called "Holiday [2024]" is that folder). A glob must match
    something and a folder of images must hold at least one image: both are found by a walk that stops at the
    first match, so a bucket of millions of files is not listed here.
    """
    fs, path = fsspec.core.url_to_fs(spec.path)
    if fs.exists(path):
        spec = dataclasses.replace(spec, literal=True)
        if spec.manifest_format is None and fs.isdir(path) and _first(_walk_images(fs, path)) is None:
            raise InputError(f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) under {spec.path}")
        return spec
    if not spec.is_glob:
        raise InputError(f"no such file or directory: {spec.path}")
    if _first(_lazy_glob(fs, path)) is None:
        raise InputError(f"nothing matches {spec.path!r}")
    return spec


def _first(items: Iterator[str]) -> str | None:
    return next(items, None)


def _glob_root(path: str) -> str:
    """The folder a glob starts from: everything before the first segment with a pattern character."""
    return path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0] or "/"


def _lazy_glob(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """Files matching a glob, found by walking from its root folder (fsspec's glob lists every match first)."""
    pattern = re.compile(glob_translate(path))
    root = _glob_root(path)
    if not fs.isdir(root):
        return
    depth = None if "**" in path else path[len(root) :].strip("/").count("/") + 1
    for folder, _, names in fs.walk(root, maxdepth=depth):
        for name in sorted(names):
            full = f"{folder.rstrip('/')}/{name}"
            if pattern.match(full):
                yield full


def _walk_images(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """A folder's image files, recursively, by suffix."""
    for root, _, names in fs.walk(path):
        for name in sorted(names):
            if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                yield f"{root.rstrip('/')}/{name}"  # gcsfs and s3fs keep a folder's trailing / in `root`


def carried_schema(specs: list[InputSpec], uri_column: str) -> pa.Schema:
    """The manifest columns other than the URI column, with their types, unified over all manifests.

    Only headers, footers or a first block are read: this runs in the launcher.
    """
    schemas = []
    for spec in specs:
        if spec.manifest_format in (None, "txt"):
            continue
        for path in _matching_files(spec):
            schema = _manifest_schema(path, spec.manifest_format)
            if uri_column not in schema.names:
                raise InputError(f"manifest {path} has no column {uri_column!r} (set --uri-column)")
            schemas.append(schema.remove(schema.get_field_index(uri_column)))
    if not schemas:
        return pa.schema([])
    try:
        unified = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"manifests disagree on column types: {exc}") from exc
    clashes = sorted(RESERVED_NAMES.intersection(unified.names))
    if clashes:
        raise InputError(f"manifest columns {clashes} clash with output columns; rename them")
    return unified


class ExpandInputs(beam.PTransform):
    """InputSpecs -> rows {uri_column: uri, carried...}, with `spread` reshuffled over the workers."""

    def __init__(self, specs: list[InputSpec], uri_column: str, carried: pa.Schema, *, spread: bool = True):
        super().__init__()
        self._specs = specs
        self._uri_column = uri_column
        self._carried = carried
        self._spread = spread

    def expand(self, pbegin):
        rows = (
            pbegin
            | "InputSpecs" >> beam.Create(self._specs)
            | "ListUris" >> beam.FlatMap(expand_input, uri_column=self._uri_column, carried=self._carried)
        )
        return rows | "SpreadOverWorkers" >> beam.Reshuffle() if self._spread else rows


def expand_input(spec: InputSpec, *, uri_column: str, carried: pa.Schema) -> Iterator[dict]:
    """Streams the rows of one InputSpec: {"uri": ..., carried column: value, ...}."""
    if spec.manifest_format is None:
        for uri in _image_uris(spec):
            yield {"uri": uri, **dict.fromkeys(carried.names)}
        return
    for path in _matching_files(spec):
        for row in _read_manifest(path, spec.manifest_format, uri_column, carried):
            uri = row.pop(uri_column, None)
            out = {"uri": _resolve(uri, path), **{name: row.get(name) for name in carried.names}}
            if MANIFEST_ERROR_KEY in row:
                out[MANIFEST_ERROR_KEY] = row[MANIFEST_ERROR_KEY]
            yield out


def _resolve(uri: object, manifest: str) -> str | None:
    """A manifest's URI as the job reads it: a relative path is relative to the manifest's own folder."""
    if uri is None:
        return None
    text = str(uri)
    if not text.strip() or split_protocol(text)[0] or posixpath.isabs(text):
        return text
    return posixpath.join(posixpath.dirname(manifest), text)


def _image_uris(spec: InputSpec) -> Iterator[str]:
    """A directory's image files (recursively, by suffix), a glob's matching files, or the one file named."""
    fs, path = fsspec.core.url_to_fs(spec.path)
    protocol, _ = split_protocol(spec.path)
    if spec.is_glob:
        files = _lazy_glob(fs, path)
    elif fs.isdir(path):
        files = _walk_images(fs, path)
    else:
        files = iter([path])
    for name in files:
        yield fs.unstrip_protocol(name) if protocol else name


def _matching_files(spec: InputSpec) -> list[str]:
    """The manifest files an InputSpec names (a glob may name several), as URLs."""
    if not spec.is_glob:
        return [spec.path]
    fs, path = fsspec.core.url_to_fs(spec.path)
    protocol, _ = split_protocol(spec.path)
    return [fs.unstrip_protocol(p) if protocol else p for p in _lazy_glob(fs, path)]


def _manifest_schema(path: str, manifest_format: str) -> pa.Schema:
    with fsspec.open(path, "rb") as f:
        if manifest_format == "parquet":
            return pq.read_schema(f)
        if manifest_format == "csv":
            skip_bad_rows = pa_csv.ParseOptions(invalid_row_handler=lambda row: "skip")  # they say nothing of types
            return pa_csv.open_csv(f, parse_options=skip_bad_rows).schema
        sample = []
        for line in f:
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue  # malformed lines become error rows later; they say nothing about the columns
            if isinstance(row, dict):
                sample.append(line.strip())
            if len(sample) >= _SCHEMA_SAMPLE_LINES:
                break
        if not sample:
            return pa.schema([])
        return pa_json.read_json(io.BytesIO(b"\n".join(sample))).schema


def _read_manifest(path: str, manifest_format: str, uri_column: str, carried: pa.Schema) -> Iterator[dict]:
    """Streams a manifest's rows as dicts, in record batches (never the whole file at once)."""
    with fsspec.open(path, "rb") as f:
        if manifest_format == "txt":
            # Undecodable bytes become U+FFFD: such a URI then fails as one NotFound row instead of the whole file.
            # utf-8-sig drops a byte order mark; blank lines and # comments are not rows.
            for line in io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace"):
                if line.strip() and not line.lstrip().startswith(TXT_COMMENT):
                    yield {uri_column: line.strip()}
        elif manifest_format == "jsonl":
            for line in f:
                if line.strip():
                    yield _json_row(line, uri_column)
        elif manifest_format == "csv":
            types = {uri_column: pa.string(), **{field.name: field.type for field in carried}}
            bad_rows: list[str] = []

            def keep_bad_row(row) -> str:
                bad_rows.append(row.text)
                return "skip"

            reader = pa_csv.open_csv(
                f,
                convert_options=pa_csv.ConvertOptions(column_types=types),
                parse_options=pa_csv.ParseOptions(invalid_row_handler=keep_bad_row),
            )
            for batch in reader:
                yield from batch.to_pylist()
                while bad_rows:
                    yield _bad_row(uri_column, f"a CSV row with the wrong number of fields: {bad_rows.pop(0)!r}")
        else:
            parquet = pq.ParquetFile(f)  # one footer read: its schema picks the columns this file has
            columns = [uri_column] + [n for n in carried.names if n in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=MANIFEST_BATCH_ROWS, columns=columns):
                yield from batch.to_pylist()


def _json_row(line: bytes, uri_column: str) -> dict:
    """One JSON Lines row; a line that is not a JSON object becomes a BadManifestRow error row."""
    try:
        row = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        return _bad_row(uri_column, f"a line that is not JSON: {line[:200]!r}")
    return row if isinstance(row, dict) else _bad_row(uri_column, f"a JSON line that is not an object: {line[:200]!r}")


def _bad_row(uri_column: str, problem: str) -> dict:
    """A manifest row that could not be parsed: it still comes out, as a BadManifestRow error row."""
    return {uri_column: None, MANIFEST_ERROR_KEY: problem}
