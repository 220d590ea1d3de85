"""What a Dataflow launch needs, checked offline: the sdist, the job graph, and Beam's portable execution path."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import REPO, label, read_output
from images import jpeg_bytes, photo

from beam_pipeline import cli, job, pipeline

EXPECTED_STEPS = {"ExpandInputs", "CountRowsIn", "LabelRows", "WriteLabelled", "WriteFailed", "AllFiles", "Finalize"}
EXPECTED_LABELLING_STEPS = {"Decode", "Classify", "LabelledRows", "InferenceErrorRows"}


@pytest.mark.slow  # builds the sdist and pip-installs it in subprocesses
def test_sdist_installs_and_imports_as_on_a_worker(tmp_path):
    """Dataflow workers pip-install the sdist that --setup_file builds; do the same into an empty target."""
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", tmp_path / "dist", REPO], check=True, capture_output=True
    )
    (sdist,) = (tmp_path / "dist").glob("beam_image_labeller-*.tar.gz")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, sdist],
        check=True,
        capture_output=True,
    )
    probe = "import beam_pipeline.pipeline, beam_pipeline.report; print(beam_pipeline.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        check=True,
    )
    assert result.stdout.strip().startswith(str(target))


def test_dataflow_job_graph_builds_offline(tmp_path, tiny_model, labels_file, shared):
    """DataflowRunner --dry_run translates (and so pickles) every step without credentials or network."""
    flags, _ = cli.build_parser().parse_known_args(
        [
            "--input",
            str(shared / "images" / "photos"),
            "--output",
            str(tmp_path / "labels"),
            "--model",
            tiny_model,
            "--labels",
            labels_file,
            "--large-model",
        ]
    )
    config = dataclasses.replace(job.prepare(flags), output="gs://bucket/labels/dt=2026-11-26/labels")
    options = PipelineOptions(
        [
            "--runner=DataflowRunner",
            "--project=test-project",
            "--region=europe-west1",
            "--temp_location=gs://bucket/tmp",
            "--staging_location=gs://bucket/staging",
            "--no_auth",
            "--dry_run=True",
            "--sdk_location=container",
        ]
    )
    p = beam.Pipeline(options=options)
    pipeline.build(p, config)
    result = p.run()
    transforms = result.job.proto_pipeline.components.transforms.values()
    top_level = {t.unique_name for t in transforms if "/" not in t.unique_name}
    assert EXPECTED_STEPS <= top_level
    assert {f"LabelRows/{name}" for name in EXPECTED_LABELLING_STEPS} <= {t.unique_name for t in transforms}
    payloads = [t.spec.payload for t in transforms if t.spec.urn == "beam:transform:pardo:v1"]
    assert len(payloads) > 5, "the DoFns were pickled into the job"


@pytest.fixture(scope="module")
def few_hundred_images(tmp_path_factory, shared) -> list[Path]:
    folder = tmp_path_factory.mktemp("many")
    base = photo(shared).resize((320, 240))
    paths = []
    for i in range(240):
        path = folder / f"img_{i:03d}.jpg"
        path.write_bytes(jpeg_bytes(base.rotate(i % 360)))
        paths.append(path)
    return paths


def test_fnapi_multi_processing_workers(tmp_path, few_hundred_images, tiny_model, labels_file):
    """Real SDK-harness worker processes over gRPC: the handler is pickled across, one model per process."""
    prefix = tmp_path / "out" / "labels"
    folder = few_hundred_images[0].parent
    extra = ["--runner", "FnApiRunner", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    assert label(folder, prefix, tiny_model, labels_file, *extra) == 0
    table = read_output(prefix)
    assert sorted(table.column("uri").to_pylist()) == sorted(str(p) for p in few_hundred_images)
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert len(list(prefix.parent.glob("labels-*-of-*.parquet"))) >= 2, "several output shards"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_job_service(tmp_path):
    """Beam's local Python job service: the job API that portable runners (and Dataflow Runner v2) speak."""
    port = _free_port()
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apache_beam.runners.portability.local_job_service_main",
            "--port",
            str(port),
            "--staging_dir",
            str(tmp_path / "staging"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    yield f"localhost:{port}"
    service.terminate()
    service.wait(timeout=30)


def test_portable_runner_against_local_job_service(
    tmp_path, few_hundred_images, local_job_service, tiny_model, labels_file
):
    prefix = tmp_path / "out" / "labels"
    folder = few_hundred_images[0].parent
    extra = ["--runner", "PortableRunner", "--job_endpoint", local_job_service, "--environment_type", "LOOPBACK"]
    # Off the local runner file:// is not read unless named: here the "remote" workers share this machine's disk.
    assert label(folder, prefix, tiny_model, labels_file, *extra, "--allowed-schemes", "file") == 0
    table = read_output(prefix)
    assert sorted(table.column("uri").to_pylist()) == sorted(str(p) for p in few_hundred_images)
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_flex_template_parameters_are_job_flags():
    """Every parameter in dataflow/metadata.json reaches the job as --name=value and parses."""
    import json

    metadata = json.loads((REPO / "dataflow" / "metadata.json").read_text())
    samples = {"top_k": "3", "resize": "squash", "max_error_fraction": "0.1"}
    argv = [f"--{p['name']}={samples.get(p['name'], 'gs://bucket/x')}" for p in metadata["parameters"]]
    flags, unknown = cli.build_parser().parse_known_args(argv)
    assert unknown == []
    for parameter in metadata["parameters"]:
        assert getattr(flags, parameter["name"]) not in (None, False)
    dockerfile = (REPO / "dataflow" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
