"""A run's final step on real files, as the sink leaves them, and the worker running it killed at one of its writes
to storage: the harness of test_finalize_retry.py and test_finalize_retry_targets.py."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import random
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult

from beam_pipeline.layout import shard_names, staging_prefix
from beam_pipeline.model.handler import ImageInference, ScoredClass
from beam_pipeline.output.finalize import RowStats, RunInfo, finalize_run
from beam_pipeline.output.iceberg import RUN_ID_PROPERTY, IcebergTarget
from beam_pipeline.output.sink import ParquetFileWriter
from beam_pipeline.records import labelled_row, output_schema

RUN_ID = "20261126T010000Z-abcdef"
SCHEMA = output_schema()
CARRIED_SCHEMA = output_schema(pa.schema([pa.field("id", pa.int64())]))


class WorkerLost(BaseException):
    """The worker running the final step died: a BaseException, so that no `except Exception` in the step sees it."""


# --- a staged run, as the sink leaves it --------------------------------------------------------------------------


@dataclasses.dataclass
class StagedRun:
    root: Path
    info: RunInfo
    inputs: dict  # finalize_run's side inputs

    @property
    def out(self) -> Path:
        return self.root / "out"

    def finalize(self) -> dict:
        return finalize_run(None, info=self.info, **self.inputs)


def stage_run(
    root: Path,
    *,
    files: int = 3,
    rows: int = 4,
    iceberg: bool = False,
    overwrite: bool = False,
    lose_a_row: bool = False,
    earlier_run: bool = False,
    carried: bool = False,
) -> StagedRun:
    """A run whose sink wrote `files` staged files of `rows` rows each under root/out/_staging-RUNID/.

    `lose_a_row`: one more row entered the job than was written (the rows do not reconcile). `earlier_run`: an
    earlier run's two shards, its `_SUCCESS` and its staging folder are at the prefix already. `carried`: the rows
    carry a manifest column `id` (a column an Iceberg table made by an earlier run lacks).
    """
    root.mkdir(parents=True, exist_ok=True)
    prefix = str(root / "out" / "labels")
    catalog = f"type=sql,uri=sqlite:///{root}/catalog.db,warehouse=file://{root}/warehouse"
    target = IcebergTarget("vision.labels", catalog) if iceberg else None
    if target is not None:
        target.check()  # as the launcher does: the catalog's own tables exist before the run
    info = RunInfo(
        run_id=RUN_ID,
        started_at=datetime.datetime(2026, 11, 26, 1, tzinfo=datetime.timezone.utc),
        output=prefix,
        schema=CARRIED_SCHEMA if carried else SCHEMA,
        overwrite=overwrite,
        iceberg=target,
        model_id="fake://classifier",
        model_spec="fake://classifier",
        model_revision=None,
        backend="fake",
        max_error_fraction=1.0,
    )
    if earlier_run:
        write_rows(shard_names(prefix, 2), "earlier", 2)
        write_rows([staging_prefix(prefix, "20261125T010000Z-000000") + "-x.parquet"], "killed", 1)
        (root / "out" / "_SUCCESS").write_text(json.dumps({"run_id": "earlier", "output_prefix": prefix}))
    staged_paths = [f"{staging_prefix(prefix, RUN_ID)}-{i:02d}.parquet" for i in range(files)]
    staged = write_rows(staged_paths, "img", rows, schema=info.schema)
    stats = RowStats()
    accumulator = stats.create_accumulator()
    for _ in range(files * rows):
        stats.add_input(accumulator, {"status": "ok", "error_type": None, "label": "cat"})
    inputs = dict(
        shards=staged,
        rows_in=files * rows + lose_a_row,
        rows_skipped=0,
        row_stats=[stats.extract_output(accumulator)],
    )
    return StagedRun(root, info, inputs)


def write_rows(paths: list[str], name: str, rows: int, *, schema: pa.Schema = SCHEMA) -> list[tuple[str, int]]:
    """Parquet files of labelled rows with distinct URIs, through the sink's own writer; their (path, rows)."""
    written = []
    for i, path in enumerate(paths):
        writer = ParquetFileWriter(path, schema)
        for j in range(rows):
            prediction = PredictionResult(None, ImageInference([ScoredClass(1, "cat", 0.9)]), "fake://classifier")
            row = {"uri": f"/in/{name}-{i}-{j}.jpg", "id": i * rows + j, "width": 4, "height": 3}
            writer.add(labelled_row(row, prediction))
        written.append((writer.close(), writer.rows))
    return written


