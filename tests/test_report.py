"""Tests of the offline HTML report (beam_pipeline.report).

The end-to-end tests run the real pipeline CLI once per module over the shared photos
plus broken files, render a report of its Parquet output, check the HTML's content,
then open it in headless Chromium (DOM dump, network log, screenshot). The other tests
use small synthetic Parquet runs written with the output schema.

Set LABELLER_REPORT_SCREENSHOT=docs/report.png to keep the end-to-end screenshot.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import serve_folder
from PIL import Image

from beam_pipeline import report
from beam_pipeline.records import RESERVED_NAMES, TOP_K_TYPE, output_schema
from beam_pipeline.report import queries, text
from beam_pipeline.report.data import DEFAULT_MAX_FAILED, DEFAULT_MAX_THUMBNAILS
from beam_pipeline.report.thumbnails import LOCAL_FILE_REFUSED, make_thumbnail

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LABELLER_SHARED_DIR", REPO.parent / "shared"))
CHROMIUM = "/usr/bin/chromium"
PIPELINE_TIMEOUT_S = 900
CHROMIUM_TIMEOUT_S = 120

# Options of the end-to-end report: small enough that every section has something to show.
E2E_REVIEW = 2
E2E_MARGIN = 0.5
E2E_PER_LABEL = 8

THUMB_PREFIX = "data:image/jpeg;base64,"
CARRIED = pa.schema([pa.field("id", pa.int64())])


# --------------------------------------------------------------------------- helpers


def shared_dir() -> Path:
    """The shared data dir, or a test failure naming LABELLER_SHARED_DIR."""
    needed = [
        SHARED / "models" / "mobilenet_v3_small_100_224_float",
        SHARED / "labels" / "ImageNetLabels.txt",
        SHARED / "images" / "photos",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.fail(
            f"shared test data not found: {', '.join(missing)}; set LABELLER_SHARED_DIR to the shared dir "
            f"(default <repo>/../shared, here {SHARED})"
        )
    return SHARED


def chromium() -> str:
    """Path of headless Chromium, or a test failure saying how to install it."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} not found: .ci/run installs it (apt-get install -y chromium, Debian package chromium)")
    return CHROMIUM


def run_chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``url`` with a fresh profile and every host name unresolvable."""
    profile = tmp / f"profile-{uuid.uuid4().hex}"
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *extra,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return proc


def load_netlog(path: Path) -> dict[str, Any]:
    """Parse a Chromium NetLog file (closing it if Chromium did not)."""
    text = path.read_text(encoding="utf-8", errors="replace").rstrip()
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text.rstrip(",") + "]}")


def page_requests(netlog: dict[str, Any]) -> list[str]:
    """URLs of the network requests made on behalf of a file:// page.

    Chromium's own background requests (updates, time, accounts) are not the page's:
    their network isolation key is not the file:// site; the page's subresources' is.
    """
    start_job = netlog["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in netlog.get("events", []):
        params = event.get("params") or {}
        if event.get("type") != start_job or "url" not in params:
            continue
        context = f"{params.get('network_isolation_key', '')} {params.get('site_for_cookies', '')}"
        if "file://" in context:
            urls.append(params["url"])
    return urls


class _Collector(HTMLParser):
    """Collects every tag with its attributes, and the text of <style> elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def parse(page: str) -> _Collector:
    """Parse an HTML string."""
    collector = _Collector()
    collector.feed(page)
    collector.close()
    return collector


def thumbnails(page: str) -> list[str]:
    """The ``src`` of every thumbnail <img> in the page."""
    return [a["src"] for tag, a in parse(page).tags if tag == "img" and "thumb" in a.get("class", "").split()]


URL_ATTRS = {"src", "href", "srcset", "poster", "data", "action", "formaction", "xlink:href", "background", "ping"}


def external_resources(page: str) -> list[str]:
    """Every URL in the page that is neither a data: URI nor an in-page #anchor."""
    doc = parse(page)
    found = []
    for _, attrs in doc.tags:
        for name, value in attrs.items():
            value = value.strip()
            if name in URL_ATTRS and not value.startswith(("data:", "#")):
                found.append(f"{name}={value[:80]}")
            if name == "style":
                doc.styles.append(value)
    for css in doc.styles + [page]:
        found += [u for u in re.findall(r"url\(\s*['\"]?([^'\")\s]+)", css) if not u.startswith(("data:", "#"))]
        found += re.findall(r"@import[^;]*", css)
    return found


