"""Shared fixtures: the ../shared data, a small TF-Hub-format model, image folders, and running the job."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import pipeline
from beam_pipeline.launch.options import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent
SHARED_ENV = "LABELLER_SHARED_DIR"
TINY_CLASSES = 1001
HF_REPO, HF_PINNED = DEFAULT_MODEL.removeprefix("hf://").split("@")
HF_MAIN = "0123456789abcdef0123456789abcdef01234567"  # a later upload that the repo's `main` now points to
# Tests that use one of these fixtures load a TensorFlow model or run the whole job, so they are marked slow.
SLOW_FIXTURES = frozenset({"tiny_model", "float_model", "tflite_model", "pipeline_run"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `slow` every test that uses a model or end-to-end fixture (directly or through another fixture)."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# What a test run may leave in the checkout: caches (worker venvs, Hypothesis' examples, bytecode) and the venv.
CHECKOUT_CACHES = (".cache/", ".hypothesis/", ".pytest_cache/", ".ruff_cache/", ".venv", "__pycache__/", ".egg-info/")


def checkout_files() -> set[str]:
    """Untracked and ignored paths in the checkout (as `git status` names them), caches left out."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    entries = {line[3:] for line in status.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {e for e in entries if not any(cache in e for cache in CHECKOUT_CACHES)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_CHECKOUT_BEFORE] = checkout_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run when its tests wrote into the checkout: they write under tmp_path (pytest-xdist workers
    leave the check to the controller, which sees every worker's writes)."""
    if hasattr(session.config, "workerinput") or _CHECKOUT_BEFORE not in session.config.stash:
        return
    written = sorted(checkout_files() - session.config.stash[_CHECKOUT_BEFORE])
    if written:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(f"tests wrote into the checkout (use tmp_path): {written}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_CHECKOUT_BEFORE = pytest.StashKey[set]()


def shared_dir() -> Path:
    """../shared (or $LABELLER_SHARED_DIR); fails the test clearly when it is missing."""
    path = Path(os.environ.get(SHARED_ENV, REPO.parent / "shared")).resolve()
    if not (path / "models").is_dir():
        pytest.fail(f"shared test data not found at {path}: set {SHARED_ENV} to the folder holding models/ and images/")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def float_model(shared: Path) -> str:
    return str(shared / "models" / "mobilenet_v3_small_100_224_float")


@pytest.fixture(scope="session")
def tflite_model(shared: Path) -> str:
    return str(shared / "models" / "mobilenet_v3_small_100_224_uint8.tflite")


@pytest.fixture(scope="session")
def labels_file(shared: Path) -> str:
    return str(shared / "labels" / "ImageNetLabels.txt")


@pytest.fixture
def hf_cache(tmp_path: Path, float_model: str) -> dict[str, str]:
    """An offline Hugging Face cache for the default model: the real float SavedModel at the pinned commit, and a
    newer `main` whose SavedModel is garbage (a run that followed `main` instead of the pin could not load it).
    Returns the environment that makes huggingface_hub use it."""
    repo = tmp_path / "hub" / ("models--" + HF_REPO.replace("/", "--"))
    shutil.copytree(float_model, repo / "snapshots" / HF_PINNED)
    (repo / "snapshots" / HF_MAIN).mkdir(parents=True)
    (repo / "snapshots" / HF_MAIN / "saved_model.pb").write_bytes(b"not a SavedModel")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HF_MAIN)
    return {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A small model with random weights saved in TF Hub's format: __call__ and serving_default, 1001 logits."""
    import tensorflow as tf

    class TinyClassifier(tf.Module):
        def __init__(self):
            super().__init__()
            rng = tf.random.Generator.from_seed(7)
            self.kernel = tf.Variable(rng.normal([3, 3, 3, 8]), name="conv/weights")
            self.dense = tf.Variable(rng.normal([8, TINY_CLASSES]), name="logits/weights")

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def __call__(self, images):
            x = tf.nn.relu(tf.nn.conv2d(images * 2.0 - 1.0, self.kernel, strides=4, padding="SAME"))
            return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.dense)

    module = TinyClassifier()
    path = tmp_path_factory.mktemp("tiny_model") / "savedmodel"
    serving = tf.function(lambda inputs: {"logits": module(inputs)}).get_concrete_function(
        tf.TensorSpec([None, 224, 224, 3], tf.float32, name="inputs")
    )
    tf.saved_model.save(module, str(path), signatures={"serving_default": serving})
    return str(path)


def run_job(*args: str) -> int:
    """Runs the job in this process, as `python -m beam_pipeline ARGS` would; returns its exit code."""
    from beam_pipeline.launch.cli import main

    return main([str(a) for a in args])


def label(input_: object, output: object, model: object, labels: object, *extra: object) -> int:
    """run_job with the four flags every run needs, then any others."""
    return run_job("--input", input_, "--output", output, "--model", model, "--labels", labels, *extra)


def run_cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m beam_pipeline ARGS` in a new process (for environment variables read at import)."""
    return subprocess.run(
        [sys.executable, "-m", "beam_pipeline", *map(str, args)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_output(prefix: Path | str) -> pa.Table:
    """Every final shard of a run, read back with pyarrow."""
    files = sorted(Path(prefix).parent.glob(Path(prefix).name + "-*-of-*.parquet"))
    assert files, f"no output shards for {prefix}"
    return pa.concat_tables([pq.read_table(f) for f in files])


@contextlib.contextmanager
def serve_folder(directory: Path | str) -> Iterator[tuple[str, list[str]]]:
    """Serves a folder over HTTP on 127.0.0.1; yields (base URL, the paths requested so far)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args):
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """An http URL on 127.0.0.1 that refuses connections: its port is bound here and never listened on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/image.png"


@pytest.fixture
def fake_model(monkeypatch):
    """LabelRows builds FakeClassifierHandler where the job builds ImageClassifierHandler.

    Patching the one name keeps LabelRows.expand as the job runs it (decode, RunInference with its dead-letter
    output, error rows), where rebuilding that graph here would test a copy of it.
    """
    from fake_job import FakeClassifierHandler

    monkeypatch.setattr(pipeline, "ImageClassifierHandler", FakeClassifierHandler)
