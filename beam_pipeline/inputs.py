"""Turns `--input` values (globs, directories, manifests) into rows of {uri, carried columns}, inside the pipeline.

Expansion runs in a DoFn on a worker and streams: directories are walked, manifests are read in record batches,
so neither the launcher nor a worker ever holds a whole dataset. Beam's own file IOs read through Beam's
filesystems; fsspec is used here because it reaches the same stores plus memory:// and http(s) listings with one
API, and pyarrow's streaming readers take fsspec file objects directly.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.io.textio import ReadAllFromText
from fsspec.core import split_protocol
from fsspec.utils import glob_translate

from beam_pipeline import manifests
from beam_pipeline.manifests import MANIFEST_ERROR_KEY
from beam_pipeline.progress import TALLY
from beam_pipeline.schema import RESERVED_NAMES

MANIFEST_FORMATS = {".txt": "txt", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
GLOB_CHARS = frozenset("*?[")


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
        return not self.literal and any(c in self.path for c in GLOB_CHARS)


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
    return path[: min(path.index(c) for c in GLOB_CHARS if c in path)].rsplit("/", 1)[0] or "/"


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

    Runs in the launcher, reading footers, headers and JSON Lines keys only (manifests.manifest_schema).
    """
    schemas: list[tuple[str, pa.Schema]] = []
    for spec in specs:
        if spec.manifest_format in (None, "txt"):
            continue
        for path in _matching_files(spec):
            try:
                schema = manifests.manifest_schema(path, spec.manifest_format, uri_column)
            except manifests.ManifestError as exc:
                raise InputError(str(exc)) from exc
            schemas.append((path, schema.remove(schema.get_field_index(uri_column))))
    if not schemas:
        return pa.schema([])
    _check_agreement(schemas)
    try:
        unified = pa.unify_schemas([schema for _, schema in schemas])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"manifests disagree on column types: {exc}") from exc
    clashes = sorted(RESERVED_NAMES.intersection(unified.names))
    if clashes:
        raise InputError(f"manifest columns {clashes} clash with output columns; rename them")
    return unified


def count_rows(specs: list[InputSpec]) -> int | None:
    """How many rows the inputs will give, where that is cheap to know at launch (Parquet footers, local folders
    and globs); None when any input would have to be read or listed remotely to tell."""
    total = 0
    for spec in specs:
        fs, path = fsspec.core.url_to_fs(spec.path)
        if spec.manifest_format == "parquet":
            for manifest in _matching_files(spec):
                with fsspec.open(manifest, "rb") as f:
                    total += pq.ParquetFile(f).metadata.num_rows
        elif spec.manifest_format is None and "file" in fs.protocol:
            total += sum(1 for _ in _image_uris(spec))
        else:
            return None
    return total


def _check_agreement(schemas: list[tuple[str, pa.Schema]]) -> None:
    """Fails naming the column and both files when two manifests give one column different types."""
    seen: dict[str, tuple[str, pa.DataType]] = {}
    for path, schema in schemas:
        for field in schema:
            first = seen.setdefault(field.name, (path, field.type))
            known = not pa.types.is_null(first[1]) and not pa.types.is_null(field.type)
            if known and first[1] != field.type:
                raise InputError(
                    f"column {field.name!r} is {first[1]} in manifest {first[0]} but {field.type} in manifest {path}"
                )


class ExpandInputs(beam.PTransform):
    """InputSpecs -> rows {uri_column: uri, carried...}; with `spread`, read in parallel and reshuffled over workers.

    Without `spread` (one local worker) every input is streamed by one DoFn. With it, Parquet, .txt and .jsonl
    manifests on Beam's filesystems (gs, s3, local, ...) are read by Beam's splittable readers, so a
    10-million-row manifest is read by many workers a byte range or row group each; folders, globs, CSV (quoted
    fields may hold newlines, so it cannot be split by byte ranges) and fsspec-only stores are streamed by one
    worker each. The rows are then reshuffled so that decoding spreads over every worker.
    """

    def __init__(self, specs: list[InputSpec], uri_column: str, carried: pa.Schema, *, spread: bool = True):
        super().__init__()
        self._specs = specs
        self._uri_column = uri_column
        self._carried = carried
        self._spread = spread

    def expand(self, pbegin):
        split = [s for s in self._specs if self._spread and splittable(s)]
        streamed = [s for s in self._specs if s not in split]
        parts = []
        if streamed:
            parts.append(
                pbegin
                | "InputSpecs" >> beam.Create(streamed)
                | "ListUris" >> beam.FlatMap(expand_input, uri_column=self._uri_column, carried=self._carried)
            )
        for fmt in ("parquet", "txt", "jsonl"):
            files = [path for spec in split if spec.manifest_format == fmt for path in _matching_files(spec)]
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
    path, table = file_and_table
    for row in table.select([uri_column, *(n for n in carried.names if n in table.column_names)]).to_pylist():
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
        for uri in _image_uris(spec):
            yield {"uri": uri, **dict.fromkeys(carried.names)}
        return
    for path in _matching_files(spec):
        for row in manifests.read_manifest(path, spec.manifest_format, uri_column, carried):
            yield _output_row(row, path, uri_column, carried)


def _output_row(row: dict, manifest: str, uri_column: str, carried: pa.Schema) -> dict:
    """A manifest row as the job carries it: `uri` (resolved against the manifest), then the carried columns."""
    out = {"uri": _resolve(row.get(uri_column), manifest), **{name: row.get(name) for name in carried.names}}
    if MANIFEST_ERROR_KEY in row:
        out[MANIFEST_ERROR_KEY] = row[MANIFEST_ERROR_KEY]
    return out


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
