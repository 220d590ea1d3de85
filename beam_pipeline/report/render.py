"""The HTML page: sections built from ReportData, in the page template with the CSS inline (both package data).

Every string from the output (URIs, labels, messages, _SUCCESS values) is escaped and truncated; the page has no
scripts and every src/href is a data: URI or an in-page #anchor, so it opens offline and fetches nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import json
import math
import re
import string
from collections.abc import Sequence
from typing import Any

from beam_pipeline.layout import SUCCESS_FILE
from beam_pipeline.report.charts import label_chart, score_chart
from beam_pipeline.report.data import NEAR_DUPLICATE_DISTANCE, Options, Prediction, ReportData
from beam_pipeline.report.text import basename, esc, fmt_score, fmt_time, pct, plural, shorten
from beam_pipeline.report.thumbnails import Thumbnail

MAX_SUCCESS_KEYS = 200
MAX_REASON = 140  # characters of why a thumbnail was refused, on its card (all of it on hover)


@functools.cache
def _resource(name: str) -> str:
    """A file shipped in this package (the page template, the CSS)."""
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


class _Renderer:
    """Builds the page from ``ReportData``."""

    def __init__(self, data: ReportData, options: Options, thumbs: dict[str, Thumbnail]) -> None:
        self.data = data
        self.options = options
        self.thumbs = thumbs

    def render(self) -> str:
        d, o = self.data, self.options
        files = f"{len(d.files)} file" + ("" if len(d.files) == 1 else "s")
        return string.Template(_resource("page.html")).substitute(
            title=esc(o.title),
            css=_resource("report.css"),
            source=esc(shorten(d.source)),
            files=files,
            generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            body="\n".join(
                [self._summary(), self._charts(), self._review(), self._labels(), self._duplicates(), self._failures()]
            ),
        )

    def _card(self, key: str, value: str, cls: str = "", sub: str = "") -> str:
        sub_html = f'<div class="muted">{esc(sub)}</div>' if sub else ""
        return (
            f'<div class="card {cls}"><div class="n">{esc(value)}</div><div class="k">{esc(key)}</div>{sub_html}</div>'
        )

    def _summary(self) -> str:
        d = self.data
        cards = "".join(
            [
                self._card("rows", f"{d.rows:,}"),
                self._card("labelled", f"{d.labelled:,}", "ok", pct(d.labelled, d.rows)),
                self._card("failed", f"{d.failed:,}", "bad", pct(d.failed, d.rows)),
                self._card("distinct labels", f"{d.distinct_labels:,}"),
            ]
        )
        parts = [f'<section id="summary"><h2>Summary</h2><div class="cards" id="totals">{cards}</div>']
        tables = []
        if d.error_types:
            rows = "".join(f'<tr><td>{esc(kind)}</td><td class="num">{n:,}</td></tr>' for kind, n in d.error_types)
            tables.append(
                f'<div><h3>Failures by error type</h3><table id="error-types"><tr><th>error type</th>'
                f"<th>rows</th></tr>{rows}</table></div>"
            )
        if d.models or d.first_labelled_at:
            rows = "".join(f'<tr><td>{esc(m)}</td><td class="num">{n:,}</td></tr>' for m, n in d.models)
            when = ""
            if d.first_labelled_at:
                first, last = esc(fmt_time(d.first_labelled_at)), esc(fmt_time(d.last_labelled_at))
                when = f'<p class="muted">labelled {first} to {last}</p>'
            tables.append(
                f"<div><h3>Model</h3><table><tr><th>model</th><th>labelled rows</th></tr>{rows}</table>{when}</div>"
            )
        for directory, summary in d.success:
            title = f"Run summary ({SUCCESS_FILE})"
            if len(d.success) > 1:
                title += f" \u2013 {shorten(directory, 80)}"
            tables.append(f'<div class="success"><h3>{esc(title)}</h3>{self._success_table(summary)}</div>')
        if tables:
            parts.append('<div class="cols">' + "".join(tables) + "</div>")
        parts.append("</section>")
        return "\n".join(parts)

    @staticmethod
    def _success_table(summary: dict[str, Any] | str) -> str:
        if isinstance(summary, str):
            return f"<pre>{esc(shorten(summary, 4000))}</pre>"
        rows = []
        for key, value in list(summary.items())[:MAX_SUCCESS_KEYS]:
            text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
            rows.append(f'<tr><th>{esc(shorten(str(key), 200))}</th><td class="wrap">{esc(shorten(text))}</td></tr>')
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
        thumb = self.thumbs.get(p.uri) or Thumbnail()
        title = esc(shorten(p.uri, 2000))
        if thumb.src:
            visual = f'<img class="thumb" src="{thumb.src}" alt="{esc(shorten(basename(p.uri), 200))}">'
        elif thumb.refused:
            visual = (
                f'<div class="placeholder" title="{esc(shorten(thumb.refused))}">refused'
                f'<span class="reason">{esc(shorten(thumb.refused, MAX_REASON))}</span></div>'
            )
        else:
            visual = '<div class="placeholder">thumbnail unavailable</div>'
        dims = f" \u00b7 {p.width}\u00d7{p.height}" if p.width and p.height else ""
        top = p.top or ((p.label or "?", p.score if p.score is not None else math.nan),)
        items = "".join(
            f'<li><span class="l" title="{esc(label)}">{esc(shorten(label, 80))}</span>'
            f'<span class="s">{fmt_score(s)}</span></li>'
            for label, s in top
        )
        flag_html = f'<div class="flag">{esc(flag)}</div>' if flag else ""
        return (
            f'<figure title="{title}"><div class="tw">{visual}</div><figcaption>'
            f'<span class="name">{esc(shorten(basename(p.uri), 120))}</span>'
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
            f'<h3>Lowest top-1 score <span class="muted">({len(d.lowest)} lowest of {plural(d.labelled, "image")}, '
            "see <code>--review</code>)</span></h3>"
        )
        parts.append(self._grid(d.lowest) if d.lowest else '<p class="muted">None shown.</p>')
        parts.append(
            f"<h3>Close calls: top-1 and top-2 scores less than {o.margin:g} apart "
            f'<span class="muted">({plural(d.close_call_count, "image")}, see <code>--margin</code>)</span></h3>'
        )
        if d.close_calls:
            flags = [f"margin {fmt_score(p.margin)}" for p in d.close_calls]
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
                f'<div class="label-section" id="{esc(anchor)}"><h3>{esc(shorten(label, 120))} '
                f'<span class="muted">({plural(n, "image")})</span></h3>{self._grid(preds)}</div>'
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

    def _thumb(self, uri: str, caption: str) -> str:
        """A small thumbnail with a caption, for the duplicates section."""
        thumb = self.thumbs.get(uri)
        if thumb and thumb.src:
            visual = f'<img class="thumb" src="{thumb.src}" alt="{esc(shorten(basename(uri), 200))}">'
        else:
            visual = '<div class="placeholder">thumbnail unavailable</div>'
        return (
            f'<figure class="mini" title="{esc(shorten(uri, 2000))}"><div class="tw">{visual}</div><figcaption>'
            f'<span class="name">{esc(shorten(basename(uri), 120))}</span>'
            f'<span class="muted">{esc(caption)}</span></figcaption></figure>'
        )

    def _duplicates(self) -> str:
        d, o = self.data, self.options
        parts = ['<section id="duplicates"><h2>Duplicates and similar images</h2>']
        if not d.has_identity:
            parts.append('<p class="muted">This output has no content_sha256 and phash columns.</p></section>')
            return "\n".join(parts)
        parts.append(
            f'<h3>Exact duplicates: the same bytes <span class="muted">({plural(d.duplicate_group_count, "group")}, '
            f"{plural(d.duplicate_rows, 'row')}; the {len(d.duplicate_groups)} largest, see "
            "<code>--duplicates</code>)</span></h3>"
        )
        groups = [
            self._thumb(g.uris[0], f"{g.rows} copies \u00b7 sha256 {g.content_sha256[:12]}\u2026")
            for g in d.duplicate_groups
        ]
        parts.append(f'<div class="grid" id="exact-duplicates">{"".join(groups)}</div>' if groups else "<p>None.</p>")
        for g in d.duplicate_groups:
            uris = "".join(f'<li class="wrap">{esc(shorten(u))}</li>' for u in g.uris)
            more = f'<li class="muted">and {g.rows - len(g.uris):,} more</li>' if g.rows > len(g.uris) else ""
            parts.append(f"<details><summary>{esc(g.content_sha256)}</summary><ul>{uris}{more}</ul></details>")
        parts.append(
            f"<h3>Near-duplicates: perceptual hashes at most {NEAR_DUPLICATE_DISTANCE} bits apart "
            f'<span class="muted">({plural(d.near_pair_count, "pair")} among {plural(d.near_compared, "sampled row")}, '
            "exact duplicates left out)</span></h3>"
        )
        pairs = [
            self._thumb(p.uri, f"{p.distance} bits from the next") + self._thumb(p.other, f"{p.distance} bits")
            for p in d.near_pairs
        ]
        parts.append(f'<div class="grid" id="near-duplicates">{"".join(pairs)}</div>' if pairs else "<p>None.</p>")
        if d.has_embeddings:
            parts.append(
                f'<h3>Nearest neighbours by embedding <span class="muted">(cosine similarity, for {len(d.neighbours)} '
                "sampled images, see <code>--neighbours</code>)</span></h3>"
            )
            for n in d.neighbours:
                cells = [self._thumb(n.uri, "sampled")] + [self._thumb(u, f"cosine {s:.3f}") for u, s in n.nearest]
                parts.append(f'<div class="grid neighbours">{"".join(cells)}</div>')
        elif o.neighbours:
            parts.append('<p class="muted">Run the job with <code>--embeddings</code> to see nearest neighbours.</p>')
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
                f'<tr><td class="wrap">{esc(shorten(f.uri))}</td><td>{esc(f.error_type)}</td>'
                f'<td class="msg">{esc(shorten(f.error or ""))}</td></tr>'
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


def render(data: ReportData, options: Options, thumbs: dict[str, Thumbnail]) -> str:
    """Return the complete HTML page for ``data``; ``thumbs`` maps URI to its thumbnail (missing: placeholder)."""
    return _Renderer(data, options, thumbs).render()
