"""Commits a run's published Parquet shards to an Apache Iceberg table with pyiceberg, in one snapshot per run.

The shards are added as they are (`add_files`: no rewrite), in one transaction with the schema change: the table is
created from the output schema on first use and gains new manifest columns by name. The snapshot carries the run id,
so a final step that runs again after a retry finds its snapshot and adds nothing twice. A commit that conflicts with
another writer's (pyiceberg's CommitFailedException) is retried on the refreshed table, after looking for the run's
snapshot again, as often as the table's `commit.retry.*` properties say. Needs the `iceberg` extra (pyiceberg).

A nightly table gains a snapshot a night, for years. Tables the job creates merge manifests (`TABLE_PROPERTIES`), so
planning the current snapshot reads a few manifests, not one per night; and the commit's transaction builds its
metadata once per change, not once per read (`_Transaction`), so a night's commit does not grow with the history.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time

import pyarrow as pa
from fsspec.core import split_protocol

RUN_ID_PROPERTY = "beam-image-labeller.run-id"
# Java Iceberg's default for appends; pyiceberg's is off, which leaves one manifest per commit in every later snapshot.
TABLE_PROPERTIES = {"commit.manifest-merge.enabled": "true"}


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

    def current_snapshot(self) -> tuple[int, int] | None:
        """At launch, for --skip-labelled naming the table: (its current snapshot id, data files in it), or None
        when the table or its first snapshot does not exist yet."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            snapshot = self.load_catalog().load_table(self.table).current_snapshot()
        except (NoSuchTableError, NoSuchNamespaceError):
            return None
        if snapshot is None:
            return None
        return snapshot.snapshot_id, int((snapshot.summary or {}).get("total-data-files", 0))

    def commit(self, files: list[str], schema: pa.Schema, run_id: str) -> int:
        """Adds `files` in one snapshot tagged with `run_id` (once); returns that snapshot's id."""
        from pyiceberg.exceptions import CommitFailedException, CommitStateUnknownException, NoSuchTableError

        catalog = self.load_catalog()
        namespace = self.table.rsplit(".", 1)[0]
        try:
            catalog.create_namespace_if_not_exists(namespace)
        except Exception:  # noqa: BLE001 - SQL catalogs raise IntegrityError when another run created it meanwhile
            if not catalog.namespace_exists(namespace):
                raise
        try:
            table = catalog.load_table(self.table)
        except NoSuchTableError:  # first use (create_table_if_not_exists alone would write a metadata file each time)
            table = catalog.create_table_if_not_exists(self.table, schema=schema, properties=TABLE_PROPERTIES)
        retries, wait_ms, max_wait_ms = _retry_settings(table)
        attempt = 0
        while (committed := _snapshot_of_run(table, run_id)) is None:
            try:
                _append(table, [_absolute(f) for f in files], schema, run_id)
            except CommitFailedException:  # another writer committed first: try again on top of its snapshot
                if attempt >= retries:
                    raise
                time.sleep(min(wait_ms * 2**attempt, max_wait_ms) * random.uniform(1.0, 1.1) / 1000)
                attempt += 1
                table = catalog.load_table(self.table)
            except CommitStateUnknownException:  # it may have landed: the run's snapshot says
                table = catalog.load_table(self.table)
                if _snapshot_of_run(table, run_id) is None:
                    raise
        return committed


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


def _append(table, files: list[str], schema: pa.Schema, run_id: str) -> None:
    """One try at the commit: the schema's new columns and the files, in one snapshot tagged with the run id.

    pyiceberg would retry a conflicting commit itself, re-applied to the refreshed table without looking for the
    run's snapshot: measured, two attempts of one final step committing at once then add two snapshots with the
    same run id. Its own loop is therefore given one try, in this process's copy of the table metadata only (a
    property reaches the catalog only as an update, and this is none), and commit() retries instead.
    """
    from pyiceberg.table import TableProperties

    properties = {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    table.metadata = table.metadata.model_copy(update={"properties": properties})
    with _transaction(table) as transaction:
        with transaction.update_schema() as update:
            update.union_by_name(schema)
        transaction.add_files(files, snapshot_properties={RUN_ID_PROPERTY: run_id})


def _transaction(table):
    """pyiceberg's Transaction, with its metadata built once per staged change instead of once per read.

    Its `table_metadata` property replays the staged updates and deep-copies the result, snapshot list included, on
    every read, and `add_files` reads it about 19 times (apache/iceberg-python#2673; the fix, #3784, is not in a
    release). Measured on a SQLite catalog: a commit at 400 snapshots took 0.38 s, 0.10 s with this, and the cost
    grows with every snapshot. The cache holds while the table's metadata and the staged updates are the same
    objects: pyiceberg replaces both (frozen models, tuples), never changes them in place.
    """
    from pyiceberg.table import Transaction
    from pyiceberg.table.update import update_table_metadata

    class CachedTransaction(Transaction):
        _built: tuple = (None, None, None)

        @property
        def table_metadata(self):
            base, updates, built = self._built
            if base is not self._table.metadata or updates is not self._updates:
                base, updates = self._table.metadata, self._updates
                built = update_table_metadata(base, updates)
                self._built = (base, updates, built)
            return built

    return CachedTransaction(table)


def _retry_settings(table) -> tuple[int, int, int]:
    """The table's commit.retry.num-retries, min-wait-ms and max-wait-ms (pyiceberg's defaults where unset)."""
    from pyiceberg.table import TableProperties
    from pyiceberg.utils.properties import property_as_int

    properties = table.metadata.properties
    return (
        property_as_int(properties, TableProperties.COMMIT_NUM_RETRIES, TableProperties.COMMIT_NUM_RETRIES_DEFAULT),
        property_as_int(
            properties, TableProperties.COMMIT_MIN_RETRY_WAIT_MS, TableProperties.COMMIT_MIN_RETRY_WAIT_MS_DEFAULT
        ),
        property_as_int(
            properties, TableProperties.COMMIT_MAX_RETRY_WAIT_MS, TableProperties.COMMIT_MAX_RETRY_WAIT_MS_DEFAULT
        ),
    )


def _snapshot_of_run(table, run_id: str) -> int | None:
    for snapshot in table.snapshots():
        if snapshot.summary is not None and snapshot.summary.get(RUN_ID_PROPERTY) == run_id:
            return snapshot.snapshot_id
    return None


def _absolute(path: str) -> str:
    return path if split_protocol(path)[0] else os.path.abspath(path)
