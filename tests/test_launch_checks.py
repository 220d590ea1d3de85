"""Launch checks a scheduler runs into: runner names as Beam resolves them, --output placeholders, and --overwrite
into the folder of an earlier run however its path is spelt."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import label, read_output, run_job
from images import write_good_images

from beam_pipeline.launch import job, runner
from beam_pipeline.output import publish

LOCAL_NAMES = [
    "direct",
    "DIRECT",
    "directrunner",
    "DirectRunner",
    "fnapirunner",
    "FnApiRunner",
    "BundleBasedDirectRunner",
    "prism",
    "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
]
REMOTE_NAMES = ["dataflow", "DataflowRunner", "DATAFLOWRUNNER", "portable", "PortableRunner", "flink"]


@pytest.mark.parametrize("name", LOCAL_NAMES)
def test_beams_local_runners_are_local_in_any_spelling(name):
    """Beam resolves a runner name in any case, with or without "Runner" (or as a class path); so does the job:
    local workers read file:// and load the model in place."""
    beam_args = ["--runner", name, "--temp_location", "gs://bucket/tmp"]
    assert runner.is_local(beam_args)
    assert "file" in job.default_schemes(runner.is_local(beam_args))
    assert runner.model_staging(beam_args) is None


@pytest.mark.parametrize("name", REMOTE_NAMES)
def test_remote_runners_are_remote_in_any_spelling(name):
    beam_args = ["--runner", name, "--temp_location", "gs://bucket/tmp"]
    assert not runner.is_local(beam_args)
    assert "file" not in job.default_schemes(runner.is_local(beam_args))
    assert runner.model_staging(beam_args) == "gs://bucket/tmp/beam-image-labeller/models"
    assert runner.threads_per_process(beam_args) == 1


def test_runner_direct_labels_the_5_photos(tmp_path, shared, float_model, labels_file):
    """`--runner direct` (lower case) is Beam's DirectRunner: a local run that reads the local photos, where the
    name compared as a string made it remote, without file://, and every photo an UnsupportedScheme row."""
    photos = shared / "images" / "photos"
    prefix = tmp_path / "out" / "labels"
    assert label(photos, prefix, float_model, labels_file, "--runner", "direct") == 0
    with (photos / "expected.csv").open() as f:
        expected = {str(photos / row["file"]): row["expected_top1"] for row in csv.DictReader(f)}
    rows = read_output(prefix).to_pylist()
    assert {r["uri"]: (r["status"], r["label"]) for r in rows} == {uri: ("ok", top1) for uri, top1 in expected.items()}


def test_a_misspelt_placeholder_is_a_launch_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_job("--input", tmp_path, "--output", "y/dt={data}/") == 2
    message = capsys.readouterr().err.strip()
    assert message == (
        "beam-image-labeller: error: argument --output: unknown placeholder {data} in 'y/dt={data}/': "
        "the placeholders are {date} and {run_id}"
    )
    assert list(tmp_path.iterdir()) == [], "no {data} folder"


def test_a_misspelt_runner_is_a_launch_error(tmp_path, capsys):
    """Beam would refuse the name only once the pipeline is built, as a traceback; the launcher names the flag."""
    assert run_job("--input", tmp_path, "--output", tmp_path / "o", "--runner", "Dirct") == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("beam-image-labeller: error: argument --runner: unknown runner 'Dirct' (Beam's runners: ")
    assert "DirectRunner" in message and "\n" not in message
    assert not (tmp_path / "o").exists()


def test_an_earlier_runs_success_names_its_prefix_relative_to_its_folder(tmp_path):
    """A `_SUCCESS` written by a run that spelt the folder another way (here relative to another working directory,
    as runs before prefixes were made absolute wrote it) is this prefix's; another name is another prefix's."""
    folder = tmp_path / "n" / "dt=2026-11-26"
    folder.mkdir(parents=True)
    for recorded, others in [("n/dt=2026-11-26/labels", []), ("elsewhere/dt=x/labels-v2", ["labels-v2"])]:
        (folder / "_SUCCESS").write_text(json.dumps({"output_prefix": recorded}))
        assert publish.other_prefixes(str(folder / "labels")) == others


def test_overwrite_into_an_earlier_runs_folder_however_it_is_spelt(
    tmp_path, shared, tiny_model, labels_file, capsys, monkeypatch
):
    """A nightly retry of the same day with --overwrite: after a run with `n/dt=X/`, the same folder given as
    `/abs/n/dt=X/`, `./n/dt=X/` and `../n/dt=X/` from another working directory replaces that run's output."""
    photos = write_good_images(tmp_path / "photos", shared)
    (tmp_path / "elsewhere").mkdir()
    folder = tmp_path / "n" / "dt=2026-11-26"
    monkeypatch.chdir(tmp_path)
    assert label(tmp_path / "photos", "n/dt=2026-11-26/", tiny_model, labels_file) == 0
    spellings = [(f"{folder}/", tmp_path), ("./n/dt=2026-11-26/", tmp_path), ("../n/dt=2026-11-26/", "elsewhere")]
    for spelling, where in spellings:
        monkeypatch.chdir(tmp_path / where)
        assert label(tmp_path / "photos", spelling, tiny_model, labels_file, "--overwrite") == 0, capsys.readouterr()
        success = json.loads((folder / "_SUCCESS").read_text())
        assert success["status"] == "ok" and success["output_prefix"] == str(folder / "labels")
        assert sorted(read_output(folder / "labels").column("uri").to_pylist()) == sorted(map(str, photos))
    assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "labels-00000-of-00001.parquet"]
    assert list((tmp_path / "elsewhere").iterdir()) == []
