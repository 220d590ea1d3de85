"""The run's final step run again, as Dataflow runs it: a failed work item is retried up to 4 times, and a worker
presumed lost may still be running when its retry starts.

Real finalize calls on real files (and one real pipeline), with the worker killed at each write to storage in turn:
before the write, or after it took effect. A write is one file created, renamed or deleted through Beam's
FileSystems, or the Iceberg commit. After each crash, the retry must leave exactly what a run that never crashed
leaves: the same shards holding the same rows, the same `_SUCCESS`, no staging folder, one Iceberg snapshot.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import io
import itertools
import json
import random
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import apache_beam as beam
import fake_job
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import read_output
from test_cloud_storage import BUCKET, gcs_emulator  # noqa: F401 - gcs_emulator is a fixture

from beam_pipeline import pipeline
from beam_pipeline.inputs import checks
from beam_pipeline.inputs.specs import InputSpec
from beam_pipeline.layout import intent_path, is_shard_of, shard_names, staging_prefix
from beam_pipeline.output import finalize, publish
from beam_pipeline.output.finalize import RowStats, RunInfo, finalize_run
from beam_pipeline.output.iceberg import RUN_ID_PROPERTY, IcebergTarget
from beam_pipeline.output.sink import ParquetFileWriter
from beam_pipeline.records import labelled_row, output_schema

RUN_ID = "20261126T010000Z-abcdef"
SCHEMA = output_schema()
CARRIED_SCHEMA = output_schema(pa.schema([pa.field("id", pa.int64())]))
Top = collections.namedtuple("Top", "class_id label score")


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
        _write_rows(shard_names(prefix, 2), "earlier", 2)
        _write_rows([staging_prefix(prefix, "20261125T010000Z-000000") + "-x.parquet"], "killed", 1)
        (root / "out" / "_SUCCESS").write_text(json.dumps({"run_id": "earlier", "output_prefix": prefix}))
    staged_paths = [f"{staging_prefix(prefix, RUN_ID)}-{i:02d}.parquet" for i in range(files)]
    staged = _write_rows(staged_paths, "img", rows, schema=info.schema)
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


def _write_rows(paths: list[str], name: str, rows: int, *, schema: pa.Schema = SCHEMA) -> list[tuple[str, int]]:
    """Parquet files of labelled rows with distinct URIs, through the sink's own writer; their (path, rows)."""
    written = []
    for i, path in enumerate(paths):
        writer = ParquetFileWriter(path, schema)
        for j in range(rows):
            prediction = PredictionResult(None, [Top(1, "cat", 0.9)], "fake://classifier")
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


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", scenarios("publish", "publish to Iceberg", "rows missing"))
def test_finalize_retry_after_a_complete_publish_rewrites_the_same_success(tmp_path, name):
    run = stage_run(tmp_path, **SCENARIOS[name])
    first = run.finalize()
    success = (run.out / "_SUCCESS").read_bytes()
    state = final_state(run)
    assert first["status"] == ("failed" if name == "rows missing" else "ok")

    for _ in range(2):  # Dataflow may retry more than once
        assert run.finalize() == first
        assert (run.out / "_SUCCESS").read_bytes() == success
        assert final_state(run) == state
    if name == "rows missing":
        assert state["files"] == ["_SUCCESS", *(f"_failed-{RUN_ID}/labels-0{i}.parquet" for i in range(3))]
    else:
        assert state["files"] == ["_SUCCESS", *(f"labels-0000{i}-of-00003.parquet" for i in range(3))]
    if run.info.iceberg is not None:
        assert state["iceberg"]["snapshots of the run"] == 1 and state["iceberg"]["in _SUCCESS"]


@pytest.mark.slow
def test_finalize_retry_steps_are_the_ones_a_publish_takes(tmp_path):
    """The writes the crash tests below stop at, in order: the intent record, the renames into place, the Iceberg
    commit, `_SUCCESS`, then the staging folder's removal."""
    _, steps = clean_run(tmp_path, iceberg=True)
    shard_renames = [s for s in steps if s.startswith("rename /out/_staging-RUNID/labels-0")]
    assert len(shard_renames) == 3
    order = [
        "rename /out/_staging-RUNID/_record-*.tmp -> /out/_staging-RUNID/_PUBLISH.json",
        *shard_renames,
        "iceberg commit",
        "rename /out/_staging-RUNID/_record-*.tmp -> /out/_SUCCESS",
        "delete /out/_staging-RUNID/_PUBLISH.json",
    ]
    assert [s for s in steps if s in order] == order, steps


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("scenario", scenarios())
def test_finalize_retry_after_a_crash_at_each_step(tmp_path, scenario, after):
    """Every write the final step makes, in turn, is where its worker dies; the retry then finishes the run as if
    nothing had happened (a file counts from its source or its destination; the run's own shards are never taken
    for another run's; the Iceberg commit finds the run's snapshot)."""
    reference, steps = clean_run(tmp_path / "reference", **SCENARIOS[scenario])
    assert steps, "the final step writes to storage"
    for k, step in enumerate(steps, 1):
        run = stage_run(tmp_path / f"crash-{k}", **SCENARIOS[scenario])
        with writes(run.root, crash_at=k, after=after), pytest.raises(WorkerLost):
            run.finalize()
        intent = publish.read_record(intent_path(run.info.output, RUN_ID))
        record = run.finalize()
        where = f"worker lost {'after' if after else 'before'} write {k} of {len(steps)}: {step}"
        assert final_state(run) == reference, where
        if intent is not None:  # decided before the crash: the retry wrote what was decided
            assert record["finished_at"] == intent["record"]["finished_at"], where


