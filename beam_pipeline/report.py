"""Render a run's Parquet output as one self-contained, offline HTML report.

Usage::

    python -m beam_pipeline.report 'gs://bucket/run/labels-*.parquet' --html report.html

The input is any fsspec path: a glob, a directory of shards, a single file, or the
``--output`` prefix given to the pipeline (``out/labels`` means ``out/labels*``).
All aggregation and sampling is done by DuckDB over the Parquet files, so the
report costs bounded time and memory whatever the number of rows; only the
aggregates and the few sampled rows ever reach Python. The page embeds everything
it shows (CSS, matplotlib charts as inline SVG, thumbnails as base64 JPEG
``data:`` URIs) and fetches nothing, so it opens offline in any browser.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import html
import io
import json
import math
import posixpath
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageOps

from beam_pipeline.reading import DEFAULT_ALLOWED_SCHEMES, read_image_bytes
from beam_pipeline.schema import STATUS_OK

SUCCESS_FILE = "_SUCCESS"
REQUIRED_COLUMNS = ("uri", "status", "error_type", "error", "label", "score", "top_k")

DEFAULT_PER_LABEL = 8
DEFAULT_MAX_THUMBNAILS = 300
DEFAULT_REVIEW = 16
DEFAULT_MARGIN = 0.1
DEFAULT_MAX_FAILED = 500
DEFAULT_PAGE_SIZE = 100
DEFAULT_TOP_LABELS = 20
DEFAULT_THUMB_SIZE = 128
DEFAULT_WORKERS = 8
DEFAULT_MAX_BYTES = 50_000_000  # the pipeline's --max-bytes default
MAX_IMAGE_PIXELS = 100_000_000  # the pipeline's --max-image-pixels default
SCORE_BINS = 20

MAX_TEXT = 400  # characters of one untrusted string (URI, message) shown in the page
MAX_SUCCESS_BYTES = 1 << 20  # a bigger _SUCCESS file is shown truncated
MAX_SUCCESS_KEYS = 200
MAX_SUCCESS_DIRS = 10
MAX_ERROR_TYPES = 50
MAX_MODELS = 20


class ReportError(Exception):
    """The input cannot be reported on (no files matched, not a labeller output, ...)."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Prediction:
    """One sampled, successfully labelled row, with what its thumbnail card shows."""

    uri: str
    label: str | None
    score: float | None
    top: tuple[tuple[str, float], ...]  # (label, score) of the first top_k entries
    width: int | None = None
    height: int | None = None

    @property
    def margin(self) -> float | None:
        """Top-1 minus top-2 score, or None with fewer than two classes."""
        if len(self.top) < 2:
            return None
        return self.top[0][1] - self.top[1][1]


@dataclass
class Failure:
    """One failed row of the failed-rows table."""

    uri: str
    error_type: str | None
    error: str | None


@dataclass
class ReportData:
    """Everything the page shows, gathered by bounded DuckDB queries."""

    source: str
    files: list[str]
    rows: int = 0
    labelled: int = 0
    failed: int = 0
    distinct_labels: int = 0
    error_types: list[tuple[str, int]] = field(default_factory=list)
    models: list[tuple[str, int]] = field(default_factory=list)
    first_labelled_at: dt.datetime | None = None
    last_labelled_at: dt.datetime | None = None
    success: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    label_counts: list[tuple[str, int, float]] = field(default_factory=list)  # (label, rows, mean score)
    score_hist: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    lowest: list[Prediction] = field(default_factory=list)
    close_calls: list[Prediction] = field(default_factory=list)
    close_call_count: int = 0
    samples: list[tuple[str, int, list[Prediction]]] = field(default_factory=list)  # (label, rows, sample)
    labels_without_grid: int = 0
    failures: list[Failure] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    """Report options, mirroring the command-line flags."""

    per_label: int = DEFAULT_PER_LABEL
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS
    review: int = DEFAULT_REVIEW
    margin: float = DEFAULT_MARGIN
    max_failed: int = DEFAULT_MAX_FAILED
    page_size: int = DEFAULT_PAGE_SIZE
    top_labels: int = DEFAULT_TOP_LABELS
    thumb_size: int = DEFAULT_THUMB_SIZE
    workers: int = DEFAULT_WORKERS
    max_bytes: int = DEFAULT_MAX_BYTES
    allowed_schemes: tuple[str, ...] = DEFAULT_ALLOWED_SCHEMES
    title: str = "Image labelling report"


