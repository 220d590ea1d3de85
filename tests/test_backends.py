"""The runtimes behind --backend: TF-free runs, TensorFlow-equal scores, sharing between threads, launch errors."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import HF_PINNED, HF_REPO, REPO, label, read_output, run_cli, shared_dir

from beam_pipeline.decode.preprocess import DecodeSpec, decode_image
from beam_pipeline.model import load, resolve

HEAVY = ("tensorflow", "keras", "tf_keras", "matplotlib")
TFHUB_HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v3_small_100_224/classification/5"

PHOTOS = shared_dir() / "images" / "photos"  # an --input that exists and holds images


def _photos(shared, resize: str = "center-crop") -> np.ndarray:
    """The 5 real photos (and the first 27 ImageNet sample photos) as the model's uint8 input."""
    paths = sorted((shared / "images" / "photos").glob("*.[jb][pm][gp]"))
    paths += sorted((shared / "images" / "imagenet-sample-100").glob("*.JPEG"))[:27]
    return np.stack([decode_image(p.read_bytes(), DecodeSpec((224, 224), resize, 10**8))[0] for p in paths])


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _job_with_importtime(tmp_path, *args, env: dict[str, str] | None = None) -> tuple[set[str], list[dict]]:
    """`python -X importtime -m beam_pipeline ARGS`: the packages the whole job imported, and its output rows.

    --verbose, since a normal run sends stderr to /dev/null while the model loads (and -X importtime writes there).
    """
    prefix = tmp_path / "out" / "labels"
    command = [sys.executable, "-X", "importtime", "-m", "beam_pipeline", "--output", prefix, "--verbose"]
    result = subprocess.run(
        [*command, *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return _imported(result.stderr), read_output(prefix).to_pylist()


def test_default_job_from_the_hub_never_imports_tensorflow(tmp_path, hf_cache, labels_file, shared):
    """The whole default job (launch check, Beam, workers) on a Hugging Face SavedModel runs on openvino: no
    TensorFlow, Keras or matplotlib."""
    imported, rows = _job_with_importtime(
        tmp_path, "--input", shared / "images" / "photos", "--labels", labels_file, env=hf_cache
    )
    assert "openvino" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert {r["model"] for r in rows} == {f"hf://{HF_REPO}@{HF_PINNED}"}
    assert {r["label"] for r in rows if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}


@pytest.mark.parametrize("backend", ["litert", "tensorflow"])
def test_tflite_job_imports_tensorflow_only_on_the_tensorflow_backend(
    tmp_path, backend, tflite_model, shared, labels_file
):
    """A .tflite file runs on litert by default without TensorFlow; --backend tensorflow is the control."""
    args = ["--input", shared / "images" / "photos", "--model", tflite_model, "--labels", labels_file]
    imported, rows = _job_with_importtime(tmp_path, *args, *(["--backend", backend] if backend != "litert" else []))
    if backend == "litert":
        assert "ai_edge_litert" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))
    else:  # TensorFlow, imported without the Keras (and matplotlib) that `import tensorflow` would pull in
        assert "tensorflow" in imported and not imported & {"keras", "matplotlib"}
    assert {r["label"] for r in rows if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}


def test_tensorflow_backend_skips_keras(float_model):
    """Loading and calling a SavedModel on the tensorflow backend imports TensorFlow but not Keras or matplotlib."""
    code = (
        "import sys, numpy as np\n"
        "from beam_pipeline.model import load, resolve\n"
        "c = load.load(resolve.resolve(sys.argv[1], 'tensorflow'))\n"
        "assert c.predict(np.zeros((2, 224, 224, 3), np.uint8)).shape == (2, 1001)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, float_model],
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['tensorflow']"


def test_openvino_scores_match_tensorflow(float_model, shared):
    images = _photos(shared)
    tf_scores = load.load(resolve.resolve(float_model, "tensorflow")).predict(images)
    ov_scores = load.load(resolve.resolve(float_model, "openvino")).predict(images)
    assert ov_scores.shape == tf_scores.shape == (len(images), 1001) and ov_scores.dtype == np.float32
    np.testing.assert_allclose(ov_scores.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ov_scores, tf_scores, atol=2e-3)
    np.testing.assert_array_equal(ov_scores.argmax(axis=1), tf_scores.argmax(axis=1))


def test_litert_scores_equal_tensorflow_tflite_interpreter(tflite_model, shared):
    """LiteRT runs the same kernels as TensorFlow's TFLite interpreter: identical dequantised softmax scores."""
    images = _photos(shared, resize="squash")
    litert = load.load(resolve.resolve(tflite_model))
    assert type(litert).__name__ == "LiteRTClassifier"
    np.testing.assert_array_equal(
        litert.predict(images), load.load(resolve.resolve(tflite_model, "tensorflow")).predict(images)
    )


def test_openvino_pads_the_last_request(float_model, shared):
    """Compiled for 4 images a request, 5 and 1 images give the same scores as the 1-image requests."""
    from beam_pipeline.model.backends.openvino import OpenVINOClassifier

    images = _photos(shared)[:5]
    by_four, by_one = OpenVINOClassifier(float_model, batch=4), OpenVINOClassifier(float_model, batch=1)
    np.testing.assert_allclose(by_four.predict(images), by_one.predict(images), atol=1e-5)
    np.testing.assert_allclose(by_four.predict(images[:1]), by_one.predict(images[:1]), atol=1e-5)
    assert by_four.predict(images[:0]).shape == (0, 1001)


@pytest.mark.parametrize("backend", ["openvino", "litert"])
def test_one_classifier_shared_by_many_threads(backend, float_model, tflite_model, shared):
    """Beam calls run_inference from several threads on one model: concurrent batches get their own scores."""
    classifier = load.load(resolve.resolve(float_model if backend == "openvino" else tflite_model, backend))
    images = _photos(shared)
    batches = [images[i : i + 5] for i in range(0, len(images), 5)] * 3
    expected = [classifier.predict(batch) for batch in batches]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(classifier.predict, batches))
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, atol=1e-6)