@pytest.mark.slow  # the crash loops above are the fast tier's share
@pytest.mark.parametrize("name", scenarios("publish", "publish to Iceberg"))
def test_finalize_retry_after_crashes_in_two_attempts(tmp_path, name):
    """Dataflow tries a work item 4 times: the first two attempts die, each at every possible write; the third
    finishes the run."""
    scenario = SCENARIOS[name]
    reference, steps = clean_run(tmp_path / "reference", **scenario)
    for first in range(1, len(steps) + 1):
        for second in itertools.count(1):
            run = stage_run(tmp_path / f"crash-{first}-{second}", **scenario)
            with writes(run.root, crash_at=first, after=True), pytest.raises(WorkerLost):
                run.finalize()
            with writes(run.root, crash_at=second, after=True):
                second_died = _dies(run.finalize)
            if second_died:
                run.finalize()
            assert final_state(run) == reference, (first, second)
            if not second_died:  # the second attempt made fewer writes than `second`
                break


def _dies(call: Callable) -> bool:
    try:
        call()
    except WorkerLost:
        return True
    return False


@pytest.mark.slow  # the crash loops above are the fast tier's share
@pytest.mark.parametrize(
    "scenario", scenarios("publish to Iceberg", "rows missing", "overwrite an earlier run", "empty input")
)
def test_finalize_retry_two_attempts_at_once(tmp_path, scenario):
    """A worker presumed lost still runs the step when its retry starts: three attempts at once, every write
    delayed at random so that they interleave, leave one complete publish. An attempt that fails (another one
    cleaned up the file it was renaming) is retried by Dataflow; that retry changes nothing."""
    reference, _ = clean_run(tmp_path / "reference", **SCENARIOS[scenario])
    for round_ in range(6):
        run = stage_run(tmp_path / f"round-{round_}", **SCENARIOS[scenario])
        with writes(run.root) as slowed:
            slowed.delay = 0.01 * (round_ % 3 + 1)
            outcomes = _at_once(run.finalize, attempts=3)
        records = [o for o in outcomes if isinstance(o, dict)]
        assert records, outcomes
        assert final_state(run) == reference, (round_, outcomes)
        run.finalize()
        assert final_state(run) == reference, (round_, "after a retry")


def _at_once(call: Callable, *, attempts: int) -> list:
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


@pytest.mark.slow  # the crash loops above are the fast tier's share
@pytest.mark.parametrize("name", scenarios("publish", "publish to Iceberg", "rows missing"))
def test_finalize_retry_while_the_first_attempt_is_stalled(tmp_path, name):
    """The first attempt stalls at each write in turn (a worker presumed lost); its retry runs to the end; then the
    first wakes up and goes on. Both orders of events leave one complete publish."""
    scenario = SCENARIOS[name]
    reference, steps = clean_run(tmp_path / "reference", **scenario)
    for k, step in enumerate(steps, 1):
        run = stage_run(tmp_path / f"stall-{k}", **scenario)
        with writes(run.root, pause_at=k) as stalled:
            first = _start(run.finalize)
            assert stalled.paused.wait(timeout=60), step
            run.finalize()
            assert final_state(run) == reference, f"retry beside an attempt stalled at write {k}: {step}"
            stalled.resume.set()
            outcome = first()
        assert final_state(run) == reference, f"first attempt woke up at write {k} ({step}): {outcome!r}"


def test_finalize_retry_decides_again_beside_an_attempt_that_moved_some_shards(tmp_path):
    """An attempt that found no intent (it looked just before another attempt wrote it) decides while the other
    moves shards into place: those shards are the run's own, not another run's."""
    run = stage_run(tmp_path)
    staged = [path for path, _ in run.inputs["shards"]]
    FileSystems.rename(staged[:2], shard_names(run.info.output, 3)[:2])
    record = run.finalize()
    assert record["status"] == "ok", record["problems"]
    assert final_state(run)["files"] == ["_SUCCESS", *(f"labels-0000{i}-of-00003.parquet" for i in range(3))]