def card_value(page: str, key: str) -> int:
    """The number on the summary card called ``key``."""
    match = re.search(r'<div class="n">([0-9,]+)</div><div class="k">' + re.escape(key) + "</div>", page)
    assert match, f"no {key!r} card in the report"
    return int(match.group(1).replace(",", ""))


def reasons(page: str, prefix: str) -> int:
    """How many thumbnail cards say they were refused for a reason starting with ``prefix``."""
    return page.count(f'<span class="reason">{html.escape(prefix)}')


def expected_cards(table: pa.Table, review: int, margin: float, per_label: int) -> list[str]:
    """URIs of the image cards the report should show for ``table`` (under the thumbnail cap)."""
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    lowest = sorted((r for r in ok if r["score"] is not None), key=lambda r: (r["score"], r["uri"]))[:review]
    lowest_uris = {r["uri"] for r in lowest}
    close = [
        r
        for r in ok
        if r["top_k"] and len(r["top_k"]) >= 2 and r["top_k"][0]["score"] - r["top_k"][1]["score"] < margin
    ]
    close = [r for r in close if r["uri"] not in lowest_uris][:review]
    per = {}
    for r in ok:
        per[r["label"]] = per.get(r["label"], 0) + 1
    grid = [uri for label in per for uri in [r["uri"] for r in ok if r["label"] == label][:per_label]]
    return [r["uri"] for r in lowest + close] + grid


def write_image(path: Path, size: tuple[int, int] = (320, 240), color: tuple[int, int, int] = (200, 60, 40)) -> None:
    """Write a small RGB JPEG (or whatever the suffix says)."""
    Image.new("RGB", size, color).save(path)


def row(uri: str, i: int, label: str | None = "tabby", score: float = 0.9, second: float = 0.05) -> dict[str, Any]:
    """One synthetic output row; ``label=None`` makes a failed one."""
    base: dict[str, Any] = {"uri": uri, "id": i, "model": "mobilenet_v3_small_100_224_float", "labelled_at": None}
    if label is None:
        return {
            **base,
            "status": "error",
            "error_type": "UnidentifiedImageError",
            "error": f"UnidentifiedImageError: cannot identify image file {uri!r}",
        }
    top_k = [
        {"class_id": 1, "label": label, "score": score},
        {"class_id": 2, "label": "other", "score": second},
        {"class_id": 3, "label": "third", "score": 0.01},
    ]
    return {**base, "status": "ok", "label": label, "score": score, "top_k": top_k, "width": 320, "height": 240}


def write_run(
    directory: str, rows: list[dict[str, Any]], shards: int = 2, success: dict[str, Any] | None = None
) -> str:
    """Write ``rows`` as a sharded Parquet run under the fsspec ``directory``; return the output prefix."""
    fs, root = fsspec.core.url_to_fs(directory)
    fs.makedirs(root, exist_ok=True)
    schema = output_schema(CARRIED)
    for k in range(shards):
        table = pa.Table.from_pylist(rows[k::shards], schema=schema)
        with fs.open(f"{root}/labels-{k:05d}-of-{shards:05d}.parquet", "wb") as f:
            pq.write_table(table, f)
    if success is not None:
        with fs.open(f"{root}/_SUCCESS", "w") as f:
            json.dump(success, f)
    return directory.rstrip("/") + "/labels"


