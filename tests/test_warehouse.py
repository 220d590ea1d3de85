"""The output is warehouse-ready: a schema fixed in the repo, types BigQuery/DuckDB/Spark load as they are."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
from conftest import REPO, read_output, run_job
from images import write_broken_images, write_good_images

from beam_pipeline.records import output_schema


def test_schema_matches_the_committed_schema_file():
    committed = json.loads((REPO / "schema" / "labels.schema.json").read_text())["fields"]
    current = [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in output_schema()]
    assert current == committed, "the output schema changed: update schema/labels.schema.json and say so"


def test_manifest_table_joins_with_labels_in_duckdb(tmp_path, shared, tiny_model, labels_file):
    images = write_good_images(tmp_path / "img", shared)
    broken = list(write_broken_images(tmp_path / "img", shared))
    uris = [str(p) for p in images] + [str(tmp_path / "img" / name) for name in broken]
    manifest = tmp_path / "images.csv"
    manifest.write_text("id,uri\n" + "".join(f"{1000 + i},{u}\n" for i, u in enumerate(uris)))
    prefix = tmp_path / "labels" / "labels"
    assert run_job("--input", manifest, "--output", prefix, "--model", tiny_model, "--labels", labels_file) == 0

    shard = sorted(prefix.parent.glob("labels-*.parquet"))[0]
    parquet_schema = pq.ParquetFile(shard).schema
    physical = {parquet_schema.column(i).path: parquet_schema.column(i) for i in range(len(parquet_schema))}
    assert "top_k.list.element.class_id" in physical, "standard 3-level lists (BigQuery list inference)"
    stamp = json.loads(physical["labelled_at"].logical_type.to_json())
    assert (stamp["Type"], stamp["isAdjustedToUTC"], stamp["timeUnit"]) == ("Timestamp", True, "microseconds")
    assert not any("UINT" in str(c.logical_type) or "uint" in str(c.logical_type) for c in physical.values())

    con = duckdb.connect()
    con.execute(f"CREATE TABLE images AS SELECT * FROM read_csv('{manifest}')")
    con.execute(f"CREATE TABLE labels AS SELECT * FROM read_parquet('{prefix}-*.parquet')")
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'labels'"
        ).fetchall()
    )
    assert types["labelled_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["top_k"] == 'STRUCT(class_id INTEGER, "label" VARCHAR, score FLOAT)[]'
    joined = con.execute("SELECT i.id, l.status FROM images i LEFT JOIN labels l USING (id) ORDER BY i.id").fetchall()
    assert [row[0] for row in joined] == list(range(1000, 1000 + len(uris)))
    assert sum(status == "ok" for _, status in joined) == len(images)
    top = con.execute(
        "SELECT label, count(*) AS n FROM labels WHERE status = 'ok' GROUP BY label ORDER BY n DESC, label"
    ).fetchall()
    assert sum(n for _, n in top) == len(images)
    best = con.execute("SELECT max(t.score) FROM labels, unnest(top_k) AS u(t)").fetchone()[0]
    assert 0 < best <= 1
    assert read_output(prefix).num_rows == len(uris)
