"""Manifests: types cover the whole file, a value of the wrong type is one BadManifestRow row, clear launch errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from conftest import label, read_output

from beam_pipeline.inputs import checks, expand
from beam_pipeline.inputs.specs import InputError, InputSpec
from beam_pipeline.records import MANIFEST_ERROR_KEY


def _rows(path):
    spec = checks.check_exists(InputSpec.parse(str(path)))
    carried = checks.carried_schema([spec], "uri")
    return carried, list(expand.expand_input(spec, uri_column="uri", carried=carried))


def test_jsonl_column_first_seen_after_line_1000_is_kept(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [{"uri": f"/x/{i}.jpg", "id": i} for i in range(1500)]
    lines[1200]["source"] = "crawl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    carried, rows = _rows(manifest)
    assert carried == pa.schema([("id", pa.int64()), ("source", pa.string())])
    assert rows[1200]["source"] == "crawl" and rows[0]["source"] is None and len(rows) == 1500


def test_jsonl_type_drift_becomes_one_bad_manifest_row(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [{"uri": f"/x/{i}.jpg", "id": i, "w": 1} for i in range(1500)]
    lines[1100]["id"] = "abc"
    lines[1300]["w"] = 2.5  # an integer column widens to float rather than failing
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    carried, rows = _rows(manifest)
    assert carried == pa.schema([("id", pa.int64()), ("w", pa.float64())])
    bad = [r for r in rows if MANIFEST_ERROR_KEY in r]
    assert len(rows) == 1500 and len(bad) == 1
    assert (
        bad[0]["uri"] == "/x/1100.jpg"
        and "'abc'" in bad[0][MANIFEST_ERROR_KEY]
        and "int64" in bad[0][MANIFEST_ERROR_KEY]
    )


def test_csv_type_drift_in_a_later_block_becomes_one_bad_manifest_row(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [f"{i},/x/{i}.jpg,{i * 0.5}" for i in range(200_000)]
    rows[150_000] = "oops,/x/150000.jpg,1.0"
    manifest.write_text("id,uri,weight\n" + "\n".join(rows) + "\n")
    carried, out = _rows(manifest)
    assert carried == pa.schema([("id", pa.int64()), ("weight", pa.float64())])
    bad = [r for r in out if MANIFEST_ERROR_KEY in r]
    assert len(out) == 200_000 and [r["uri"] for r in bad] == ["/x/150000.jpg"]
    assert out[7] == {"uri": "/x/7.jpg", "id": 7, "weight": 3.5}


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,uri,id\n1,/x.jpg,2\n", "has the column 'id' more than once"),
        ("id;uri\n1;/x.jpg\n", "no column 'uri'; columns found: 'id;uri' (only comma-separated CSV is read)"),
    ],
)
def test_csv_header_problems_name_what_was_found(tmp_path, text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(InputError) as raised:
        _rows(manifest)
    assert message in str(raised.value) and str(manifest) in str(raised.value)


def test_manifests_that_disagree_name_the_column_and_both_files(tmp_path):
    (tmp_path / "a.csv").write_text("id,uri\n1,/a.jpg\n")
    (tmp_path / "b.jsonl").write_text('{"uri": "/b.jpg", "id": "x1"}\n')
    specs = [checks.check_exists(InputSpec.parse(str(tmp_path / n))) for n in ("a.csv", "b.jsonl")]
    with pytest.raises(InputError) as raised:
        checks.carried_schema(specs, "uri")
    assert str(raised.value) == (
        f"column 'id' is int64 in manifest {tmp_path / 'a.csv'} but string in manifest {tmp_path / 'b.jsonl'}"
    )


def test_type_drift_is_an_error_row_not_a_failed_job(tmp_path, shared, tiny_model, labels_file):
    photo = shared / "images" / "photos" / "grace_hopper.bmp"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"uri": str(photo), "id": 1}) + "\n" + json.dumps({"uri": str(photo), "id": "abc"}) + "\n"
    )
    prefix = tmp_path / "out" / "labels"
    assert label(manifest, prefix, tiny_model, labels_file) == 0
    rows = sorted(read_output(prefix).to_pylist(), key=lambda r: r["status"])
    assert [(r["status"], r["error_type"], r["id"]) for r in rows] == [
        ("error", "BadManifestRow", None),
        ("ok", None, 1),
    ]
    assert "'abc'" in rows[0]["error"] and rows[0]["uri"] == str(photo)