def render(output: str, tmp_path: Path, *args: str) -> str:
    """Run the report CLI and return the page."""
    out = tmp_path / f"report-{uuid.uuid4().hex[:8]}.html"
    assert report.main([output, "--html", str(out), *args]) == 0
    return out.read_text(encoding="utf-8")


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
    """The summary cards show the run's counts: 8 images, the 5 photos labelled, the junk failed."""
    page, rows = e2e["page"], e2e["table"].to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 8
    assert {Path(r["uri"]).name for r in failed} >= {"x.jpg", "empty.png"}
    assert {Path(r["uri"]).name for r in ok} >= {"bird.bmp", "cat.bmp", "grace_hopper.bmp", "hot_dog.jpg"}
    assert card_value(page, "rows") == 8
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
    with Image.open(shot) as im:
        assert im.size == (1280, 2700)
        assert len(im.convert("L").getcolors(1 << 16) or []) > 50, "the screenshot is blank"
    keep = os.environ.get("LABELLER_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


# ------------------------------------------------------------- synthetic runs


def test_memory_filesystem_and_success(tmp_path: Path) -> None:
    """A run on a non-local fsspec filesystem: DuckDB reads it through fsspec; thumbnails too."""
    root = f"memory://report-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        rows = []
        for i in range(6):
            buf = io.BytesIO()
            Image.new("RGB", (300, 200), (40 * i, 90, 160)).save(buf, format="JPEG")
            fs.pipe(f"{root}/img/{i}.jpg", buf.getvalue())
            rows.append(row(f"{root}/img/{i}.jpg", i, label="tabby" if i % 2 else "tiger cat", score=0.6 + i / 20))
        rows.append(row(f"{root}/img/bad.jpg", 99, label=None))
        output = write_run(f"{root}/out", rows, success={"rows": 7, "elapsed_s": 1.5, "counts": {"ok": 6}})
        page = render(f"{root}/out/labels-*.parquet", tmp_path, "--review", "0")
        local_only = render(f"{root}/out", tmp_path, "--allowed-schemes", "file")
    finally:
        fs.rm(root, recursive=True)
    assert output.endswith("/labels")
    assert card_value(page, "rows") == 7 and card_value(page, "labelled") == 6 and card_value(page, "failed") == 1
    assert len(thumbnails(page)) == 6
    assert '<th>elapsed_s</th><td class="wrap">1.5</td>' in page
    assert html.escape('{"ok": 6}') in page
    assert "UnidentifiedImageError" in page
    assert thumbnails(local_only) == [] and local_only.count('class="placeholder"') == 6 + 6
    assert reasons(local_only, "UnsupportedScheme: scheme 'memory' is not in") == 6 + 6


def test_inputs_dir_prefix_glob_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The input is a directory, a prefix, a glob or a file; bad inputs exit 2 with a message."""
    write_image(tmp_path / "a.jpg")
    prefix = write_run(str(tmp_path / "out"), [row(str(tmp_path / "a.jpg"), 1)], shards=1, success={"x": 1})
    for output in [
        prefix,
        str(tmp_path / "out"),
        str(tmp_path / "out" / "*.parquet"),
        prefix + "-00000-of-00001.parquet",
    ]:
        assert card_value(render(output, tmp_path), "rows") == 1, output
    assert report.main([str(tmp_path / "nothing"), "--html", str(tmp_path / "r.html")]) == 2
    assert "no Parquet files match" in capsys.readouterr().err
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    assert report.main([str(tmp_path / "other.parquet"), "--html", str(tmp_path / "r.html")]) == 2
    assert "missing columns" in capsys.readouterr().err


def test_placeholders_escaping_and_pagination(tmp_path: Path) -> None:
    """Unreadable thumbnails become placeholders; hostile text is escaped; failed rows are capped and paged."""
    write_image(tmp_path / "big.jpg", size=(4000, 3000))
    (tmp_path / "junk.jpg").write_text("not an image")
    evil = str(tmp_path / '"><script>alert(1)</script>.jpg')
    rows = [
        row(str(tmp_path / "big.jpg"), 0, label="<b>tabby</b>", score=0.51, second=0.49),
        row(str(tmp_path / "junk.jpg"), 1, score=0.8),
        row(str(tmp_path / "missing.jpg"), 2, score=0.7),
        row(evil, 3, score=0.75),
    ]
    rows += [row(f"{tmp_path}/f{i:03d}<img src=x>.jpg", 10 + i, label=None) for i in range(249)]
    rows.append({**row("", 9, label=None), "uri": None, "error_type": "EmptyUri", "error": None})
    page = render(write_run(str(tmp_path / "out"), rows), tmp_path, "--max-failed", "230", "--page-size", "100")
    assert len(thumbnails(page)) == 2  # big.jpg in the lowest-score list and in its label grid
    assert page.count('class="placeholder"') >= 3
    assert "<script" not in page and "<img src=x>" not in page and "<b>tabby</b>" not in page
    assert html.escape("<b>tabby</b>") in page and html.escape("f000<img src=x>.jpg") in page
    assert external_resources(page) == []
    assert page.count('<details class="page"') == 3 and "Rows 201\u2013230" in page
    assert "first 230 of 250" in page
    assert page.count('<tr><td class="wrap">') == 230
    small = render(str(tmp_path / "out"), tmp_path, "--max-bytes", "10000")
    assert thumbnails(small) == []


def test_thumbnail_cap(tmp_path: Path) -> None:
    """--max-thumbnails bounds the embedded images across all sections."""
    for i in range(4):
        write_image(tmp_path / f"{i}.jpg", color=(60 * i, 100, 100))
    rows = [row(str(tmp_path / f"{i % 4}.jpg"), i, label=f"class {i % 10}") for i in range(100)]
    page = render(write_run(str(tmp_path / "out"), rows), tmp_path, "--max-thumbnails", "25", "--per-label", "4")
    srcs = thumbnails(page)
    assert 0 < len(srcs) <= 25
    assert "less frequent labels have no thumbnails" in page
    empty = render(write_run(str(tmp_path / "empty"), [], shards=1), tmp_path)
    assert card_value(empty, "rows") == 0 and thumbnails(empty) == []


@pytest.mark.slow  # writes and aggregates a million rows
def test_million_rows_bounded(tmp_path: Path) -> None:
    """A million-row run is aggregated by DuckDB and yields a capped page."""
    n, shards = 1_000_000, 4
    rng = np.random.default_rng(0)
    names = np.array([f"class {i}" for i in range(1000)], dtype=object)
    schema = output_schema(CARRIED)
    per = n // shards
    for s in range(shards):
        ok = rng.random(per) > 0.05
        cls = rng.integers(0, 1000, size=(per, 3)).astype(np.int32)
        scores = np.sort(rng.dirichlet([1, 1, 1, 1], size=per)[:, :3], axis=1)[:, ::-1].astype(np.float32)
        items = pa.StructArray.from_arrays(
            [pa.array(cls.ravel()), pa.array(names[cls.ravel()], pa.string()), pa.array(scores.ravel())],
            fields=list(TOP_K_TYPE.value_type),
        )
        offsets = pa.array(np.arange(0, 3 * per + 1, 3, dtype=np.int32))
        ids = np.arange(s * per, (s + 1) * per)
        table = pa.table(
            {
                "uri": pa.array([f"/nonexistent/{i}.jpg" for i in ids]),
                "id": ids,
                "status": np.where(ok, "ok", "error"),
                "error_type": pa.array(np.where(ok, None, "UnidentifiedImageError")),
                "error_kind": pa.array(np.where(ok, None, "permanent")),
                "error": pa.array(np.where(ok, None, "UnidentifiedImageError: cannot identify image file")),
                "label": pa.array(np.where(ok, names[cls[:, 0]], None)),
                "score": pa.array(scores[:, 0], mask=~ok),
                "top_k": pa.ListArray.from_arrays(offsets, items, mask=pa.array(~ok)),
                "width": pa.array(np.full(per, 640, np.int32), mask=~ok),
                "height": pa.array(np.full(per, 480, np.int32), mask=~ok),
                "model": pa.array(["m"] * per),
                "labelled_at": pa.nulls(per, pa.timestamp("us", tz="UTC")),
            }
        ).cast(schema)
        pq.write_table(table, tmp_path / f"labels-{s:05d}-of-{shards:05d}.parquet")
    page = render(str(tmp_path / "labels"), tmp_path)
    assert card_value(page, "rows") == n
    assert card_value(page, "distinct labels") == 1000
    assert len(page.encode()) < 3_000_000
    assert page.count('class="placeholder"') <= DEFAULT_MAX_THUMBNAILS
    assert page.count('<tr><td class="wrap">') == DEFAULT_MAX_FAILED


# ------------------------------------------------------- thumbnails of untrusted output


def test_private_hosts_get_no_request_unless_allowed(tmp_path: Path) -> None:
    """Rows pointing at a loopback HTTP server: no request by default; --allow-private-hosts reads them."""
    served = tmp_path / "served"
    served.mkdir()
    for i in range(3):
        write_image(served / f"{i}.jpg", color=(80 * i, 60, 200))
    with serve_folder(served) as (base, requested):
        output = write_run(str(tmp_path / "out"), [row(f"{base}/{i}.jpg", i) for i in range(3)])
        page = render(output, tmp_path)
        requested_by_default = list(requested)
        trusted = render(output, tmp_path, "--allow-private-hosts")
    assert requested_by_default == []
    cards = page.count("<figure ")
    assert cards == 6  # each image in the lowest-score list and in its label's grid
    assert thumbnails(page) == [] and reasons(page, "BlockedHost: 127.0.0.1") == cards
    assert sorted(set(requested)) == ["/0.jpg", "/1.jpg", "/2.jpg"]
    assert len(thumbnails(trusted)) == cards and reasons(trusted, "") == 0


def test_local_files_not_embedded_from_remote_output(tmp_path: Path) -> None:
    """Output on memory:// naming local files (a path, a file:// URI): placeholders unless the output is local."""
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg", color=(10, 200, 10))
    rows = [row(str(tmp_path / "a.jpg"), 1), row((tmp_path / "b.jpg").as_uri(), 2)]
    root = f"memory://report-local-{uuid.uuid4().hex}"
    try:
        output = write_run(f"{root}/out", rows)
        page = render(output, tmp_path)
        trusted = render(output, tmp_path, "--allow-private-hosts")
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)
    local = render(write_run(str(tmp_path / "out"), rows), tmp_path)
    cards = page.count("<figure ")
    assert cards == 4
    assert thumbnails(page) == [] and reasons(page, LOCAL_FILE_REFUSED) == cards
    assert len(thumbnails(trusted)) == cards and len(thumbnails(local)) == cards
    chained = "simplecache::" + (tmp_path / "a.jpg").as_uri()  # a chain reaching a local file, if its scheme is allowed
    allowed = ("simplecache::file",)
    assert make_thumbnail(chained, allowed_schemes=allowed).refused == LOCAL_FILE_REFUSED
    assert make_thumbnail(chained, allowed_schemes=allowed, allow_local_files=True).src