def _start(call: Callable) -> Callable[[], object]:
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


# --- Iceberg: commits of other runs at the same time ---------------------------------------------------------------


@pytest.mark.slow
def test_finalize_retry_iceberg_conflict_with_a_concurrent_commit(tmp_path, monkeypatch):
    """Another run's commit lands between this run's reading the table and its own commit (injected where the SQL
    catalog writes the new metadata file, as two processes racing do): the catalog refuses this run's commit with
    CommitFailedException; it is retried on the refreshed table, and each run has its one snapshot. Tonight's rows
    carry a new column, so the schema change is part of the commit that conflicts."""
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import CommitFailedException

    run = stage_run(tmp_path / "tonight", iceberg=True, carried=True)
    target = run.info.iceberg
    last_night = _write_rows([str(tmp_path / "last-night" / "labels-00000-of-00001.parquet")], "last-night", 2)
    assert target.commit([last_night[0][0]], SCHEMA, "last-night") is not None  # the table as an earlier run left it
    other = _write_rows([str(tmp_path / "other" / "labels-00000-of-00001.parquet")], "other", 3)
    write_metadata, commit_table = SqlCatalog._write_metadata, SqlCatalog.commit_table
    seen = {"interleaved": False, "conflicts": 0}

    def other_run_commits_first(*args, **kwargs):
        if not seen["interleaved"]:
            seen["interleaved"] = True
            target.commit([other[0][0]], SCHEMA, "other-run")
        return write_metadata(*args, **kwargs)

    def counting_conflicts(catalog, *args, **kwargs):
        try:
            return commit_table(catalog, *args, **kwargs)
        except CommitFailedException:
            seen["conflicts"] += 1
            raise

    monkeypatch.setattr(SqlCatalog, "_write_metadata", staticmethod(other_run_commits_first))
    monkeypatch.setattr(SqlCatalog, "commit_table", counting_conflicts)
    record = run.finalize()

    assert record["status"] == "ok", record["problems"]
    assert seen == {"interleaved": True, "conflicts": 1}
    table = target.load_catalog().load_table(target.table)
    assert [s.summary.get(RUN_ID_PROPERTY) for s in table.snapshots()] == ["last-night", "other-run", RUN_ID]
    assert record["iceberg"]["snapshot_id"] == table.snapshots()[-1].snapshot_id
    assert "id" in table.schema().column_names
    assert table.scan().to_arrow().num_rows == 2 + 3 + 12


@pytest.mark.slow
def test_finalize_retry_two_runs_commit_to_one_table_at_once(tmp_path):
    """Four runs' final steps, each into its own folder, commit to one table at the same moment (half of them with
    a new column): every run is ok, with one snapshot each."""
    catalog = f"type=sql,uri=sqlite:///{tmp_path}/catalog.db,warehouse=file://{tmp_path}/warehouse"
    IcebergTarget("vision.labels", catalog).check()
    runs = []
    for i in range(4):
        run = stage_run(tmp_path / f"run-{i}", carried=i % 2 == 1)
        info = dataclasses.replace(run.info, run_id=f"{RUN_ID}{i}", iceberg=IcebergTarget("vision.labels", catalog))
        for path, _ in run.inputs["shards"]:  # staged under the run's own id
            Path(path.replace(RUN_ID, info.run_id)).parent.mkdir(parents=True, exist_ok=True)
            Path(path).rename(path.replace(RUN_ID, info.run_id))
        shards = [(p.replace(RUN_ID, info.run_id), n) for p, n in run.inputs["shards"]]
        runs.append(StagedRun(run.root, info, {**run.inputs, "shards": shards}))
    barrier = threading.Barrier(len(runs))

    def finalize_together(run: StagedRun) -> Callable[[], dict]:
        return lambda: barrier.wait(timeout=30) and None or run.finalize()

    outcomes = [finish() for finish in [_start(finalize_together(run)) for run in runs]]
    assert [o["status"] for o in outcomes] == ["ok"] * 4, outcomes
    table = IcebergTarget("vision.labels", catalog).load_catalog().load_table("vision.labels")
    assert sorted(s.summary.get(RUN_ID_PROPERTY) for s in table.snapshots()) == [r.info.run_id for r in runs]
    assert sorted(o["iceberg"]["snapshot_id"] for o in outcomes) == sorted(s.snapshot_id for s in table.snapshots())
    assert table.scan().to_arrow().num_rows == 4 * 12


# --- the job's own graph, and a bucket --------------------------------------------------------------------------


CAPTURED: list[dict] = []  # finalize_run's arguments in the pipeline below (module-level: pickled by reference)
_FINALIZE_RUN = finalize.finalize_run


def _capturing_finalize_run(element, **kwargs) -> dict:
    CAPTURED.append(kwargs)
    return _FINALIZE_RUN(element, **kwargs)


