"""What content identity (content_sha256, phash) and --embeddings cost: the job's throughput and CPU time with
and without them, output bytes per row, and each backend's model time with and without the embedding output.

Run from the repository root with the project's venv active::

    python benchmarks/embeddings.py                  # 600 web-sized images (500x375), 3 interleaved repeats
    python benchmarks/embeddings.py --corpus mixed --n 300 --repeats 2

Each repeat runs the job in this process (FnApiRunner in memory, as a local run does; the model is loaded once and
reused, so start-up is left out) on the same corpus, three ways, in a rotating order: without content identity (the
decode step's sha256 and perceptual hash replaced by stubs: what the job did before them), as it is now, and with
--embeddings. It then times each backend's `infer` on a batch of 64 pre-decoded images, loaded with and without
embeddings. Ratios are taken within a repeat and summarised as median [min-max]; the load average is printed beside
them. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

import numpy as np
from corpus import build_corpus, corpus_files, shared_dir

VARIANTS = ("no identity", "identity", "identity + embeddings")


class _NoHash:
    def hexdigest(self) -> None:
        return None


def run_job(corpus: Path, out: Path, model: str, labels: str, variant: str) -> tuple[float, float, int, int]:
    """One run of the job; (wall s, CPU s of this process, rows, bytes of the published shards)."""
    from beam_pipeline.launch.cli import main

    args = ["--input", str(corpus), "--output", str(out / "labels"), "--model", model, "--labels", labels, "--quiet"]
    args += ["--embeddings"] if variant == "identity + embeddings" else []
    stubs = []
    if variant == "no identity":
        stubs = [
            mock.patch("beam_pipeline.decode.preprocess.perceptual_hash", lambda im: None),
            mock.patch("beam_pipeline.decode.dofn.hashlib", types.SimpleNamespace(sha256=lambda data: _NoHash())),
        ]
    for stub in stubs:
        stub.start()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        assert main(args) == 0
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        for stub in stubs:
            stub.stop()
    import pyarrow.parquet as pq

    shards = sorted(out.glob("labels-*-of-*.parquet"))
    rows = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
    return wall, cpu, rows, sum(s.stat().st_size for s in shards)


def model_times(images: np.ndarray, models: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Per backend, infer seconds with embeddings over infer seconds without, for each repeat."""
    from beam_pipeline.model import load, resolve

    ratios: dict[str, list[float]] = {}
    for backend, model in models.items():
        plain, both = (load.load(resolve.resolve(model, backend), embeddings=e) for e in (False, True))
        plain.infer(images), both.infer(images)  # warm-up
        for _ in range(repeats):
            times = []
            for classifier in (plain, both):
                start = time.process_time()
                for _ in range(3):
                    classifier.infer(images)
                times.append(time.process_time() - start)
            ratios.setdefault(backend, []).append(times[1] / times[0])
    return ratios


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="corpus images (benchmarks/corpus.py)")
    parser.add_argument(
        "--corpus",
        choices=("web", "mixed"),
        default="web",
        help="web: every image 500x375, where decoding is cheapest and the hashes' share the largest",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shared = shared_dir()
    model = str(shared / "models" / "mobilenet_v3_small_100_224_float")
    labels = str(shared / "labels" / "ImageNetLabels.txt")
    corpus = build_corpus(args.n, corpus=args.corpus)
    n = len(corpus_files(corpus))
    print(f"corpus: {n} images at {corpus}; load average before: {os.getloadavg()}")
    figures: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": [], "bytes_per_row": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        run_job(corpus, Path(tmp) / "warm-up", model, labels, "identity + embeddings")
        for repeat in range(args.repeats):
            order = VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]
            for variant in order:
                wall, cpu, rows, size = run_job(corpus, Path(tmp) / f"{repeat}-{variant}", model, labels, variant)
                assert rows == n
                for key, value in (("wall", wall), ("cpu", cpu), ("bytes_per_row", size / rows)):
                    figures[variant][key].append(value)
            print(f"repeat {repeat + 1}: load average {os.getloadavg()[0]:.2f}")
    print(f"\njob on {n} images, median [min-max] of {args.repeats} repeats; load average now {os.getloadavg()}")
    for variant in VARIANTS:
        f = figures[variant]
        rate = [n / w for w in f["wall"]]
        print(
            f"  {variant:<24} {summary(rate)} images/s, CPU {summary([c / n * 1e3 for c in f['cpu']])} ms/image, "
            f"{statistics.median(f['bytes_per_row']):.0f} bytes/row"
        )
    base, ident, emb = (figures[v] for v in VARIANTS)
    for what, key in (("wall time", "wall"), ("CPU time", "cpu")):
        identity = [b / a for a, b in zip(base[key], ident[key])]
        embeddings = [b / a for a, b in zip(ident[key], emb[key])]
        print(f"  {what}: identity / none {summary(identity)}, embeddings / identity {summary(embeddings)}")
    from beam_pipeline.decode.preprocess import DecodeSpec, decode_image

    files = corpus_files(corpus)[:64]
    images = np.stack([decode_image(p.read_bytes(), DecodeSpec((224, 224)))[0] for p in files])
    tflite = str(shared / "models" / "mobilenet_v3_small_100_224_uint8.tflite")
    ratios = model_times(images, {"openvino": model, "tensorflow": model, "litert": tflite}, args.repeats)
    print(f"\nmodel CPU time with embeddings / without, a batch of 64; load average {os.getloadavg()}")
    for backend, values in ratios.items():
        print(f"  {backend:<11} {summary(values)}")


if __name__ == "__main__":
    main()
