"""The final step run again where it meets other systems: an Iceberg table other runs commit to at the same time,
the job's own graph on Beam's local runner (and its launcher, which retries in its place), and a GCS bucket.
The harness is in staged_runs.py (see test_finalize_retry.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import fake_job
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import read_output
from staged_runs import (
    RUN_ID,
    SCHEMA,
    StagedRun,
    WorkerLost,
    stage_run,
    start,
    write_rows,
)
from test_cloud_storage import BUCKET, gcs_emulator  # noqa: F401 - gcs_emulator is a fixture

from beam_pipeline import pipeline
from beam_pipeline.inputs import checks
from beam_pipeline.inputs.specs import InputSpec
from beam_pipeline.launch import runner
from beam_pipeline.layout import is_shard_of, staging_prefix
from beam_pipeline.output import finalize
from beam_pipeline.output.iceberg import RUN_ID_PROPERTY, IcebergTarget

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
    last_night = write_rows([str(tmp_path / "last-night" / "labels-00000-of-00001.parquet")], "last-night", 2)
    assert target.commit([last_night[0][0]], SCHEMA, "last-night") is not None  # the table as an earlier run left it
    other = write_rows([str(tmp_path / "other" / "labels-00000-of-00001.parquet")], "other", 3)
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

    outcomes = [finish() for finish in [start(finalize_together(run)) for run in runs]]
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


def test_finalize_retry_by_the_local_launcher(tmp_path, fake_model):
    """The local runner does not retry a failed step: when the final step fails after deciding (storage answers 503
    to a rename into place), the launcher finishes the publish as a retry would, and the run is ok."""
    good = fake_job.good_images(tmp_path / "in", range(30, 40))
    spec = checks.check_exists(InputSpec.parse(str(tmp_path / "in")))
    job = fake_job.job_config(inputs=[spec], carried=pa.schema([]), output=str(tmp_path / "out" / "labels"))
    rename, failed = FileSystems.rename, []

    def rename_answering_503_once(srcs: list[str], dsts: list[str]) -> None:
        if not failed and any(is_shard_of(dst, job.output) for dst in dsts):
            failed.append(dsts)
            raise OSError("503 Service Unavailable")
        rename(srcs, dsts)

    with pytest.MonkeyPatch.context() as storage:
        storage.setattr(FileSystems, "rename", staticmethod(rename_answering_503_once))
        record = runner.run(job, ["--runner=FnApiRunner", "--direct_running_mode=in_memory"])
    assert failed and record["status"] == "ok" and record["rows"] == len(good)
    assert sorted(read_output(tmp_path / "out" / "labels").column("uri").to_pylist()) == sorted(good)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_SUCCESS", "labels-00000-of-00001.parquet"]


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
    staged = write_rows([f"{staging_prefix(prefix, RUN_ID)}-{i:02d}.parquet" for i in range(3)], "img", 4)
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