def final_state(run: StagedRun) -> dict:
    """What a run leaves, comparable between runs in different folders: every file under out/, the rows of each
    Parquet file, `_SUCCESS` (less the time it was decided), and the Iceberg table's snapshots and rows."""
    root = str(run.root)
    files = sorted(str(p.relative_to(run.out)) for p in run.out.rglob("*") if p.is_file())
    rows = {f: sorted(pq.read_table(run.out / f).column("uri").to_pylist()) for f in files if f.endswith(".parquet")}
    success = json.loads((run.out / "_SUCCESS").read_text().replace(root, "ROOT"))
    for decided in ("finished_at", "images_per_second"):
        success.pop(decided)
    state = {"files": files, "rows": rows, "success": success}
    catalog = run.info.iceberg.load_catalog() if run.info.iceberg is not None else None
    if catalog is not None and catalog.table_exists(run.info.iceberg.table):
        table = catalog.load_table(run.info.iceberg.table)
        snapshots = [s for s in table.snapshots() if s.summary.get(RUN_ID_PROPERTY) == RUN_ID]
        state["iceberg"] = {
            "snapshots of the run": len(snapshots),
            "in _SUCCESS": success["iceberg"]["snapshot_id"] == snapshots[0].snapshot_id if snapshots else None,
            "rows": sorted(table.scan().to_arrow().column("uri").to_pylist()),
        }
        success["iceberg"]["snapshot_id"] = "checked above"
    return state


# --- killing the worker at one write to storage -------------------------------------------------------------------


class StorageWrites:
    """Counts the final step's writes to storage, one file at a time, in each thread, and kills the worker at its
    `crash_at`-th write (1-based): before it, or with `after` once it took effect. `pause_at` stalls the first
    thread to reach that write until `resume` is set, as a worker presumed lost that wakes up later. `delay` sleeps
    up to that many seconds before each write, so that attempts running at once interleave."""

    def __init__(
        self,
        patch: pytest.MonkeyPatch,
        root: Path,
        *,
        crash_at: int | None = None,
        after: bool = False,
        pause_at: int | None = None,
    ):
        self.steps: list[str] = []
        self.crash_at, self.after, self.pause_at, self.delay = crash_at, after, pause_at, 0.0
        self.paused, self.resume = threading.Event(), threading.Event()
        self._root, self._lock, self._random, self._count = (
            str(root),
            threading.Lock(),
            random.Random(0),
            threading.local(),
        )
        rename, delete, create = FileSystems.rename, FileSystems.delete, FileSystems.create
        commit = IcebergTarget.commit
        patch.setattr(FileSystems, "rename", staticmethod(lambda srcs, dsts: self._each(rename, zip(srcs, dsts))))
        patch.setattr(FileSystems, "delete", staticmethod(lambda paths: self._each(delete, ((p,) for p in paths))))
        patch.setattr(FileSystems, "create", staticmethod(lambda path, *a, **k: self._create(create, path, *a, **k)))
        patch.setattr(IcebergTarget, "commit", lambda t, *a: self._step("iceberg commit", lambda: commit(t, *a)))

    def _name(self, *paths: str) -> str:
        names = (p.replace(self._root, "").replace(RUN_ID, "RUNID") for p in paths)
        return " -> ".join(re.sub(r"_record-[0-9a-f]+", "_record-*", name) for name in names)

    def _count_step(self, what: str) -> int:
        """This thread's number for the write `what`; stalls here if it is the write to pause at."""
        self._count.n = getattr(self._count, "n", 0) + 1
        with self._lock:
            self.steps.append(what)
            pause = self._count.n == self.pause_at and not self.paused.is_set()
            if pause:
                self.paused.set()
            delay = self._random.uniform(0, self.delay)
        if pause:
            assert self.resume.wait(timeout=60), "never resumed"
        if delay:
            threading.Event().wait(delay)
        return self._count.n

    def _step(self, what: str, action: Callable):
        crash = self._count_step(what) == self.crash_at
        if crash and not self.after:
            raise WorkerLost(f"before {what}")
        result = action()
        if crash:
            raise WorkerLost(f"after {what}")
        return result

    def _each(self, call: Callable, items) -> None:
        """One step per file, failures gathered as Beam's filesystems gather them (all tried, then one BeamIOError)."""
        verb = call.__name__
        failed = {}
        for item in items:
            try:
                self._step(f"{verb} {self._name(*item)}", lambda item=item: call(*([i] for i in item)))
            except BeamIOError as exc:
                failed.update(exc.exception_details)
        if failed:
            raise BeamIOError(f"{verb} failed", failed)

    def _create(self, create: Callable, path: str, *args, **kwargs):
        what = f"create {self._name(path)}"
        if self.after:  # the file is written whole, then the worker dies
            crash = self._count_step(what) == self.crash_at
            return _DiesOnClose(create(path, *args, **kwargs), what) if crash else create(path, *args, **kwargs)
        return self._step(what, lambda: create(path, *args, **kwargs))