# ------------------------------------------------------------------------- inputs


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _is_data_file(path: str) -> bool:
    name = posixpath.basename(path.rstrip("/"))
    return bool(name) and not name.startswith(("_", "."))


def resolve_inputs(output: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """Return the filesystem and the sorted Parquet shard paths that ``output`` names.

    ``output`` is a glob, a directory, a file, or the pipeline's ``--output`` prefix.
    Files whose name starts with ``_`` or ``.`` (``_SUCCESS``, temp files) are skipped.
    """
    fs, path = fsspec.core.url_to_fs(output)
    if _has_magic(path):
        pattern = path
    elif fs.isdir(path):
        pattern = path.rstrip("/") + "/*"
    elif fs.isfile(path):
        return fs, [path]
    else:
        pattern = path + "*.parquet"
    # detail=True gives each match's type without one more request per file on object stores.
    candidates = fs.glob(pattern, detail=True)
    files = sorted(p for p, info in candidates.items() if _is_data_file(p) and info.get("type") != "directory")
    if not files:
        raise ReportError(f"no Parquet files match {output!r}")
    return fs, files


def _duckdb_paths(con: duckdb.DuckDBPyConnection, fs: fsspec.AbstractFileSystem, files: list[str]) -> list[str]:
    """Paths DuckDB can open: local ones as they are, others through the registered fsspec filesystem."""
    if isinstance(fs, LocalFileSystem):
        return files
    con.register_filesystem(fs)  # a fresh connection per report: nothing registered yet
    return [fs.unstrip_protocol(p) for p in files]


def read_success(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[tuple[str, dict[str, Any] | str]]:
    """Read the ``_SUCCESS`` summary beside the shards, per directory, when present.

    Returns (directory, parsed JSON object) pairs, or (directory, raw text) when the
    file is not a JSON object. Unreadable files are reported as text, never raised.
    """
    found: list[tuple[str, dict[str, Any] | str]] = []
    for directory in sorted({posixpath.dirname(p) for p in files})[:MAX_SUCCESS_DIRS]:
        path = posixpath.join(directory, SUCCESS_FILE) if directory else SUCCESS_FILE
        try:
            if not fs.isfile(path):
                continue
            with fs.open(path, "rb") as f:
                raw = f.read(MAX_SUCCESS_BYTES + 1)
        except Exception as exc:  # noqa: BLE001 - a report shows what it cannot read
            found.append((directory, f"cannot read {SUCCESS_FILE}: {type(exc).__name__}: {exc}"))
            continue
        text = raw[:MAX_SUCCESS_BYTES].decode("utf-8", errors="replace")
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        found.append((directory, value if isinstance(value, dict) else text))
    return found


# ------------------------------------------------------------------------ queries


def _prediction(uri: str, label: str | None, score: float | None, top_k: Any, width: Any, height: Any) -> Prediction:
    top = tuple(
        (str(item.get("label") or item.get("class_id") or "?"), float(item.get("score") or 0.0))
        for item in (top_k or [])[:3]
        if item is not None
    )
    return Prediction(
        uri=uri,
        label=label,
        score=None if score is None else float(score),
        top=top,
        width=width,
        height=height,
    )


def gather(output: str, options: Options) -> ReportData:
    """Run the bounded DuckDB queries over the shards named by ``output``."""
    fs, files = resolve_inputs(output)
    data = ReportData(source=output, files=[fs.unstrip_protocol(p) for p in files])
    data.success = read_success(fs, files)

    con = duckdb.connect(config={"preserve_insertion_order": False})
    try:
        paths = _duckdb_paths(con, fs, files)
        con.read_parquet(paths, union_by_name=True).create_view("t")
        columns = {row[0] for row in con.execute("DESCRIBE t").fetchall()}
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ReportError(f"{output!r} is not an image labeller output: missing columns {', '.join(missing)}")
        has = columns.__contains__
        _gather_totals(con, data, has)
        _gather_labels(con, data, options, has)
        _gather_failures(con, data, options)
    finally:
        con.close()
    return data


def _gather_totals(con: duckdb.DuckDBPyConnection, data: ReportData, has: Any) -> None:
    ok = f"status = '{STATUS_OK}'"
    data.rows, data.labelled, data.distinct_labels = con.execute(
        f"SELECT count(*), count(*) FILTER ({ok}), count(DISTINCT label) FILTER ({ok}) FROM t"
    ).fetchone()
    data.failed = data.rows - data.labelled
    data.error_types = con.execute(
        f"""SELECT coalesce(error_type, status, '(unknown)') AS kind, count(*) AS n FROM t
            WHERE status IS DISTINCT FROM '{STATUS_OK}' GROUP BY kind ORDER BY n DESC, kind LIMIT {MAX_ERROR_TYPES}"""
    ).fetchall()
    if has("model"):
        data.models = con.execute(
            f"""SELECT coalesce(model, '(none)') AS m, count(*) AS n FROM t WHERE {ok}
                GROUP BY m ORDER BY n DESC, m LIMIT {MAX_MODELS}"""
        ).fetchall()
    if has("labelled_at"):
        data.first_labelled_at, data.last_labelled_at = con.execute(
            "SELECT min(labelled_at), max(labelled_at) FROM t"
        ).fetchone()


def _gather_labels(con: duckdb.DuckDBPyConnection, data: ReportData, options: Options, has: Any) -> None:
    ok = f"status = '{STATUS_OK}'"
    size = "width, height" if has("width") and has("height") else "NULL AS width, NULL AS height"
    cols = f"coalesce(uri, '') AS uri, label, score, top_k, {size}"
    data.label_counts = [
        (str(label), int(n), float(mean or 0.0))
        for label, n, mean in con.execute(
            f"""SELECT coalesce(label, '(none)') AS l, count(*) AS n, avg(score) FROM t WHERE {ok}
                GROUP BY l ORDER BY n DESC, l LIMIT $n""",
            {"n": max(options.top_labels, 0)},
        ).fetchall()
    ]
    hist = con.execute(
        f"""SELECT least(greatest(floor(score * {SCORE_BINS}), 0), {SCORE_BINS - 1})::INTEGER AS b, count(*)
            FROM t WHERE {ok} AND score IS NOT NULL AND NOT isnan(score) GROUP BY b"""
    ).fetchall()
    for b, n in hist:
        data.score_hist[int(b)] = int(n)

    budget = max(options.max_thumbnails, 0)
    review = min(max(options.review, 0), budget)
    data.lowest = [
        _prediction(*row)
        for row in con.execute(
            f"SELECT {cols} FROM t WHERE {ok} AND score IS NOT NULL ORDER BY score, uri LIMIT $n", {"n": review}
        ).fetchall()
    ]
    budget -= len(data.lowest)
    margin = "(top_k[1].score - top_k[2].score)"
    close_where = f"{ok} AND len(top_k) >= 2 AND {margin} < $m"
    data.close_call_count = con.execute(
        f"SELECT count(*) FROM t WHERE {close_where}", {"m": options.margin}
    ).fetchone()[0]
    params: dict[str, Any] = {"m": options.margin, "n": min(max(options.review, 0), budget)}
    if data.lowest:  # skip the rows already listed: those up to the last one in (score, uri) order
        close_where += " AND (score IS NULL OR score > $s OR (score = $s AND uri > $u))"
        params.update(s=data.lowest[-1].score, u=data.lowest[-1].uri)
    data.close_calls = [
        _prediction(*row)
        for row in con.execute(
            f"SELECT {cols} FROM t WHERE {close_where} ORDER BY {margin}, uri LIMIT $n", params
        ).fetchall()
    ]
    budget -= len(data.close_calls)

    # Thumbnail grids: most frequent labels first, each a deterministic pseudo-random
    # sample (smallest hash(uri)); arg_min(..., n) keeps only n rows per label in memory.
    per_label = max(options.per_label, 0)
    grid_labels: list[tuple[str, int]] = []
    remaining = budget
    counts = con.execute(
        f"SELECT label, count(*) AS n FROM t WHERE {ok} AND label IS NOT NULL GROUP BY label ORDER BY n DESC, label"
        " LIMIT $n",
        {"n": max(budget, 0) + 1},
    ).fetchall()
    for label, n in counts:
        take = min(per_label, int(n))
        if take <= 0 or take > remaining:
            break
        grid_labels.append((label, int(n)))
        remaining -= take
    data.labels_without_grid = data.distinct_labels - len(grid_labels)
    if not grid_labels:
        return
    sampled = con.execute(
        f"""SELECT label, arg_min({{'uri': uri, 'score': score, 'top_k': top_k, 'width': width, 'height': height}},
                                  hash(uri), $k) AS sample
            FROM (SELECT {cols} FROM t WHERE {ok} AND list_contains($labels, label))
            GROUP BY label""",
        {"k": per_label, "labels": [label for label, _ in grid_labels]},
    ).fetchall()
    by_label = {label: sample for label, sample in sampled}
    for label, n in grid_labels:
        preds = [
            _prediction(s["uri"], label, s["score"], s["top_k"], s["width"], s["height"])
            for s in sorted(by_label.get(label) or [], key=lambda s: -(s["score"] or 0.0))
        ]
        data.samples.append((label, n, preds))


def _gather_failures(con: duckdb.DuckDBPyConnection, data: ReportData, options: Options) -> None:
    data.failures = [
        Failure(uri, error_type, error)
        for uri, error_type, error in con.execute(
            f"""SELECT coalesce(uri, '') AS uri, error_type, left(error, {MAX_TEXT * 2}) FROM t
                WHERE status IS DISTINCT FROM '{STATUS_OK}' ORDER BY error_type NULLS LAST, uri LIMIT $n""",
            {"n": max(options.max_failed, 0)},
        ).fetchall()
    ]


# --------------------------------------------------------------------- thumbnails


def make_thumbnail(
    uri: str,
    size: int = DEFAULT_THUMB_SIZE,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_schemes: Sequence[str] = DEFAULT_ALLOWED_SCHEMES,
) -> str | None:
    """Read ``uri`` through fsspec and return a base64 JPEG ``data:`` URI, or None if it cannot be shown.

    The URI comes from the (untrusted) output, so it is read with the pipeline's own limits: only
    ``allowed_schemes``, at most ``max_bytes`` bytes and ``MAX_IMAGE_PIXELS`` pixels. ``Image.draft``
    lets the JPEG decoder downscale while decoding, so big photos stay cheap.
    """
    try:
        data = read_image_bytes(uri, max_bytes=max_bytes, allowed_schemes=tuple(allowed_schemes))
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return None
            im.draft("RGB", (size, size))
            im.thumbnail((size, size))
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGBA").convert("RGB") if "A" in im.mode or im.mode == "P" else im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=75, optimize=True)
    except Exception:  # noqa: BLE001 - any unreadable image becomes a placeholder
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_thumbnails(uris: Iterable[str], options: Options) -> dict[str, str | None]:
    """Thumbnails of distinct ``uris``, read concurrently (remote stores are latency bound)."""
    unique = list(dict.fromkeys(uris))
    if not unique:
        return {}

    def one(uri: str) -> str | None:
        return make_thumbnail(
            uri, options.thumb_size, max_bytes=options.max_bytes, allowed_schemes=options.allowed_schemes
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        return dict(zip(unique, pool.map(one, unique), strict=True))


# ------------------------------------------------------------------------- charts


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML declaration and DOCTYPE
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)


def _chart_rc(salt: str) -> dict[str, Any]:
    return {
        "svg.fonttype": "none",
        "svg.hashsalt": salt,
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }


def label_chart(label_counts: Sequence[tuple[str, int, float]]) -> str:
    """Horizontal bar chart of the most frequent labels, as an inline SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context(_chart_rc("labels")):
        names = [_shorten(label, 40) for label, _, _ in label_counts][::-1]
        counts = [n for _, n, _ in label_counts][::-1]
        fig = Figure(figsize=(5.6, 0.8 + 0.24 * max(len(names), 1)))
        ax = fig.add_subplot()
        bars = ax.barh(range(len(names)), counts, color="#3b7dd8")
        ax.set_yticks(range(len(names)), labels=names, parse_math=False)
        ax.bar_label(bars, padding=2, fontsize=8)
        ax.set_xlabel("images (top-1 label)")
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.margins(x=0.12)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Top {len(names)} labels", loc="left", fontsize=10)
        return _svg(fig)


def score_chart(score_hist: Sequence[int]) -> str:
    """Histogram of top-1 scores (bins computed by DuckDB), as an inline SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context(_chart_rc("scores")):
        fig = Figure(figsize=(5.6, 2.5))
        ax = fig.add_subplot()
        width = 1.0 / len(score_hist)
        ax.bar(
            [i * width for i in range(len(score_hist))],
            score_hist,
            width=width,
            align="edge",
            color="#2f9e6f",
            edgecolor="white",
            linewidth=0.6,
        )
        ax.set_xlim(0, 1)
        ax.set_xlabel("top-1 score (softmax probability)")
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Top-1 score distribution", loc="left", fontsize=10)
        return _svg(fig)


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _shorten(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "\u2013"


def _fmt_score(score: float | None) -> str:
    return "\u2013" if score is None or math.isnan(score) else f"{score:.3f}"


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value.tzinfo else str(value)
    return str(value)


def _basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/")) or uri


CSS = """
:root{--fg:#1d232b;--muted:#5f6b7a;--line:#dde2e8;--bg:#f5f7fa;--card:#fff;--ok:#2f9e6f;--bad:#c8433b;--acc:#3b7dd8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:var(--bg)}
header{background:#1d232b;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
header .meta{color:#b8c2cf;font-size:12.5px;word-break:break-all}
nav{padding:8px 28px;background:#fff;border-bottom:1px solid var(--line);font-size:13px}
nav a{color:var(--acc);margin-right:16px;text-decoration:none}
main{padding:8px 28px 40px;max-width:1400px}
section{margin-top:22px}
h2{font-size:18px;margin:0 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:16px 0 8px}
.muted{color:var(--muted)}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:140px}
.card .n{font-size:26px;font-weight:650}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.ok .n{color:var(--ok)} .card.bad .n{color:var(--bad)}
.cols{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.panel{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.panel svg{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;background:var(--card);font-size:13px}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{word-break:break-all;max-width:560px}
td.msg{max-width:560px;word-break:break-word}
code{font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.label-sections{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
.label-section{max-width:100%}
figure{width:142px;margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px;
overflow:hidden}
.tw{height:128px;display:flex;align-items:center;justify-content:center;background:#eef1f5;border-radius:4px}
img.thumb{max-width:100%;max-height:128px;display:block}
.placeholder{color:var(--muted);font-size:12px;text-align:center;padding:8px}
figcaption{font-size:12px;margin-top:6px}
figcaption .name{font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;display:block}
figcaption ol{margin:2px 0 0;padding:0;list-style:none}
figcaption li{display:flex;gap:4px}
figcaption li .l{flex:1;min-width:0;overflow-wrap:break-word}
figcaption li .s{font-variant-numeric:tabular-nums;color:var(--muted)}
figcaption li:first-child{font-weight:600}
figcaption .flag{color:var(--bad)}
details{margin:6px 0}
summary{cursor:pointer;color:var(--acc)}
.note{background:#fff8e1;border:1px solid #f0d98a;border-radius:6px;padding:6px 10px;font-size:13px}
"""


class _Renderer:
    """Builds the page from ``ReportData``, counting the thumbnails it embeds."""

    def __init__(self, data: ReportData, options: Options, thumbs: dict[str, str | None]) -> None:
        self.data = data
        self.options = options
        self.thumbs = thumbs
        self.embedded = 0

    def render(self) -> str:
        d, o = self.data, self.options
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        files = f"{len(d.files)} file" + ("" if len(d.files) == 1 else "s")
        body = f"{self._summary()}\n{self._charts()}\n{self._review()}\n{self._labels()}\n{self._failures()}"
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_e(o.title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{_e(o.title)}</h1>
<div class="meta">{_e(_shorten(d.source))} &middot; {files} &middot; generated {now}</div></header>
<nav><a href="#summary">Summary</a><a href="#charts">Charts</a><a href="#review">Needs review</a>
<a href="#labels">By label</a><a href="#failed">Failed rows</a></nav>
<main>
{body}
</main>
</body>
</html>
"""

    def _card(self, key: str, value: str, cls: str = "", sub: str = "") -> str:
        sub_html = f'<div class="muted">{_e(sub)}</div>' if sub else ""
        return f'<div class="card {cls}"><div class="n">{_e(value)}</div><div class="k">{_e(key)}</div>{sub_html}</div>'

    def _summary(self) -> str:
        d = self.data
        cards = "".join(
            [
                self._card("rows", f"{d.rows:,}"),
                self._card("labelled", f"{d.labelled:,}", "ok", _pct(d.labelled, d.rows)),
                self._card("failed", f"{d.failed:,}", "bad", _pct(d.failed, d.rows)),
                self._card("distinct labels", f"{d.distinct_labels:,}"),
            ]
        )
        parts = [f'<section id="summary"><h2>Summary</h2><div class="cards" id="totals">{cards}</div>']
        tables = []
        if d.error_types:
            rows = "".join(f'<tr><td>{_e(kind)}</td><td class="num">{n:,}</td></tr>' for kind, n in d.error_types)
            tables.append(
                f'<div><h3>Failures by error type</h3><table id="error-types"><tr><th>error type</th>'
                f"<th>rows</th></tr>{rows}</table></div>"
            )
        if d.models or d.first_labelled_at:
            rows = "".join(f'<tr><td>{_e(m)}</td><td class="num">{n:,}</td></tr>' for m, n in d.models)
            when = ""
            if d.first_labelled_at:
                when = (
                    f'<p class="muted">labelled {_e(_when(d.first_labelled_at))} to {_e(_when(d.last_labelled_at))}</p>'
                )
            tables.append(
                f"<div><h3>Model</h3><table><tr><th>model</th><th>labelled rows</th></tr>{rows}</table>{when}</div>"
            )
        for directory, summary in d.success:
            title = f"Run summary ({SUCCESS_FILE})"
            if len(d.success) > 1:
                title += f" \u2013 {_shorten(directory, 80)}"
            tables.append(f'<div class="success"><h3>{_e(title)}</h3>{self._success_table(summary)}</div>')
        if tables:
            parts.append('<div class="cols">' + "".join(tables) + "</div>")
        parts.append("</section>")
        return "\n".join(parts)

    @staticmethod
    def _success_table(summary: dict[str, Any] | str) -> str:
        if isinstance(summary, str):
            return f"<pre>{_e(_shorten(summary, 4000))}</pre>"
        rows = []
        for key, value in list(summary.items())[:MAX_SUCCESS_KEYS]:
            text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
            rows.append(f'<tr><th>{_e(_shorten(str(key), 200))}</th><td class="wrap">{_e(_shorten(text))}</td></tr>')
        if len(summary) > MAX_SUCCESS_KEYS:
            rows.append(f'<tr><td colspan="2" class="muted">{len(summary) - MAX_SUCCESS_KEYS} more keys</td></tr>')
        return '<table class="kv">' + "".join(rows) + "</table>"

    def _charts(self) -> str:
        d = self.data
        if not d.labelled:
            return '<section id="charts"><h2>Charts</h2><p class="muted">No labelled images.</p></section>'
        return (
            '<section id="charts"><h2>Charts</h2><div class="cols">'
            f'<div class="panel" id="label-chart">{label_chart(d.label_counts)}</div>'
            f'<div class="panel" id="score-chart">{score_chart(d.score_hist)}</div>'
            "</div></section>"
        )

    def _figure(self, p: Prediction, flag: str = "") -> str:
        src = self.thumbs.get(p.uri)
        title = _e(_shorten(p.uri, 2000))
        if src:
            self.embedded += 1
            visual = f'<img class="thumb" src="{src}" alt="{_e(_shorten(_basename(p.uri), 200))}">'
        else:
            visual = '<div class="placeholder">thumbnail unavailable</div>'
        dims = f" \u00b7 {p.width}\u00d7{p.height}" if p.width and p.height else ""
        top = p.top or ((p.label or "?", p.score if p.score is not None else math.nan),)
        items = "".join(
            f'<li><span class="l" title="{_e(label)}">{_e(_shorten(label, 80))}</span>'
            f'<span class="s">{_fmt_score(s)}</span></li>'
            for label, s in top
        )
        flag_html = f'<div class="flag">{_e(flag)}</div>' if flag else ""
        return (
            f'<figure title="{title}"><div class="tw">{visual}</div><figcaption>'
            f'<span class="name">{_e(_shorten(_basename(p.uri), 120))}</span>'
            f'<span class="muted">{dims.lstrip(" ·")}</span>{flag_html}<ol>{items}</ol></figcaption></figure>'
        )

    def _grid(self, preds: Sequence[Prediction], flags: Sequence[str] | None = None) -> str:
        cells = [self._figure(p, flags[i] if flags else "") for i, p in enumerate(preds)]
        return '<div class="grid">' + "".join(cells) + "</div>"

    def _review(self) -> str:
        d, o = self.data, self.options
        parts = ['<section id="review"><h2>Needs review</h2>']
        if not d.labelled:
            parts.append('<p class="muted">No labelled images.</p></section>')
            return "\n".join(parts)
        parts.append(
            f'<h3>Lowest top-1 score <span class="muted">({len(d.lowest)} lowest of {_n(d.labelled, "image")}, '
            "see <code>--review</code>)</span></h3>"
        )
        parts.append(self._grid(d.lowest) if d.lowest else '<p class="muted">None shown.</p>')
        parts.append(
            f"<h3>Close calls: top-1 and top-2 scores less than {o.margin:g} apart "
            f'<span class="muted">({_n(d.close_call_count, "image")}, see <code>--margin</code>)</span></h3>'
        )
        if d.close_calls:
            flags = [f"margin {_fmt_score(p.margin)}" for p in d.close_calls]
            parts.append(
                f'<p class="muted">{len(d.close_calls)} not listed above, smallest margin first.</p>'
                + self._grid(d.close_calls, flags)
            )
        elif d.close_call_count:
            parts.append('<p class="muted">Those shown are among the lowest scores above.</p>')
        else:
            parts.append('<p class="muted">None.</p>')
        parts.append("</section>")
        return "\n".join(parts)

    def _labels(self) -> str:
        d, o = self.data, self.options
        parts = [
            '<section id="labels"><h2>By label</h2>',
            f'<p class="muted">A sample of up to {o.per_label} images per label, most frequent labels first.</p>',
        ]
        sections = []
        for i, (label, n, preds) in enumerate(d.samples):
            anchor = f"label-{i}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", label)[:60]
            sections.append(
                f'<div class="label-section" id="{_e(anchor)}"><h3>{_e(_shorten(label, 120))} '
                f'<span class="muted">({_n(n, "image")})</span></h3>{self._grid(preds)}</div>'
            )
        if sections:
            parts.append('<div class="label-sections">' + "\n".join(sections) + "</div>")
        if d.labels_without_grid > 0:
            parts.append(
                f'<p class="note">{d.labels_without_grid:,} less frequent labels have no thumbnails here: '
                f"the report embeds at most {o.max_thumbnails} thumbnails (<code>--max-thumbnails</code>).</p>"
            )
        if not d.samples and not d.labels_without_grid:
            parts.append('<p class="muted">No labelled images.</p>')
        parts.append("</section>")
        return "\n".join(parts)

    def _failures(self) -> str:
        d, o = self.data, self.options
        parts = ['<section id="failed"><h2>Failed rows</h2>']
        if not d.failed:
            parts.append('<p class="muted">No failed rows.</p></section>')
            return "\n".join(parts)
        shown = len(d.failures)
        more = f" (first {shown:,} of {d.failed:,}, see <code>--max-failed</code>)" if shown < d.failed else ""
        parts.append(f'<p class="muted">{d.failed:,} failed rows{more}, by error type then URI.</p>')
        page = max(o.page_size, 1)
        for start in range(0, shown, page):
            chunk = d.failures[start : start + page]
            rows = "".join(
                f'<tr><td class="wrap">{_e(_shorten(f.uri))}</td><td>{_e(f.error_type)}</td>'
                f'<td class="msg">{_e(_shorten(f.error or ""))}</td></tr>'
                for f in chunk
            )
            is_open = " open" if start == 0 else ""
            parts.append(
                f'<details class="page"{is_open}><summary>Rows {start + 1:,}\u2013{start + len(chunk):,}</summary>'
                f'<table class="failed"><tr><th>URI</th><th>error type</th><th>message</th></tr>{rows}</table>'
                "</details>"
            )
        parts.append("</section>")
        return "\n".join(parts)


def render(data: ReportData, options: Options, thumbs: dict[str, str | None]) -> str:
    """Return the complete HTML page for ``data``; ``thumbs`` maps URI to data URI (None: placeholder)."""
    return _Renderer(data, options, thumbs).render()


def build_report(output: str, options: Options | None = None) -> str:
    """Gather, read thumbnails and render: the whole report for ``output`` as an HTML string."""
    options = options or Options()
    data = gather(output, options)
    uris = [p.uri for p in data.lowest + data.close_calls] + [p.uri for _, _, ps in data.samples for p in ps]
    thumbs = make_thumbnails(uris, options)
    return render(data, options, thumbs)


# ---------------------------------------------------------------------------- CLI


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _scheme_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip().lower() for s in text.split(",") if s.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog="beam-image-labeller-report",
        description="Write a self-contained offline HTML report of an image labelling run's Parquet output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("output", help="Parquet output: fsspec glob, directory, file or the pipeline's --output prefix")
    p.add_argument("--html", default="report.html", help="report to write (any fsspec path)")
    p.add_argument("--per-label", type=_positive, default=DEFAULT_PER_LABEL, help="thumbnails per label section")
    p.add_argument(
        "--max-thumbnails", type=_positive, default=DEFAULT_MAX_THUMBNAILS, help="thumbnails embedded in all sections"
    )
    p.add_argument("--review", type=_positive, default=DEFAULT_REVIEW, help="images in each needs-review list")
    p.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help="top-1 minus top-2 score below which is a close call"
    )
    p.add_argument("--max-failed", type=_positive, default=DEFAULT_MAX_FAILED, help="failed rows listed")
    p.add_argument("--page-size", type=_positive, default=DEFAULT_PAGE_SIZE, help="failed rows per page")
    p.add_argument("--top-labels", type=_positive, default=DEFAULT_TOP_LABELS, help="labels in the bar chart")
    p.add_argument("--thumb-size", type=_positive, default=DEFAULT_THUMB_SIZE, help="thumbnail size in pixels")
    p.add_argument("--workers", type=_positive, default=DEFAULT_WORKERS, help="threads reading thumbnails")
    p.add_argument(
        "--max-bytes", type=_positive, default=DEFAULT_MAX_BYTES, help="larger images get no thumbnail (placeholder)"
    )
    p.add_argument(
        "--allowed-schemes",
        type=_scheme_list,
        default=",".join(DEFAULT_ALLOWED_SCHEMES),
        help="URI schemes thumbnails may be read from, comma-separated",
    )
    p.add_argument("--title", default=Options.title, help="page title")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write the report and return the exit status."""
    args = parse_args(argv)
    options = Options(
        per_label=args.per_label,
        max_thumbnails=args.max_thumbnails,
        review=args.review,
        margin=args.margin,
        max_failed=args.max_failed,
        page_size=args.page_size,
        top_labels=args.top_labels,
        thumb_size=max(args.thumb_size, 16),
        workers=args.workers,
        max_bytes=args.max_bytes,
        allowed_schemes=args.allowed_schemes,
        title=args.title,
    )
    try:
        page = build_report(args.output, options)
    except (ReportError, duckdb.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with fsspec.open(args.html, "w", encoding="utf-8") as f:
        f.write(page)
    print(f"wrote {args.html} ({len(page.encode('utf-8')) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
