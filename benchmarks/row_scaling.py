"""Row accounting and memory at scale: the default command over manifests of 1,000 and 1,000,000 rows.

Each manifest is a Parquet file of ids 0..N-1 whose URIs name missing files, plus the 5 real photos of
../shared/images/photos at spread-out ids, so nearly every row is a fast NotFound error row and the run measures
the pipeline's own per-row cost. Every run is checked for every id exactly once in the published shards, and its
peak RSS (the largest process of the job's tree, read by measure.py's wrapper process) is reported.

    python benchmarks/row_scaling.py                            # 1,000 rows once, 1,000,000 rows three times
    python benchmarks/row_scaling.py --sizes 1000,200000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from measure import run_measured

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_manifest(path: Path, rows: int, photos: list[Path]) -> None:
    uris = [f"/nonexistent/beam-image-labeller/{i}.jpg" for i in range(rows)]
    for i, photo in zip(range(0, rows, max(1, rows // len(photos))), photos):
        uris[i] = str(photo)
    pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64()), "uri": uris}), path)


def run_job(manifest: Path, output: Path, model: str, labels: str) -> dict:
    command = [sys.executable, "-m", "beam_pipeline", "--input", str(manifest), "--output", f"{output}/"]
    command += ["--model", model, "--labels", labels, "--top-k", "1"]
    run = run_measured(command)
    if run.returncode != 0:
        raise SystemExit(f"job failed ({run.returncode}): {run.stderr[-2000:]}")
    ids = ds.dataset(output, format="parquet").to_table(columns=["id"]).column("id").to_numpy()
    success = json.loads((output / "_SUCCESS").read_text())
    return {
        "rows_out": len(ids),
        "distinct_ids": len(set(ids.tolist())),
        "status": success["status"],
        "wall_s": round(run.wall_s, 1),
        "rows_per_s": round(len(ids) / run.wall_s),
        "peak_rss_mib": round(run.maxrss_mib),
    }


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("LABELLER_SHARED_DIR", REPO_ROOT.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000", help="comma-separated row counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every size but the smallest")
    parser.add_argument("--model", default=str(shared / "models" / "mobilenet_v3_small_100_224_float"))
    parser.add_argument("--labels", default=str(shared / "labels" / "ImageNetLabels.txt"))
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    photos = sorted(p for p in (shared / "images" / "photos").iterdir() if p.suffix in (".jpg", ".bmp"))
    print(f"load average at start: {os.getloadavg()}")
    print(
        f"{'rows':>9} {'run':>3} {'rows out':>9} {'distinct':>9} {'exact':>5} {'status':>6} {'wall s':>7} "
        f"{'rows/s':>7} {'peak RSS MiB':>12}"
    )
    peaks: dict[int, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            manifest = Path(tmp) / f"manifest-{size}.parquet"
            write_manifest(manifest, size, photos)
            for repeat in range(1 if size == sizes[0] else args.repeats):
                result = run_job(manifest, Path(tmp) / f"out-{size}-{repeat}", args.model, args.labels)
                exact = result["rows_out"] == result["distinct_ids"] == size
                peaks.setdefault(size, []).append(result["peak_rss_mib"])
                print(
                    f"{size:>9,} {repeat + 1:>3} {result['rows_out']:>9,} {result['distinct_ids']:>9,} "
                    f"{'yes' if exact else 'NO':>5} {result['status']:>6} {result['wall_s']:>7} "
                    f"{result['rows_per_s']:>7,} {result['peak_rss_mib']:>12,}",
                    flush=True,
                )
    smallest = statistics.median(peaks[sizes[0]])
    for size in sizes[1:]:
        print(f"peak RSS at {size:,} rows / at {sizes[0]:,} rows: {statistics.median(peaks[size]) / smallest:.2f}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
