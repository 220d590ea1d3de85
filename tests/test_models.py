"""Where models and labels come from: TF Hub handles, remote SavedModels, label URLs; bad models fail at launch; how
scores rank into top-k."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
from conftest import read_output, run_cli, run_job, serve_folder, shared_dir

from beam_pipeline.model import labels as labels_module
from beam_pipeline.model.handler import top_k_ids

TFHUB_HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v3_small_100_224/classification/5"

PHOTOS = shared_dir() / "images" / "photos"  # an --input that exists and holds images


def test_tfhub_handle_from_a_prepopulated_cache(tmp_path, float_model, labels_file, shared):
    """tensorflow_hub resolves a handle to $TFHUB_CACHE_DIR/sha1(handle) without the network when it is there (in
    the job's own process on the tensorflow backend; test_backends covers the child process openvino uses)."""
    cache = tmp_path / "tfhub"
    shutil.copytree(float_model, cache / hashlib.sha1(TFHUB_HANDLE.encode()).hexdigest())
    prefix = tmp_path / "out" / "labels"
    result = run_cli(
        "--input",
        shared / "images" / "photos",
        "--output",
        prefix,
        "--model",
        TFHUB_HANDLE,
        "--labels",
        labels_file,
        "--backend",
        "tensorflow",
        env={"TFHUB_CACHE_DIR": str(cache)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_output(prefix).to_pylist()
    assert {r["model"] for r in rows} == {TFHUB_HANDLE}
    assert {r["label"] for r in rows if r["uri"].endswith("hot_dog.jpg")} == {"hotdog"}


def test_savedmodel_on_another_filesystem_is_copied_and_loaded(tmp_path, float_model, labels_file, shared):
    """A SavedModel on any fsspec filesystem (here memory://, as gs:// would be) is fetched to local disk first, and
    loaded by TensorFlow (test_backends runs the same on the default, openvino)."""
    fs = fsspec.filesystem("memory")
    fs.put(f"{float_model}/", "/models/mnv3/", recursive=True)
    prefix = tmp_path / "out" / "labels"
    try:
        assert (
            run_job(
                "--input",
                shared / "images" / "photos",
                "--output",
                prefix,
                "--model",
                "memory://models/mnv3",
                "--labels",
                labels_file,
                "--backend",
                "tensorflow",
            )
            == 0
        )
    finally:
        fs.rm("/models", recursive=True)
    labels = {Path(r["uri"]).name: r["label"] for r in read_output(prefix).to_pylist()}
    assert labels["hot_dog.jpg"] == "hotdog"


def test_a_folder_without_a_model_fails_at_launch(tmp_path, labels_file, capsys):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "weights.pkl").write_bytes(b"\x80\x04pickles are never loaded")
    assert (
        run_job(
            "--input",
            PHOTOS,
            "--output",
            tmp_path / "o",
            "--model",
            tmp_path / "not_a_model",
            "--labels",
            labels_file,
        )
        == 2
    )
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--model" in message and "saved_model.pb" in message


def test_label_file_url_is_fetched_once_and_cached(tmp_path, labels_file, monkeypatch):
    monkeypatch.setattr(labels_module, "CACHE_DIR", str(tmp_path / "cache"))
    with serve_folder(Path(labels_file).parent) as (base_url, requests):
        url = f"{base_url}/ImageNetLabels.txt"
        first = labels_module.read_labels(url)
    second = labels_module.read_labels(url)  # the server is gone: this comes from the cache
    assert first == second and len(first) == 1001 and first[:2] == ["background", "tench"]
    assert len([r for r in requests if "ImageNetLabels" in r]) >= 1


@pytest.mark.parametrize("backend", ["litert", "tensorflow"])
def test_tflite_batches_match_single_images(tflite_model, shared, backend):
    """The 8-bit model's batch is fixed at 1 in the file; the classifier loops, with the same scores per image."""
    import numpy as np

    from beam_pipeline.decode.preprocess import DecodeSpec, decode_image
    from beam_pipeline.model import load, resolve

    classifier = load.load(resolve.resolve(tflite_model, backend))
    photos = sorted((shared / "images" / "photos").glob("*.bmp"))
    images = np.stack([decode_image(p.read_bytes(), DecodeSpec((224, 224), "center-crop", 10**8))[0] for p in photos])
    batch = classifier.predict(images)
    singles = np.concatenate([classifier.predict(image[None]) for image in images])
    assert batch.shape == (len(photos), 1001)
    np.testing.assert_allclose(batch, singles)
    # Dequantised softmax: multiples of 1/256 in [0, 1); rounding drops the many tiny classes, so rows sum to <= 1.
    assert np.all(batch >= 0) and np.all(batch.sum(axis=1) <= 1.0 + 1e-6) and np.all(batch.max(axis=1) > 0.2)
    np.testing.assert_array_equal(batch * 256, np.round(batch * 256))


@pytest.mark.parametrize("k", [1, 5, 1001])
def test_top_k_ids_rank_as_a_stable_sort_with_ties_to_the_lower_id(k):
    rng = np.random.default_rng(7)
    smooth = rng.random((64, 1001), dtype=np.float32)
    quantised = np.round(smooth * 16) / 16  # scores tie as an 8-bit model's do, often at the k-th place
    for scores in (smooth, quantised):
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(np.stack(top_k_ids(scores, k)), expected)
