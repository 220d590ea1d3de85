"""What a Dataflow launch needs, checked offline: the sdist, the job graph, and Beam's portable execution path."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import posixpath
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.ml.inference.base import _RunInferenceDoFn
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from conftest import REPO, label, read_output
from images import jpeg_bytes, photo
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from beam_pipeline import pipeline
from beam_pipeline.decode.dofn import DecodeImage
from beam_pipeline.launch import cli, job

BRANCHES = ("Labelled", "Failed", "InferenceFailed")  # each branch of rows is written and counted on its own
EXPECTED_STEPS = {"ExpandInputs", "CountRowsIn", "LabelRows", "AllFiles", "AllCounts", "Finalize"}
EXPECTED_STEPS |= {f"{step}{branch}" for step in ("Write", "Count") for branch in BRANCHES}
EXPECTED_LABELLING_STEPS = {"Decode", "Classify", "LabelledRows", "InferenceErrorRows"}
LOCK = REPO / "dataflow" / "requirements.lock"
EXTERNAL_IMAGES = 300


def _worker_venv(kind: str) -> Path:
    """A venv built as Dataflow builds a worker's environment (scripts/worker_env.py), cached under .cache/."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "worker_env.py"), "venv", kind],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode:
        pytest.fail(f"building the {kind} worker venv failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.splitlines()[-1])


@pytest.fixture(scope="session")
def setup_file_venv() -> Path:
    """Beam's SDK requirement, then the sdist with its dependencies: what --setup_file gives a worker."""
    return _worker_venv("setup-file")


@pytest.fixture(scope="session")
def container_venv() -> Path:
    """Beam's SDK requirement, then dataflow/requirements.lock and the sdist: what dataflow/worker.Dockerfile does."""
    return _worker_venv("container")


def _worker_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a process on a worker: the venv's bin first on PATH, and none of the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", **extra}


# No credentials and no network: gcsfs is anonymous and google.auth never probes the GCE metadata server.
OFFLINE_GCS = {"FSSPEC_GCS_TOKEN": "anon", "NO_GCE_CHECK": "True"}


def _in_venv(venv: Path, code: str, cwd: Path) -> str:
    result = subprocess.run(
        ["python", "-c", code], cwd=cwd, env=_worker_env(venv, **OFFLINE_GCS), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # a worker venv (built, or refreshed from a fresh sdist)
def test_setup_file_workers_get_what_gs_needs(setup_file_venv, tmp_path):
    """The sdist installed as Dataflow installs it (install_requires, no extras) can open gs:// and run the job."""
    probe = (
        "import fsspec, beam_pipeline, beam_pipeline.pipeline; "
        "fsspec.filesystem('gs'); fsspec.filesystem('https'); print(beam_pipeline.__file__)"
    )
    assert _in_venv(setup_file_venv, probe, tmp_path).strip().startswith(str(setup_file_venv))
    _in_venv(
        setup_file_venv,
        "import subprocess, sys; subprocess.run([sys.executable, '-m', 'pip', 'check'], check=True)",
        tmp_path,
    )


@pytest.mark.slow  # a worker venv (built, or refreshed from a fresh sdist)
def test_lock_installs_as_in_the_worker_image(container_venv, tmp_path):
    """The lock installs on Beam's SDK requirement without conflicts, and the image can open gs:// and s3://."""
    probe = "import fsspec, beam_pipeline.pipeline; fsspec.filesystem('gs'); fsspec.filesystem('s3'); print('ok')"
    assert _in_venv(container_venv, probe, tmp_path).strip() == "ok"
    _in_venv(
        container_venv,
        "import subprocess, sys; subprocess.run([sys.executable, '-m', 'pip', 'check'], check=True)",
        tmp_path,
    )


def _lock_pins() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lock_pins_every_worker_requirement_within_setup_py():
    """Each install_requires, gcp and s3 requirement (for Linux x86_64, Python 3.11) is pinned in the lock at a
    version its specifier accepts; the lock's Beam is the launcher's and the worker image's."""
    from build.util import project_wheel_metadata

    pins = _lock_pins()
    worker = {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"}
    worker |= {"python_version": "3.11", "python_full_version": "3.11.0"}
    checked = set()
    for line in project_wheel_metadata(REPO, isolated=False).get_all("Requires-Dist"):
        requirement = Requirement(line)
        extras = ("", "gcp", "s3")
        if requirement.marker and not any(requirement.marker.evaluate({**worker, "extra": e}) for e in extras):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{LOCK.name} pins {name}=={pins[name]}"
        checked.add(name)
    assert {"apache-beam", "gcsfs", "s3fs", "tensorflow-cpu", "pyarrow"} <= checked
    assert pins["apache-beam"] == Version(beam.__version__), "the lock's Beam is the launcher's"
    worker_image = (REPO / "dataflow" / "worker.Dockerfile").read_text()
    assert f"ARG BEAM_VERSION={beam.__version__}\n" in worker_image
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION}" in worker_image


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
    by_name = {t.unique_name: t for t in transforms}
    reshuffle = common_urns.composites.RESHUFFLE.urn
    spread = {name: by_name.get(f"ExpandInputs/{name}") for name in ("ListPages/SpreadPrefixes", "SpreadPages")}
    spread["SpreadOverWorkers"] = by_name.get("ExpandInputs/SpreadOverWorkers")
    assert all(t is not None and t.spec.urn == reshuffle for t in spread.values()), "sub-prefixes, pages, rows"
    listed = by_name["ExpandInputs/ListPages/AllPages"].outputs
    assert dict(spread["SpreadPages"].inputs) == dict(listed), "pages are spread as they are listed"
    rows = by_name["ExpandInputs/PageRows"].outputs
    assert dict(spread["SpreadOverWorkers"].inputs) == dict(rows), "and the rows right after"
    # The DoFns were pickled into the job, and unpickle as the workers will.
    for name, dofn in [
        ("LabelRows/Decode/ParDo(DecodeImage)", DecodeImage),
        ("LabelRows/Classify/BeamML_RunInference/ParDo(_RunInferenceDoFn)/ParDo(_RunInferenceDoFn)", _RunInferenceDoFn),
    ]:
        payload = beam_runner_api_pb2.ParDoPayload.FromString(by_name[name].spec.payload)
        fn = pickler.loads(payload.do_fn.payload)[0]
        fn = getattr(fn, "_fn", fn)  # RunInference's DoFn inside Beam's with_exception_handling wrapper
        assert isinstance(fn, dofn), name


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


# Values a Flex Template user might type: every typed flag's parameter regex accepts exactly those its parser does.
PROBES = ["0", "1", "7", "64", "007", "0.5", "1.0", "1.5", ".25", "-1", "", "abc", "true", "false", "True", "yes"]


def _flags() -> dict[str, argparse.Action]:
    """The job's own flags (launch/options.py), by parameter name."""
    (group,) = [g for g in cli.build_parser()._action_groups if g.title == "beam-image-labeller"]
    return {action.dest: action for action in group._group_actions}


def _parses(action: argparse.Action, value: str) -> bool:
    if action.choices is not None:
        return value in action.choices
    if action.type is None:
        return True
    try:
        action.type(value)
    except (argparse.ArgumentTypeError, ValueError):
        return False
    return True


def _sample(action: argparse.Action) -> str:
    """A value the flag parses into something other than its default."""
    if action.type is None and action.choices is None:
        return "gs://bucket/x"
    candidates = [*(action.choices or []), "true", "7", "0.5"]
    return next(v for v in candidates if _parses(action, v) and (action.type or str)(v) != action.default)


def test_flex_template_parameters_are_the_job_flags():
    """dataflow/metadata.json has a parameter for every flag of the job and no other (a scheduled template can set
    each, --overwrite for a same-day retry included); --input and --output alone are required."""
    parameters = {p["name"]: p for p in json.loads((REPO / "dataflow" / "metadata.json").read_text())["parameters"]}
    flags = _flags()
    assert sorted(parameters) == sorted(flags)
    assert sorted(n for n, p in parameters.items() if not p["isOptional"]) == ["input", "output"]
    for name, parameter in parameters.items():
        assert parameter["label"] and parameter["helpText"], name


def test_flex_template_parameter_regexes_match_the_flags_parsers():
    """A typed flag (a switch, a choice, a number) has a parameter regex, and the regex accepts exactly the values
    its parser accepts; a numeric flag's help states its default."""
    parameters = {p["name"]: p for p in json.loads((REPO / "dataflow" / "metadata.json").read_text())["parameters"]}
    for name, action in _flags().items():
        regexes = parameters[name].get("regexes", [])
        typed = not _parses(action, "abc")  # free text takes any word
        assert bool(regexes) == typed, f"{name}: regexes {regexes} for a {'typed' if typed else 'free text'} flag"
        for value in [*PROBES, *(action.choices or [])]:
            matched = any(re.fullmatch(regex, value) for regex in regexes)
            assert not typed or matched == _parses(action, value), f"{name}: {value!r} matched {matched}"
        if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
            stated = re.search(r"\(default: ([0-9.e+]+)", parameters[name]["helpText"])
            assert stated and float(stated[1]) == action.default, f"{name}: the help does not say {action.default}"


def test_flex_template_parameters_reach_the_job():
    """Every parameter, given as a Flex Template passes it (--name=value), parses into the job's flags."""
    parameters = json.loads((REPO / "dataflow" / "metadata.json").read_text())["parameters"]
    flags = _flags()
    samples = {name: _sample(action) for name, action in flags.items()}
    argv = [f"--{p['name']}={samples[p['name']]}" for p in parameters]
    parsed, unknown = cli.build_parser().parse_known_args(argv)
    assert unknown == []
    for parameter in parameters:
        assert getattr(parsed, parameter["name"]) != flags[parameter["name"]].default, parameter["name"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "worker.Dockerfile"])
def test_images_copy_what_exists_and_install_the_lock(dockerfile):
    """Docker cannot run here: every COPY source exists, and the image pip-installs the shared lock it copied."""
    lines = (REPO / "dataflow" / dockerfile).read_text().splitlines()
    copies = [line.split()[1:] for line in lines if line.startswith("COPY ")]
    for *sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), source
    (lock_copy,) = [posixpath.normpath(c[-1]) for c in copies if c[:-1] == [str(LOCK.relative_to(REPO))]]
    installed = [
        w[i + 1]
        for w in (line.split() for line in lines if "pip install" in line)
        for i in range(len(w) - 1)
        if w[i] == "-r"
    ]
    assert [posixpath.normpath(path) for path in installed] == [lock_copy]
    assert any("--no-deps" in line for line in lines if "pip install" in line), "the package alone, on the lock"


