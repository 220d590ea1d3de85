"""The page's two charts, drawn with matplotlib (imported only when a chart is drawn) as inline SVG strings."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from beam_pipeline.report.text import shorten


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
        names = [shorten(label, 40) for label, _, _ in label_counts][::-1]
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