def test_finalize_retry_of_a_real_pipeline_run(tmp_path, fake_model, monkeypatch):
    """The job's graph on FnApiRunner (a fake model, three branches of rows, so three staged files): storage
    answers 503 to the final step's second rename into place, the pipeline fails; the retry, given the side inputs
    Beam gave the failed attempt (each staged file's name and row count, from the sink), publishes every row once."""
    good = fake_job.good_images(tmp_path / "in", range(4, 20))  # 10..15 poison the fake model's batch
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    spec = checks.check_exists(InputSpec.parse(str(tmp_path / "in")))
    job = fake_job.job_config(
        inputs=[spec], carried=pa.schema([]), output=str(tmp_path / "out" / "labels"), run_id=RUN_ID
    )
    monkeypatch.setattr(finalize, "finalize_run", _capturing_finalize_run)
    CAPTURED.clear()
    rename, shard_renames = FileSystems.rename, []

    def rename_answering_503(srcs: list[str], dsts: list[str]) -> None:
        for src, dst in zip(srcs, dsts):
            if is_shard_of(dst, job.output):
                shard_renames.append(dst)
                if len(shard_renames) == 2:
                    raise OSError("503 Service Unavailable")
            rename([src], [dst])

    with pytest.MonkeyPatch.context() as storage:
        storage.setattr(FileSystems, "rename", staticmethod(rename_answering_503))
        options = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=in_memory"])
        with pytest.raises(Exception, match="503 Service Unavailable"), beam.Pipeline(options=options) as p:
            pipeline.build(p, job, spread_rows=False)
    (side_inputs,) = CAPTURED
    assert len(side_inputs["shards"]) == 3 and len(shard_renames) == 2
    assert len(list((tmp_path / "out").glob("labels-*-of-00003.parquet"))) == 1, "one shard was published"

    record = _FINALIZE_RUN(None, **side_inputs)
    assert record["status"] == "ok", record["problems"]
    assert record["rows_in"] == record["rows"] == len(good) + 1
    uris = read_output(tmp_path / "out" / "labels").column("uri").to_pylist()
    assert sorted(uris) == sorted([*good, str(tmp_path / "in" / "broken.png")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "_SUCCESS",
        *(f"labels-0000{i}-of-00003.parquet" for i in range(3)),
    ]


@pytest.mark.slow
def test_finalize_retry_on_gcs_after_a_rename_stopped_between_copy_and_delete(tmp_path, gcs_emulator, monkeypatch):  # noqa: F811
    """On gs:// a rename is a copy, then a delete. The worker dies between the two for the shards (each staged
    file then exists twice); the retry finishes the publish, and the bucket holds the shards, once, and _SUCCESS."""
    from apache_beam.internal.gcp import auth
    from apache_beam.io.gcp.gcsio import GcsIO
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setattr(
        auth._Credentials, "_credentials_init", True
    )  # Beam's gs client: anonymous, no credential search
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    prefix = f"gs://{BUCKET}/labels/dt=2026-11-26/labels"
    staged = _write_rows([f"{staging_prefix(prefix, RUN_ID)}-{i:02d}.parquet" for i in range(3)], "img", 4)
    run = stage_run(tmp_path)
    run = StagedRun(tmp_path, dataclasses.replace(run.info, output=prefix), {**run.inputs, "shards": staged})
    delete_batch = GcsIO.delete_batch

    def dies_before_deleting_copied_shards(gcsio, paths):
        if any(path.endswith(".parquet") for path in paths):
            raise WorkerLost("between copy and delete")
        return delete_batch(gcsio, paths)

    with pytest.MonkeyPatch.context() as dying:
        dying.setattr(GcsIO, "delete_batch", dies_before_deleting_copied_shards)
        with pytest.raises(WorkerLost):
            run.finalize()
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator}
    )
    names = sorted(blob.name for blob in client.list_blobs(BUCKET))
    assert sum(name.endswith("-of-00003.parquet") for name in names) == 3, names
    assert sum(f"_staging-{RUN_ID}/labels-0" in name for name in names) == 3, names

    record = run.finalize()
    assert record["status"] == "ok", record["problems"]
    blobs = {blob.name: blob for blob in client.list_blobs(BUCKET)}
    folder = "labels/dt=2026-11-26/"
    assert sorted(blobs) == [f"{folder}_SUCCESS", *(f"{folder}labels-0000{i}-of-00003.parquet" for i in range(3))]
    table = pa.concat_tables(
        pq.read_table(io.BytesIO(blobs[name].download_as_bytes())) for name in sorted(blobs) if name.endswith("parquet")
    )
    assert sorted(table.column("uri").to_pylist()) == sorted(f"/in/img-{i}-{j}.jpg" for i in range(3) for j in range(4))
    assert json.loads(blobs[f"{folder}_SUCCESS"].download_as_bytes()) == record
