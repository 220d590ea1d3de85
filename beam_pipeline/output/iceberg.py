"""Commits a run's published Parquet shards to an Apache Iceberg table with pyiceberg, in one snapshot per run.

The shards are added as they are (`Table.add_files`: no rewrite); the table is created from the output schema on
first use and gains new manifest columns by name. The snapshot carries the run id, so a final step that runs again
after a retry finds its snapshot and adds nothing twice. Needs the `iceberg` extra (pyiceberg).
"""

from __future__ import annotations

import dataclasses
import os

import pyarrow as pa
from fsspec.core import split_protocol

RUN_ID_PROPERTY = "beam-image-labeller.run-id"


class IcebergError(Exception):
    """The catalog or table cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class IcebergTarget:
    """`--iceberg-table NAMESPACE.TABLE` in the catalog `--iceberg-catalog` names."""

    table: str
    catalog: str  # NAME (from .pyiceberg.yaml / PYICEBERG_* variables) or inline key=value,key=value properties

    def load_catalog(self):
        try:
            from pyiceberg.catalog import load_catalog
        except ImportError as exc:
            raise IcebergError("pyiceberg is not installed: pip install 'beam-image-labeller[iceberg]'") from exc
        name, properties = parse_catalog(self.catalog)
        try:
            return load_catalog(name, **properties)
        except Exception as exc:  # noqa: BLE001 - pyiceberg raises many types; each is reported in one line
            raise IcebergError(f"cannot load catalog {self.catalog!r}: {type(exc).__name__}: {exc}") from exc

    def check(self) -> None:
        """At launch: the catalog loads and the table name has a namespace."""
        if "." not in self.table.strip("."):
            raise IcebergError(f"expected NAMESPACE.TABLE, got {self.table!r}")
        self.load_catalog()

    def commit(self, files: list[str], schema: pa.Schema, run_id: str) -> int:
        """Adds `files` in one snapshot tagged with `run_id` (once); returns that snapshot's id."""
        catalog = self.load_catalog()
        namespace = self.table.rsplit(".", 1)[0]
        catalog.create_namespace_if_not_exists(namespace)
        table = catalog.create_table_if_not_exists(self.table, schema=schema)
        committed = _snapshot_of_run(table, run_id)
        if committed is not None:
            return committed
        with table.update_schema() as update:
            update.union_by_name(schema)
        table.add_files([_absolute(f) for f in files], snapshot_properties={RUN_ID_PROPERTY: run_id})
        return table.current_snapshot().snapshot_id


def parse_catalog(value: str) -> tuple[str, dict[str, str]]:
    """`type=sql,uri=sqlite:///...,warehouse=file:///...` -> ("default", {...}); a plain NAME -> (NAME, {})."""
    if "=" not in value:
        return value, {}
    properties = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise IcebergError(f"expected key=value,key=value catalog properties, got {item!r}")
        properties[key.strip()] = val.strip()
    return "default", properties


def _snapshot_of_run(table, run_id: str) -> int | None:
    for snapshot in table.snapshots():
        if snapshot.summary is not None and snapshot.summary.get(RUN_ID_PROPERTY) == run_id:
            return snapshot.snapshot_id
    return None


def _absolute(path: str) -> str:
    return path if split_protocol(path)[0] else os.path.abspath(path)
