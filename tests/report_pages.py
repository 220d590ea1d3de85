"""Helpers for the report's tests: parsing a page, headless Chromium, and synthetic runs written with the output
schema."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_pipeline import report
from beam_pipeline.records import output_schema

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
    directory: str,
    rows: list[dict[str, Any]],
    shards: int = 2,
    success: dict[str, Any] | None = None,
    embedding_size: int | None = None,
) -> str:
    """Write ``rows`` as a sharded Parquet run under the fsspec ``directory``; return the output prefix."""
    fs, root = fsspec.core.url_to_fs(directory)
    fs.makedirs(root, exist_ok=True)
    schema = output_schema(CARRIED, embedding_size)
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
