"""The peer: the labelling job as a user would write it in plain TensorFlow, with tf.data (no Beam).

List the files, a parallel `map` of tf.io.decode_image, a central crop of 87.5%, tf.image.resize to 224x224,
batches of 64, prefetch(AUTOTUNE), the same SavedModel, softmax top-5, one Parquet file:

    python benchmarks/tfdata_peer.py --input-dir CORPUS --output /tmp/peer.parquet --model SAVED_MODEL --labels L

benchmarks/peers.py times this whole command beside the job's. Deliberately what a user would write, so nothing here
is tuned: TensorFlow is imported as usual (Keras included) and decodes every JPEG at full size.
"""

from __future__ import annotations

import argparse
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402 - after TF_CPP_MIN_LOG_LEVEL, which TensorFlow reads when imported


def preprocess(path: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.central_crop(image, 0.875)
    return tf.image.resize(image, (224, 224)) / 255.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", required=True, help="a folder of *.jpg images")
    parser.add_argument("--output", required=True, help="the Parquet file to write")
    parser.add_argument("--model", required=True, help="a SavedModel taking float32 [N,224,224,3] in [0, 1]")
    parser.add_argument("--labels", required=True, help="one class name per line")
    args = parser.parse_args(argv)
    labels = open(args.labels).read().splitlines()
    files = sorted(tf.io.gfile.glob(os.path.join(args.input_dir, "*.jpg")))
    dataset = tf.data.Dataset.from_tensor_slices(files).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    model = tf.saved_model.load(args.model)
    scores, ids = [], []
    for batch in dataset.batch(64).prefetch(tf.data.AUTOTUNE):
        top = tf.math.top_k(tf.nn.softmax(model(batch)), k=5)
        scores += top.values.numpy().tolist()
        ids += top.indices.numpy().tolist()
    table = pa.table(
        {
            "uri": files,
            "label": [labels[row[0]] for row in ids],
            "class_ids": pa.array(ids, pa.list_(pa.int32())),
            "scores": pa.array(scores, pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, args.output)
    print(f"tf.data: {len(files)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