def test_openvino_resolves_a_tfhub_handle_without_importing_tensorflow(tmp_path, float_model, labels_file, shared):
    """TF Hub handles go through tensorflow_hub's cache in a child process; the job itself stays TF-free."""
    cache = tmp_path / "tfhub"
    shutil.copytree(float_model, cache / hashlib.sha1(TFHUB_HANDLE.encode()).hexdigest())
    imported, rows = _job_with_importtime(
        tmp_path,
        "--input",
        shared / "images" / "photos",
        "--model",
        TFHUB_HANDLE,
        "--labels",
        labels_file,
        "--backend",
        "openvino",
        env={"TFHUB_CACHE_DIR": str(cache)},
    )
    assert not imported & set(HEAVY)
    assert {r["model"] for r in rows} == {TFHUB_HANDLE}
    assert {r["label"] for r in rows if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}


def test_savedmodel_on_another_filesystem_runs_on_openvino(tmp_path, float_model, labels_file, shared):
    """A SavedModel on any fsspec filesystem (memory:// here, as gs:// would be) is copied locally, then read by OV."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(f"{float_model}/", "/ovmodels/mnv3/", recursive=True)
    prefix = tmp_path / "out" / "labels"
    try:
        code = label(
            shared / "images" / "photos", prefix, "memory://ovmodels/mnv3", labels_file, "--backend", "openvino"
        )
    finally:
        fs.rm("/ovmodels", recursive=True)
    assert code == 0
    assert {r["label"] for r in read_output(prefix).to_pylist() if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}


def _launch_error(capsys, *args) -> str:
    assert label(*args) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "backend,model_fixture,words",
    [
        ("litert", "float_model", "litert cannot run SavedModels; use tensorflow or openvino"),
        ("openvino", "tflite_model", "openvino cannot run .tflite files; use tensorflow or litert"),
    ],
)
def test_a_backend_that_cannot_read_the_model_fails_at_launch(
    tmp_path, request, backend, model_fixture, words, labels_file, capsys
):
    model = request.getfixturevalue(model_fixture)
    message = _launch_error(capsys, PHOTOS, tmp_path / "o", model, labels_file, "--backend", backend)
    assert message.endswith(f"error: argument --backend: {words}"), message


def test_a_missing_extra_is_one_line_naming_backend(tmp_path, monkeypatch, tflite_model, labels_file, capsys):
    """As if the extra were not installed: importlib finds no module whose sys.modules entry is None."""
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    message = _launch_error(capsys, PHOTOS, tmp_path / "o", tflite_model, labels_file, "--backend", "litert")
    expected = "argument --backend: litert is not installed: pip install 'beam-image-labeller[litert]'"
    assert message.endswith(expected), message


def test_a_missing_default_runtime_is_one_line_suggesting_tensorflow(
    tmp_path, monkeypatch, float_model, labels_file, capsys
):
    """openvino is a core dependency, the default for SavedModels: missing (an install without dependencies), the
    launch says so and names the other runtime that reads SavedModels."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    message = _launch_error(capsys, PHOTOS, tmp_path / "o", float_model, labels_file)
    expected = (
        "argument --backend: openvino is not installed: it is a dependency of beam-image-labeller: "
        "pip install beam-image-labeller (or --backend tensorflow)"
    )
    assert message.endswith(expected), message


def test_a_worker_without_the_runtime_says_which_extra_it_needs(monkeypatch, tflite_model):
    """The ModelRef pickled to a worker names its backend; a worker lacking that runtime says so when it loads."""
    ref = resolve.resolve(tflite_model, "litert")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    expected = r"--backend litert is not installed: pip install 'beam-image-labeller\[litert\]'"
    with pytest.raises(resolve.ModelError, match=expected):
        load.load(ref, num_threads=1)


def test_a_tflite_file_without_litert_suggests_the_tensorflow_backend(
    tmp_path, monkeypatch, tflite_model, labels_file, capsys
):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    message = _launch_error(capsys, PHOTOS, tmp_path / "o", tflite_model, labels_file)
    assert "--backend: litert is not installed" in message and "--backend tensorflow" in message


def test_unknown_backend_is_an_argparse_error(tmp_path):
    result = run_cli("--input", PHOTOS, "--output", tmp_path / "o", "--backend", "onnx")
    message = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in message
    assert "argument --backend: invalid choice: 'onnx'" in message and "openvino" in message