class _DiesOnClose:
    """A file being written whose worker dies right after closing it."""

    def __init__(self, file, what: str):
        self._file, self._what = file, what

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        raise WorkerLost(f"after {self._what}")


@contextlib.contextmanager
def writes(root: Path, **kwargs) -> Iterator[StorageWrites]:
    with pytest.MonkeyPatch.context() as patch:
        yield StorageWrites(patch, root, **kwargs)


def clean_run(root: Path, **scenario) -> tuple[dict, list[str]]:
    """The state a run that never crashed leaves, and the writes it made, in order."""
    run = stage_run(root, **scenario)
    with writes(root) as counted:
        run.finalize()
    return final_state(run), counted.steps


SCENARIOS = {
    "publish": {},
    "publish to Iceberg": {"iceberg": True},
    "rows missing": {"lose_a_row": True},
    "another run published": {"earlier_run": True},
    "overwrite an earlier run": {"earlier_run": True, "overwrite": True},
    "empty input": {"files": 0},
}


def scenarios(*names: str) -> list:
    """Scenario names as parameters; those with an Iceberg table are slow (pyiceberg and SQLite commits)."""
    slow = pytest.mark.slow
    return [pytest.param(n, marks=[slow] if SCENARIOS[n].get("iceberg") else []) for n in names or SCENARIOS]


def dies(call: Callable) -> bool:
    """Whether `call` ended with its worker lost."""
    try:
        call()
    except WorkerLost:
        return True
    return False


def at_once(call: Callable, *, attempts: int) -> list:
    """`call`'s result or exception in each of `attempts` threads started together."""
    barrier = threading.Barrier(attempts)
    outcomes: list = [None] * attempts

    def attempt(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            outcomes[i] = call()
        except Exception as exc:  # noqa: BLE001 - an attempt's failure is an outcome to look at
            outcomes[i] = exc

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "an attempt hung"
    return outcomes


def start(call: Callable) -> Callable[[], object]:
    """Runs `call` in a thread; returns a function that waits for it and gives its result or exception."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - an attempt's failure is an outcome to look at
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def result() -> object:
        thread.join(timeout=120)
        assert not thread.is_alive(), "the attempt hung"
        return outcome[0]

    return result
