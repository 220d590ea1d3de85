"""The real MobileNetV3-Small models in ../shared label real photos, and reach the reference accuracy."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import read_output, run_job

# ../shared/README.md: top-1 on images/imagenet-sample-100, by model and preprocessing.
REFERENCE_TOP1 = {
    ("float", "squash"): 0.70,
    ("float", "center-crop"): 0.77,
    ("tflite", "squash"): 0.76,
    ("tflite", "center-crop"): 0.77,
}
# The 8-bit model's scores are multiples of 1/256, so ties and kernel-dependent rounding (TFLite's XNNPACK versus
# reference kernels) move a single image either way; the float model must match exactly.
TOLERANCE = {"float": 0.0, "tflite": 0.011}


def _model(kind: str, float_model: str, tflite_model: str) -> str:
    return float_model if kind == "float" else tflite_model


@pytest.mark.parametrize("kind", ["float", "tflite"])
def test_photos_get_expected_labels(tmp_path, shared, kind, float_model, tflite_model, labels_file):
    photos = shared / "images" / "photos"
    expected = {row["file"]: row["expected_top1"] for row in csv.DictReader(open(photos / "expected.csv"))}
    prefix = tmp_path / "labels"
    args = ["--input", photos, "--output", prefix, "--model", _model(kind, float_model, tflite_model)]
    assert run_job(*args, "--labels", labels_file) == 0
    labels = {Path(r["uri"]).name: r["label"] for r in read_output(prefix).to_pylist()}
    assert labels == expected


@pytest.mark.parametrize("kind,resize", sorted(REFERENCE_TOP1))
def test_accuracy_on_imagenet_sample_matches_reference(
    tmp_path, shared, kind, resize, float_model, tflite_model, labels_file
):
    sample = shared / "images" / "imagenet-sample-100"
    truth = {row["file"]: int(row["class_id"]) for row in csv.DictReader(open(sample / "labels.csv"))}
    prefix = tmp_path / "labels"
    args = ["--input", sample, "--output", prefix, "--model", _model(kind, float_model, tflite_model)]
    assert run_job(*args, "--labels", labels_file, "--resize", resize) == 0
    rows = read_output(prefix).to_pylist()
    assert len(rows) == len(truth) == 100
    top1 = sum(r["top_k"][0]["class_id"] == truth[Path(r["uri"]).name] for r in rows) / len(rows)
    top5 = sum(truth[Path(r["uri"]).name] in [c["class_id"] for c in r["top_k"]] for r in rows) / len(rows)
    print(f"{kind} {resize}: top-1 {top1:.2f} top-5 {top5:.2f}")
    assert top1 == pytest.approx(REFERENCE_TOP1[kind, resize], abs=TOLERANCE[kind])
