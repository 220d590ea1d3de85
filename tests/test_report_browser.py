"""The report of a real run, in a browser: the pipeline CLI runs once per module over the shared photos plus broken
files, the report of its Parquet output is checked, then opened in headless Chromium (DOM dump, network log,
screenshot).

Set LABELLER_REPORT_SCREENSHOT=docs/report.png to keep the screenshot.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from report_pages import (
    E2E_MARGIN,
    E2E_PER_LABEL,
    E2E_REVIEW,
    PIPELINE_TIMEOUT_S,
    REPO,
    THUMB_PREFIX,
    card_value,
    chromium,
    expected_cards,
    external_resources,
    load_netlog,
    page_requests,
    run_chromium,
    shared_dir,
    thumbnails,
)

from beam_pipeline import report

# ------------------------------------------------------------ end to end: real run


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the real pipeline CLI once over good and broken images; return its output dir."""
    shared = shared_dir()
    tmp = tmp_path_factory.mktemp("run")
    images = tmp / "images"
    images.mkdir()
    photos = sorted(p for p in (shared / "images" / "photos").iterdir() if p.suffix.lower() in {".bmp", ".jpg"})
    assert len(photos) >= 5, f"expected the 5 shared photos in {shared / 'images' / 'photos'}"
    for photo in photos:
        shutil.copy(photo, images / photo.name)
    (images / "x.jpg").write_text("this is not a JPEG\n")
    (images / "empty.png").write_bytes(b"")
    jpeg = next(p for p in photos if p.suffix.lower() == ".jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(jpeg[: int(len(jpeg) * 0.3)])
    # A byte-identical copy and a smaller re-encoded one: the duplicates section's exact group and near pair.
    shutil.copy(images / "cat.bmp", images / "cat-copy.bmp")
    with Image.open(images / "hot_dog.jpg") as im:
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(images / "hot_dog-small.jpg", quality=80)

    cmd = [
        sys.executable,
        "-m",
        "beam_pipeline",
        "--input",
        str(images),
        "--output",
        str(tmp / "out" / "labels"),
        "--model",
        str(shared / "models" / "mobilenet_v3_small_100_224_float"),
        "--labels",
        str(shared / "labels" / "ImageNetLabels.txt"),
        "--embeddings",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=PIPELINE_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"pipeline failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return tmp / "out"


@pytest.fixture(scope="module")
def e2e(pipeline_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of the real run, its path and the run's rows."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    args = [str(pipeline_run / "labels"), "--html", str(out), "--review", str(E2E_REVIEW), "--margin", str(E2E_MARGIN)]
    assert report.main([*args, "--per-label", str(E2E_PER_LABEL)]) == 0
    shards = sorted(p for p in pipeline_run.iterdir() if p.name.endswith(".parquet"))
    assert shards, f"the pipeline wrote no Parquet shards in {pipeline_run}: {os.listdir(pipeline_run)}"
    table = pa.concat_tables([pq.read_table(p) for p in shards], promote_options="default")
    return {"path": out, "page": out.read_text(encoding="utf-8"), "table": table, "dir": pipeline_run}


def test_e2e_totals(e2e: dict[str, Any]) -> None:
    """The summary cards show the run's counts: 10 images, the 5 photos and 2 copies labelled, the junk failed."""
    page, rows = e2e["page"], e2e["table"].to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 10
    assert {Path(r["uri"]).name for r in failed} >= {"x.jpg", "empty.png"}
    assert {Path(r["uri"]).name for r in ok} >= {"bird.bmp", "cat.bmp", "grace_hopper.bmp", "hot_dog.jpg"}
    assert card_value(page, "rows") == 10
    assert card_value(page, "labelled") == len(ok)
    assert card_value(page, "failed") == len(failed)
    assert card_value(page, "distinct labels") == len({r["label"] for r in ok})
    for kind in {r["error_type"] for r in failed}:
        n = sum(1 for r in failed if r["error_type"] == kind)
        assert f'<tr><td>{html.escape(kind)}</td><td class="num">{n}</td></tr>' in page


def test_e2e_success_summary(e2e: dict[str, Any]) -> None:
    """When the run wrote _SUCCESS, its keys are shown as a key/value table."""
    success = e2e["dir"] / "_SUCCESS"
    if not success.exists():
        assert "Run summary" not in e2e["page"]
        return
    summary = json.loads(success.read_text())
    assert "Run summary (_SUCCESS)" in e2e["page"]
    for key in summary:
        assert f"<th>{html.escape(str(key))}</th>" in e2e["page"]


def test_e2e_label_sections_and_thumbnails(e2e: dict[str, Any]) -> None:
    """Each label gets a section; thumbnails are embedded JPEGs of at most 128 px; top-3 scores shown."""
    page, table = e2e["page"], e2e["table"]
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    for label in {r["label"] for r in ok}:
        assert re.search(r'<div class="label-section" id="[^"]*"><h3>' + re.escape(html.escape(label)) + " ", page)
    for r in ok:
        for k in r["top_k"][:3]:
            assert f"{k['score']:.3f}" in page
    cards = expected_cards(table, E2E_REVIEW, E2E_MARGIN, E2E_PER_LABEL)
    page = page[: page.index('<section id="duplicates">')]  # test_e2e_duplicates checks that section
    assert page.count("<figure ") == len(cards)
    srcs = thumbnails(page)
    # Every readable image is embedded; one the pipeline labelled but Pillow cannot decode is a placeholder.
    assert len(srcs) == sum(1 for uri in cards if report.make_thumbnail(uri, allow_local_files=True).src) >= 5
    assert all(src.startswith(THUMB_PREFIX) for src in srcs)
    for src in set(srcs):
        with Image.open(io.BytesIO(base64.b64decode(src[len(THUMB_PREFIX) :]))) as im:
            assert im.format == "JPEG" and max(im.size) <= 128
    assert "Lowest top-1 score" in page and "Close calls" in page
    assert '<img class="thumb" src="http' not in page


def test_e2e_duplicates(e2e: dict[str, Any]) -> None:
    """The copy of cat.bmp is an exact-duplicate group, the re-encoded hot dog a near-duplicate pair, and each
    sampled image has nearest neighbours; the section's thumbnails are embedded."""
    page = e2e["page"]
    section = page[page.index('<section id="duplicates">') : page.index('<section id="failed">')]
    exact = section[section.index('id="exact-duplicates"') : section.index("Near-duplicates")]
    assert exact.count("<figure ") == 1 and "2 copies" in exact and "cat" in exact
    near = section[section.index('id="near-duplicates"') : section.index("Nearest neighbours by embedding")]
    assert "hot_dog.jpg" in near and "hot_dog-small.jpg" in near
    rows = e2e["table"].to_pylist()
    assert (
        len({r["content_sha256"] for r in rows if r["content_sha256"]})
        == len([r for r in rows if r["content_sha256"]]) - 1
    )
    assert "Nearest neighbours by embedding" in section and 'class="grid neighbours"' in section
    assert thumbnails(section) and all(src.startswith(THUMB_PREFIX) for src in thumbnails(section))


def test_e2e_failed_rows(e2e: dict[str, Any]) -> None:
    """The failed-rows table lists each failed URI with its error type and message."""
    page = e2e["page"]
    failed_section = page[page.index('<section id="failed">') :]
    for r in e2e["table"].to_pylist():
        if r["status"] == "ok":
            continue
        cells = (
            f'<tr><td class="wrap">{html.escape(r["uri"])}</td><td>{html.escape(r["error_type"] or "")}</td>'
            f'<td class="msg">{html.escape((r["error"] or "")[:399])}'
        )
        assert cells in failed_section


def test_e2e_self_contained(e2e: dict[str, Any]) -> None:
    """Nothing in the page points outside it: no http(s) resources, no @import, no remote url()."""
    assert external_resources(e2e["page"]) == []
    assert "<script" not in e2e["page"]
    assert len(e2e["page"].encode()) < 2_000_000


def test_e2e_chromium_offline(e2e: dict[str, Any], tmp_path: Path) -> None:
    """Chromium renders the page from disk with no network request; DOM has every thumbnail; screenshot."""
    chromium()
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><img src="http://report-test.invalid/x.png"></body></html>')
    control_log = tmp_path / "control-netlog.json"
    run_chromium(control.as_uri(), tmp_path, f"--log-net-log={control_log}", "--dump-dom")
    assert page_requests(load_netlog(control_log)) == ["http://report-test.invalid/x.png"], (
        "the network-log check does not see a page's request: it cannot prove the report makes none"
    )

    netlog = tmp_path / "netlog.json"
    shot = tmp_path / "report.png"
    proc = run_chromium(
        e2e["path"].as_uri(),
        tmp_path,
        f"--log-net-log={netlog}",
        f"--screenshot={shot}",
        "--window-size=1280,2700",
        "--hide-scrollbars",
        "--dump-dom",
    )
    assert page_requests(load_netlog(netlog)) == []
    dom_thumbs = thumbnails(proc.stdout)
    assert len(dom_thumbs) == len(thumbnails(e2e["page"])) > 0
    assert all(src.startswith(THUMB_PREFIX) for src in dom_thumbs)
    assert 'id="totals"' in proc.stdout and 'id="failed"' in proc.stdout
    assert 'id="exact-duplicates"' in proc.stdout and 'id="near-duplicates"' in proc.stdout
    with Image.open(shot) as im:
        assert im.size == (1280, 2700)
        assert len(im.convert("L").getcolors(1 << 16) or []) > 50, "the screenshot is blank"
    keep = os.environ.get("LABELLER_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
