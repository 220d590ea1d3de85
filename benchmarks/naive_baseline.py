"""The naive baseline: the labelling pipeline as Beam's RunInference documentation writes one.

`beam.Create(paths) | Map(decode) | RunInference(TF handler) | Map(row) | WriteToParquet`: full Pillow decode (no
JPEG draft mode), .convert('RGB').resize((224, 224)), float32 / 255; Beam's stock `TFModelHandlerNumpy` with its
default batching, whose `load_model` (tf.keras.models.load_model) cannot load this TF Hub SavedModel under Keras 3,
so a subclass overrides only `load_model` with tf.saved_model.load; its stock `run_inference` calls model(batch),
which this SavedModel's __call__ accepts. Beam's pipeline options pass through, as in Beam's examples: with none,
Beam's default DirectRunner, which first tries to download the Prism runner and, offline, falls back.

    python benchmarks/naive_baseline.py --input-dir CORPUS --output /tmp/naive --model SAVED_MODEL
    python benchmarks/naive_baseline.py ... --runner=FnApiRunner --direct_running_mode=in_memory

It prints the runner that ran and "naive: N images in S s" (the pipeline's run, imports and start-up excluded).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

SCHEMA = pa.schema([("path", pa.string()), ("class_id", pa.int64()), ("score", pa.float32())])


# Beam and TensorFlow are imported where they are used, so that --help answers at once and TF_CPP_MIN_LOG_LEVEL is
# set before TensorFlow loads (Beam's tensorflow_inference module imports TensorFlow).


def saved_model_handler(model: str) -> Any:
    """Beam's TFModelHandlerNumpy, loading with tf.saved_model.load instead of tf.keras.models.load_model."""
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

    class SavedModelHandlerNumpy(TFModelHandlerNumpy):
        def load_model(self):
            import tensorflow as tf

            return tf.saved_model.load(self._model_uri)

    return SavedModelHandlerNumpy(model)


def read_and_preprocess(path: str) -> tuple[str, np.ndarray]:
    """The whole image decoded, converted to RGB and squashed to 224x224, as float32 in [0, 1]."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        image = Image.open(f).convert("RGB").resize((224, 224))
    return path, np.asarray(image, dtype=np.float32) / 255.0


def to_row(path: str, result: Any) -> dict[str, Any]:
    """The top-1 class and its logit, from RunInference's PredictionResult."""
    logits = np.asarray(result.inference)
    return {"path": path, "class_id": int(np.argmax(logits)), "score": float(np.max(logits))}


class _Kept(logging.Handler):
    """Keeps the messages of the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run(input_dir: str, output: str, model: str, beam_args: list[str]) -> tuple[str, int, float]:
    """Labels every *.jpg in `input_dir` into `output`-*.parquet; returns the runner, the images, the seconds."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    options = PipelineOptions(beam_args)
    # The DirectRunner logs its Prism attempt and fallback at INFO.
    direct_log = logging.getLogger("apache_beam.runners.direct.direct_runner")
    kept = _Kept()
    direct_log.addHandler(kept)
    direct_log.setLevel(logging.INFO)
    paths = sorted(str(p) for p in Path(input_dir).glob("*.jpg"))
    started = time.monotonic()
    with beam.Pipeline(options=options) as p:
        (
            p
            | "Paths" >> beam.Create(paths)
            | "Preprocess" >> beam.Map(read_and_preprocess)
            | "RunInference" >> RunInference(KeyedModelHandler(saved_model_handler(model)))
            | "ToRow" >> beam.MapTuple(to_row)
            | "Write" >> beam.io.WriteToParquet(output, SCHEMA, file_name_suffix=".parquet")
        )
    seconds = time.monotonic() - started
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        fell_back = any("Falling back" in m for m in kept.messages)
        runner = "DirectRunner (Prism download failed, fell back)" if fell_back else "DirectRunner"
    else:
        runner = f"{runner}, direct_running_mode={options.view_as(DirectOptions).direct_running_mode}"
    return runner, len(paths), seconds


def main(argv: list[str] | None = None) -> int:
    """Runs the baseline on a folder of JPEGs and prints its runner and pipeline time."""
    parser = argparse.ArgumentParser(
        description="The labelling pipeline as Beam's RunInference documentation writes one; Beam's pipeline options "
        "(--runner, --direct_running_mode, ...) pass through.",
    )
    parser.add_argument("--input-dir", required=True, help="a folder of *.jpg images")
    parser.add_argument("--output", required=True, help="output prefix of the Parquet shards")
    parser.add_argument("--model", required=True, help="a TensorFlow SavedModel taking float32 [B,224,224,3] in [0, 1]")
    args, beam_args = parser.parse_known_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    runner, images, seconds = run(args.input_dir, args.output, args.model, beam_args)
    print(f"naive runner: {runner}")
    print(f"naive: {images} images in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
