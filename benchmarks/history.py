"""What `--skip-labelled` costs as history grows: tonight's run against 1 and 366 earlier nights.

Tonight's input is the 100 photos of ../shared/images/imagenet-sample-100, every one labelled before: the most
recent earlier night holds an `ok` row for each (same model), beside rows of other URIs. With `--tonight-rows N`
tonight is a manifest of N rows instead: the 100 photos, new (labelled tonight), and N - 100 URIs the most recent
night labelled (files that do not exist: skipped rows are never read). Every earlier night has 2,000 rows in 3
shards, as a nightly job leaves them (`out/dt=DATE/labels-SSSSS-of-00003.parquet` and `_SUCCESS`), and the most
recent one also the rows of tonight's labelled URIs. Each case runs `python -m beam_pipeline ... --skip-labelled
'out/dt=*/*'` under measure.py's wrapper (wall time and peak RSS of the whole command); cases are interleaved over
the repeats, so drift of a loaded machine hits both alike, and the ratio of each case to the first is printed from
the same run.

    python benchmarks/history.py                       # 1 and 366 nights, 2 repeats
    python benchmarks/history.py --tonight-rows 30000  # a large night, most of it labelled before
    python benchmarks/history.py --nights 1,366,3650 --table --repeats 1
                                                       # the nights as snapshots of an Iceberg table (SQLite
                                                       # catalog): --skip-labelled names the table
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from measure import run_measured

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from beam_pipeline.records import output_schema  # noqa: E402

ROWS_PER_NIGHT = 2000
SHARDS_PER_NIGHT = 3


def write_history(out: Path, nights: int, labelled: list[str], model_id: str) -> None:
    """`nights` earlier nights under `out/dt=DATE/`; the latest one labelled every URI of `labelled`."""
    schema = output_schema()
    first = datetime.date(2020, 1, 1)
    for night in range(nights):
        day = first + datetime.timedelta(days=night)
        uris = [f"gs://bucket/images/{day:%Y/%m/%d}/{i:05d}.jpg" for i in range(ROWS_PER_NIGHT)]
        if night == nights - 1:
            uris = labelled + uris[len(labelled) :]
        folder = out / f"dt={day:%Y-%m-%d}"
        folder.mkdir(parents=True)
        labelled_at = datetime.datetime(day.year, day.month, day.day, 3, tzinfo=datetime.timezone.utc)
        per_shard = -(-len(uris) // SHARDS_PER_NIGHT)
        for shard in range(SHARDS_PER_NIGHT):
            part = uris[shard * per_shard : (shard + 1) * per_shard]
            n = len(part)
            columns = {
                "uri": part,
                "width": [640] * n,
                "height": [480] * n,
                "status": ["ok"] * n,
                "label": ["tench"] * n,
                "score": [0.5] * n,
                "top_k": [[{"label": "tench", "score": 0.5}]] * n,
                "model": [model_id] * n,
                "labelled_at": [labelled_at] * n,
            }
            table = pa.table({f.name: columns.get(f.name, [None] * n) for f in schema}, schema=schema)
            pq.write_table(table, folder / f"labels-{shard:05d}-of-{SHARDS_PER_NIGHT:05d}.parquet")
        (folder / "_SUCCESS").write_text(json.dumps({"status": "ok", "rows": len(uris)}))


def catalog_of(history: Path) -> str:
    return f"type=sql,uri=sqlite:///{history}/catalog.db,warehouse=file://{history}/warehouse"


def commit_nights(history: Path) -> None:
    """Each earlier night's shards as one snapshot of the table vision.labels, made as the job's commit makes one
    (pyiceberg's append into the table the job creates, with merged manifests, tagged with the night's run id).

    The snapshots reach the catalog in one commit: committed one at a time, 3,650 nights took about 1.5 hours to
    build, since every pyiceberg commit parses, copies and writes the whole snapshot list (tonight's commit pays
    that once, and is measured). Each night's snapshot is produced on the metadata folded so far, with pyiceberg's
    deep copy of it left out while building (its models are frozen: the copy protects nothing here).
    """
    import pyiceberg.table
    import pyiceberg.table.update
    from pyiceberg.table import Transaction

    from beam_pipeline.output.iceberg import RUN_ID_PROPERTY, TABLE_PROPERTIES, IcebergTarget

    catalog = IcebergTarget("vision.labels", catalog_of(history)).load_catalog()
    catalog.create_namespace("vision")
    table = catalog.create_table("vision.labels", schema=output_schema(), properties=TABLE_PROPERTIES)
    created = table.metadata
    real_update = pyiceberg.table.update.update_table_metadata

    def update_without_copy(base, updates, enforce_validation=False, metadata_location=None):
        context = pyiceberg.table.update._TableMetadataUpdateContext()
        for update in updates:
            base = pyiceberg.table.update._apply_table_update(update, base, context)
        return base

    updates: list = []
    pyiceberg.table.update_table_metadata = update_without_copy
    try:
        for night in sorted(history.glob("dt=*")):
            transaction = Transaction(table)
            files = sorted(str(p) for p in night.glob("labels-*.parquet"))
            transaction.add_files(files, snapshot_properties={RUN_ID_PROPERTY: night.name}, check_duplicate_files=False)
            updates += transaction._updates
            table.metadata = transaction.table_metadata
    finally:
        pyiceberg.table.update_table_metadata = real_update
    table.metadata = created
    catalog.commit_table(table, requirements=(), updates=tuple(updates))


def run_tonight(
    history: Path, tonight: Path, expected: tuple[int, int, int], args: argparse.Namespace, tag: str
) -> dict:
    """Tonight's run against `history`; `expected`: the rows in, skipped and labelled its _SUCCESS must report."""
    model, labels, table = args.model, args.labels, args.table
    output = history.parent / f"tonight-{history.name}-{tag}" / "labels"
    command = [sys.executable, "-m", "beam_pipeline", "--input", str(tonight), "--output", str(output)]
    command += ["--model", model, "--labels", labels]
    if table:
        command += ["--iceberg-catalog", catalog_of(history), "--iceberg-table", "vision.labels"]
        command += ["--skip-labelled", "vision.labels"]
    else:
        command += ["--skip-labelled", f"{history}/dt=*/*"]
    run = run_measured(command)
    run.check(f"tonight against {history.name}")
    success = json.loads((output.parent / "_SUCCESS").read_text())
    if (success["rows_in"], success["rows_skipped"], success["rows"]) != expected:
        raise SystemExit(f"expected (rows in, skipped, labelled) {expected}: {success}")
    return {"wall_s": run.wall_s, "peak_rss_mib": run.maxrss_mib}


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("LABELLER_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", default="1,366", help="comma-separated counts of earlier nights")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=str(shared / "models" / "mobilenet_v3_small_100_224_float"))
    parser.add_argument("--table", action="store_true", help="the earlier nights as Iceberg snapshots")
    parser.add_argument("--labels", default=str(shared / "labels" / "ImageNetLabels.txt"))
    parser.add_argument("--tonight-rows", type=int, default=100, help="100: the photos, all labelled before")
    args = parser.parse_args(argv)
    images = shared / "images" / "imagenet-sample-100"
    photos = sorted(str(p) for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(photos) != 100:
        raise SystemExit(f"expected 100 images in {images}, found {len(photos)}")
    counts = [int(n) for n in args.nights.split(",")]
    results: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        tonight, labelled, expected = images, photos, (100, 100, 0)
        if args.tonight_rows > 100:
            labelled = [f"{tmp}/earlier/{i:06d}.jpg" for i in range(args.tonight_rows - 100)]
            tonight = Path(tmp) / "tonight.csv"
            tonight.write_text("uri\n" + "".join(f"{uri}\n" for uri in photos + labelled))
            expected = (args.tonight_rows, len(labelled), 100)
        for n in counts:
            started = time.monotonic()
            write_history(Path(tmp) / f"n{n}", n, labelled, args.model)
            if args.table:
                commit_nights(Path(tmp) / f"n{n}")
            print(f"{n} earlier nights written in {time.monotonic() - started:.0f} s", flush=True)
        for repeat in range(args.repeats):
            for n in counts:
                results[n].append(run_tonight(Path(tmp) / f"n{n}", tonight, expected, args, f"r{repeat}"))
    load = os.getloadavg()
    print(f"load average {' '.join(f'{x:.2f}' for x in load)} (1/5/15 min, at the end)")
    print(f"earlier nights as {'snapshots of an Iceberg table' if args.table else 'folders of shards'}")
    print(f"tonight: {expected[0]:,} rows, {expected[1]:,} of them labelled before")
    print(f"| earlier nights | shards | rows | wall s (median of {args.repeats}) | peak RSS MiB | x time | x RSS |")
    print("|---|---|---|---|---|---|---|")
    base = counts[0]
    base_wall = statistics.median(r["wall_s"] for r in results[base])
    base_rss = statistics.median(r["peak_rss_mib"] for r in results[base])
    for n in counts:
        wall = statistics.median(r["wall_s"] for r in results[n])
        rss = statistics.median(r["peak_rss_mib"] for r in results[n])
        rows = n * ROWS_PER_NIGHT + max(0, len(labelled) - ROWS_PER_NIGHT)
        print(
            f"| {n} | {n * SHARDS_PER_NIGHT:,} | {rows:,} | {wall:.1f} | {rss:.0f} | {wall / base_wall:.2f} | "
            f"{rss / base_rss:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