# ------------------------------------------------------------ packaging and layout


@pytest.mark.slow  # starts two Python subprocesses that import Beam
def test_job_import_loads_no_report_dependency() -> None:
    """Importing the job (as Dataflow workers do) loads neither DuckDB nor matplotlib; the report loads DuckDB."""
    probe = "import sys, {}; print(sorted(m for m in ('duckdb', 'matplotlib') if m in sys.modules))"
    loaded = {
        module: subprocess.run(
            [sys.executable, "-c", probe.format(module)], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        for module in ("beam_pipeline.pipeline", "beam_pipeline.report")
    }
    assert loaded == {"beam_pipeline.pipeline": "[]", "beam_pipeline.report": "['duckdb']"}


def test_report_columns_are_the_job_schema() -> None:
    """The columns the report requires or uses when present are the job's output columns."""
    assert set(queries.REQUIRED_COLUMNS) | queries.OPTIONAL_COLUMNS == RESERVED_NAMES
    assert not set(queries.REQUIRED_COLUMNS) & queries.OPTIONAL_COLUMNS


@pytest.mark.slow  # builds the sdist and pip-installs it in subprocesses
def test_installed_sdist_console_script_and_module(tmp_path: Path) -> None:
    """The sdist ships the page template and CSS: its console script and `-m` both write the same full page."""
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", tmp_path / "dist", REPO], check=True, capture_output=True
    )
    (sdist,) = (tmp_path / "dist").glob("beam_image_labeller-*.tar.gz")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, sdist],
        check=True,
        capture_output=True,
    )
    write_image(tmp_path / "a.jpg")
    output = write_run(str(tmp_path / "out"), [row(str(tmp_path / "a.jpg"), 1)], shards=1)
    env = {**os.environ, "PYTHONPATH": str(target)}
    commands = {
        "script": [target / "bin" / "beam-image-labeller-report"],
        "module": [sys.executable, "-m", "beam_pipeline.report"],
    }
    pages = {}
    for name, command in commands.items():
        page = tmp_path / f"{name}.html"
        proc = subprocess.run(
            [*command, output, "--html", page], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        pages[name] = re.sub(r"generated [^<]*", "", page.read_text(encoding="utf-8"))
    probe = "import beam_pipeline.report as r; print(r.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    css = (REPO / "beam_pipeline" / "report" / "report.css").read_text(encoding="utf-8")
    assert pages["script"] == pages["module"]
    assert f"<style>\n{css}</style>" in pages["script"]
    assert card_value(pages["script"], "rows") == 1 and len(thumbnails(pages["script"])) == 2


def test_times_shown_in_utc() -> None:
    """labelled_at values are shown in UTC (with datetime.timezone.utc: setup.py allows Python 3.10)."""
    paris = dt.timezone(dt.timedelta(hours=1))
    assert text.fmt_time(dt.datetime(2026, 1, 2, 4, 5, 6, tzinfo=paris)) == "2026-01-02 03:05:06 UTC"
    assert text.fmt_time(dt.datetime(2026, 1, 2, 4, 5, 6)) == "2026-01-02 04:05:06"
