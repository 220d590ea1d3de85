"""Launch-time checks of the `--input` values: that each names something to read, the manifest columns carried
through to the output with their types, and the row count where it is cheap to know."""

from __future__ import annotations

import dataclasses
import itertools

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipeline.inputs import manifests
from beam_pipeline.inputs.specs import (
    IMAGE_SUFFIXES,
    InputError,
    InputSpec,
    image_uris,
    lazy_glob,
    matching_files,
    walk_images,
)
from beam_pipeline.listing import PAGE_SIZE
from beam_pipeline.records import RESERVED_NAMES

# Files of a local folder counted at launch for the progress line: one listing page, so that the launch of a run over
# a million files costs what one over a thousand does (measured: 100,000 took 1.7 s, benchmarks/listing.py).
COUNT_LIMIT = PAGE_SIZE


def check_exists(spec: InputSpec) -> InputSpec:
    """The spec as the pipeline will read it; fails at launch when it names nothing to read.

    A path that exists is taken literally (a folder called "Holiday [2024]" is that folder). A glob must match
    something and a folder of images must hold at least one image: both are found by a walk that stops at the
    first match, so a bucket of millions of files is not listed here.
    """
    fs, path = fsspec.core.url_to_fs(spec.path)
    if fs.exists(path):
        spec = dataclasses.replace(spec, literal=True)
        if spec.manifest_format is None and fs.isdir(path) and next(walk_images(fs, path), None) is None:
            raise InputError(f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) under {spec.path}")
        return spec
    if not spec.is_glob:
        raise InputError(f"no such file or directory: {spec.path}")
    if next(lazy_glob(fs, path), None) is None:
        raise InputError(f"nothing matches {spec.path!r}")
    return spec


def carried_schema(specs: list[InputSpec], uri_column: str) -> pa.Schema:
    """The manifest columns other than the URI column, with their types, unified over all manifests.

    Runs in the launcher, reading footers, headers and JSON Lines keys only (manifests.manifest_schema).
    """
    schemas: list[tuple[str, pa.Schema]] = []
    for spec in specs:
        if spec.manifest_format in (None, "txt"):
            continue
        for path in matching_files(spec):
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
    and globs of up to COUNT_LIMIT files); None when any input would have to be read, listed remotely or listed at
    length to tell (the progress line then goes without a total)."""
    total = 0
    for spec in specs:
        fs, path = fsspec.core.url_to_fs(spec.path)
        if spec.manifest_format == "parquet":
            for manifest in matching_files(spec):
                with fsspec.open(manifest, "rb") as f:
                    total += pq.ParquetFile(f).metadata.num_rows
        elif spec.manifest_format is None and "file" in fs.protocol:
            counted = sum(1 for _ in itertools.islice(image_uris(spec), COUNT_LIMIT + 1))
            if counted > COUNT_LIMIT:
                return None
            total += counted
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
