"""The run's final step run again, as Dataflow runs it: a failed work item is retried up to 4 times, and a worker
presumed lost may still be running when its retry starts.

Real finalize calls on real files (and one real pipeline), with the worker killed at each write to storage in turn:
before the write, or after it took effect. A write is one file created, renamed or deleted through Beam's
FileSystems, or the Iceberg commit. After each crash, the retry must leave exactly what a run that never crashed
leaves: the same shards holding the same rows, the same `_SUCCESS`, no staging folder, one Iceberg snapshot.
"""

from __future__ import annotations

import itertools

import pytest
from apache_beam.io.filesystems import FileSystems
from staged_runs import (
    RUN_ID,
    SCENARIOS,
    WorkerLost,
    at_once,
    clean_run,
    dies,
    final_state,
    scenarios,
    stage_run,
    start,
    writes,
)

from beam_pipeline.launch import runner
from beam_pipeline.layout import intent_path, shard_names
from beam_pipeline.output import publish


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
                second_died = dies(run.finalize)
            if second_died:
                run.finalize()
            assert final_state(run) == reference, (first, second)
            if not second_died:  # the second attempt made fewer writes than `second`
                break


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
            outcomes = at_once(run.finalize, attempts=3)
        records = [o for o in outcomes if isinstance(o, dict)]
        assert records, outcomes
        assert final_state(run) == reference, (round_, outcomes)
        run.finalize()
        assert final_state(run) == reference, (round_, "after a retry")


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
            first = start(run.finalize)
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


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_finalize_retry_by_the_launcher_after_ctrl_c_at_each_step(tmp_path, after):
    """Ctrl-C (or any stop) at each write of the local final step: the launcher settles the run as a retry would,
    finishing a publish that had been decided and deleting the staging folder of one that had not, so it never
    leaves shards published without the rest or `_SUCCESS`."""
    reference, steps = clean_run(tmp_path / "reference")
    for k, step in enumerate(steps, 1):
        run = stage_run(tmp_path / f"stop-{k}")
        with writes(run.root, crash_at=k, after=after), pytest.raises(WorkerLost):
            run.finalize()
        decided = publish.read_record(intent_path(run.info.output, RUN_ID)) is not None
        published = (run.out / "_SUCCESS").exists()  # stopped while removing the staging folder, after publishing
        record = runner.settle_stopped_run(run.info)
        where = f"stopped {'after' if after else 'before'} write {k} of {len(steps)}: {step}"
        assert (record is not None) == decided, where
        if decided or published:
            assert final_state(run) == reference, where
        else:
            assert sorted(p.name for p in run.out.iterdir()) == [], where