@contextlib.contextmanager
def loopback_only_network() -> Iterator[list[str]]:
    """A private network namespace holding only a loopback interface; yields the command prefix that enters it.

    Beam's worker pool and its runner's data, control and state servers bind every interface ([::]); in here every
    interface is 127.0.0.1/::1. Needs unshare(1), nsenter(1) and ip(8) (util-linux, iproute2).
    """
    holder = subprocess.Popen(
        ["unshare", "--net", "--map-root-user", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "up\n", "could not make a network namespace (unshare, ip)"
        yield ["nsenter", "-t", str(holder.pid), "-U", "-n", "--preserve-credentials", "--"]
    finally:
        holder.kill()
        holder.wait()


def _start(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """A process in a session of its own (so it is stopped with whatever it started), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of process `pid` (read from /proc)."""
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def _wait_for(condition, what: str, timeout: float, *alive: subprocess.Popen) -> None:
    """Polls `condition` until it holds; fails after `timeout` s or as soon as one of `alive` has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in alive:
            assert process.poll() is None, f"{process.args[7:10]} exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.5)


def test_job_finishes_on_external_workers_after_its_launcher_is_killed(
    tmp_path, container_venv, tiny_model, labels_file, shared
):
    """Dataflow's shape offline: a job service and a worker pool running the worker image's environment; the
    launcher (this checkout, the dev venv) submits and is SIGKILLed; the job still writes every row and `_SUCCESS`."""
    folder = tmp_path / "images"
    folder.mkdir()
    base = photo(shared).resize((320, 240))
    for i in range(EXTERNAL_IMAGES):
        (folder / f"img_{i:03d}.jpg").write_bytes(jpeg_bytes(base.rotate(i % 360)))
    prefix = tmp_path / "out" / "labels"
    workdir = tmp_path / "worker-cwd"  # nothing importable: workers must find beam_pipeline in their venv
    workdir.mkdir()
    job_port, pool_port = 8099, 50000  # free by construction: the namespace is new
    worker_env = _worker_env(container_venv)
    beam_module = "apache_beam.runners"
    with loopback_only_network() as netns:
        job_service = _start(
            [*netns, "python", "-m", f"{beam_module}.portability.local_job_service_main", "--port", str(job_port)],
            tmp_path / "job_service.log",
            cwd=workdir,
            env=worker_env,
        )
        pool = _start(
            [*netns, "python", "-m", f"{beam_module}.worker.worker_pool_main", "--service_port", str(pool_port)],
            tmp_path / "worker_pool.log",
            cwd=workdir,
            env=worker_env,
        )
        launcher = None
        try:
            _wait_for(lambda: _listening(job_service.pid, job_port), "job service", 120, job_service)
            _wait_for(lambda: _listening(pool.pid, pool_port), "worker pool", 120, pool)
            job_log = tmp_path / "job_service.log"
            launcher = _start(
                [*netns, sys.executable, "-m", "beam_pipeline", "--input", str(folder), "--output", str(prefix)]
                + ["--model", tiny_model, "--labels", labels_file, "--runner", "PortableRunner"]
                + ["--job_endpoint", f"localhost:{job_port}", "--environment_type", "EXTERNAL"]
                + ["--environment_config", f"localhost:{pool_port}"]
                # file:// is read off the local runner only when named: these "remote" workers share this disk.
                + ["--allowed-schemes", "file"],
                tmp_path / "launcher.log",
                cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            _wait_for(lambda: b"Running job" in job_log.read_bytes(), "running job", 300, launcher, job_service)
            success = prefix.parent / "_SUCCESS"
            assert not success.exists()
            launcher.kill()  # SIGKILL: nothing of the launcher's runs after this
            launcher.wait()
            killed_at = datetime.datetime.now(datetime.timezone.utc)
            failed = b"Error running pipeline"
            _wait_for(lambda: success.exists() or failed in job_log.read_bytes(), "_SUCCESS", 900, job_service, pool)
            assert failed not in job_log.read_bytes(), job_log.read_text()[-5000:]
        finally:
            for process in (launcher, pool, job_service):
                if process is not None:
                    _stop(process)
    record = json.loads(success.read_text())
    print("_SUCCESS after the launcher was killed:", json.dumps(record, indent=1))
    assert launcher.returncode == -signal.SIGKILL
    assert datetime.datetime.fromisoformat(record["finished_at"]) > killed_at, "finished after the launcher died"
    assert record["status"] == "ok", record["problems"]
    assert record["rows"] == EXTERNAL_IMAGES and record["rows_in"] == EXTERNAL_IMAGES
    table = read_output(prefix)
    uris = table.column("uri").to_pylist()
    assert sorted(uris) == sorted(str(p) for p in folder.iterdir()), "every image, each once"
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert b"Starting worker with command" in (tmp_path / "worker_pool.log").read_bytes(), "the pool's workers ran it"


def test_threads_per_process_follow_the_runner_layout():
    from beam_pipeline.launch.runner import threads_per_process
    from beam_pipeline.worker import default_num_threads

    assert threads_per_process(["--runner=FnApiRunner", "--direct_running_mode=in_memory"]) is None
    two = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert threads_per_process(two) == max(1, default_num_threads() // 2)
    assert threads_per_process(["--runner=DataflowRunner"]) == 1, "one SDK process per vCPU"
