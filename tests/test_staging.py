"""Model staging for remote workers: copied once by content checksum, fetched and verified by every worker."""

from __future__ import annotations

import json

import pytest
from conftest import label, read_output, shared_dir

from beam_pipeline.launch import cli, job
from beam_pipeline.model import load, resolve, staging

PHOTOS = shared_dir() / "images" / "photos"


def _prepare(tmp_path, model, labels_file, *extra):
    flags, _ = cli.build_parser().parse_known_args(
        ["--input", str(PHOTOS), "--output", str(tmp_path / "o" / "labels"), "--model", model, "--labels", labels_file]
        + list(extra)
    )
    return job.prepare(flags, local=False, model_staging=str(tmp_path / "temp" / "models"))


@pytest.mark.slow  # loads TensorFlow models (chosen by name, so the slow-marker hook cannot see them)
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tflite_model"])
def test_the_launcher_stages_once_and_workers_load_the_verified_copy(tmp_path, request, labels_file, model_fixture):
    model = request.getfixturevalue(model_fixture)
    config = _prepare(tmp_path, model, labels_file)
    ref = config.model
    assert ref.staged.startswith(str(tmp_path / "temp" / "models" / ref.checksum))
    assert ref.model_id == model, "the model column names what --model said, not the staged copy"
    assert ref.checksum == staging.content_checksum(model if model.endswith(".tflite") else model)
    again = _prepare(tmp_path, model, labels_file).model
    assert again.staged == ref.staged, "a complete copy of the same content is reused"
    assert load.load(ref).num_classes == 1001


def test_a_tampered_staged_copy_fails_to_load(tmp_path, tiny_model, labels_file):
    ref = _prepare(tmp_path, tiny_model, labels_file).model
    (next((tmp_path / "temp").rglob("variables.data-*"))).write_bytes(b"not the weights")
    with pytest.raises(resolve.ModelError, match="checksum"):
        load.load(ref)


def test_a_hub_model_without_a_staging_location_is_a_launch_error():
    ref = resolve.ModelRef("hf://owner/repo@abc", "huggingface", revision="abc")
    with pytest.raises(job.LaunchError) as raised:
        job._staged(ref, None)
    assert raised.value.flag == "--model-staging" and "--temp_location" in str(raised.value)


def test_portable_runner_workers_use_the_staged_model(tmp_path, tiny_model, labels_file):
    prefix = tmp_path / "out" / "labels"
    extra = ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK"]
    extra += ["--allowed-schemes", "file", "--model-staging", str(tmp_path / "staged")]
    assert label(PHOTOS, prefix, tiny_model, labels_file, *extra) == 0
    assert set(read_output(prefix).column("status").to_pylist()) == {"ok"}
    (staged,) = (tmp_path / "staged").iterdir()
    assert (staged / "_STAGED").read_text() == staged.name
    assert json.loads((prefix.parent / "_SUCCESS").read_text())["model"] == tiny_model
