"""The report's command line, `beam-image-labeller-report` / `python -m beam_pipeline.report`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import duckdb
import fsspec

from beam_pipeline.decode.reading import DEFAULT_ALLOWED_SCHEMES
from beam_pipeline.launch.options import _int_at_least, _scheme_list  # the job's own flag parsers
from beam_pipeline.report.data import (
    DEFAULT_DUPLICATES,
    DEFAULT_MARGIN,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FAILED,
    DEFAULT_MAX_THUMBNAILS,
    DEFAULT_NEIGHBOURS,
    DEFAULT_PAGE_SIZE,
    DEFAULT_PER_LABEL,
    DEFAULT_REVIEW,
    DEFAULT_THUMB_SIZE,
    DEFAULT_TOP_LABELS,
    DEFAULT_WORKERS,
    Options,
    ReportData,
    ReportError,
)
from beam_pipeline.report.queries import gather
from beam_pipeline.report.render import render
from beam_pipeline.report.thumbnails import make_thumbnails

PROG = "beam-image-labeller-report"
_NON_NEGATIVE = _int_at_least(0)


def build_report(output: str, options: Options | None = None) -> str:
    """Gather, read thumbnails and render: the whole report for ``output`` as an HTML string."""
    options = options or Options()
    return render_report(gather(output, options), options)


def render_report(data: ReportData, options: Options) -> str:
    """Read the thumbnails ``data`` samples and render the page."""
    # Local files only for local output: someone else's output must not embed this machine's files in the page.
    thumbs = make_thumbnails(
        data.sampled_uris(), options, allow_local_files=options.allow_private_hosts or data.output_is_local
    )
    return render(data, options, thumbs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write a self-contained offline HTML report of an image labelling run's Parquet output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("output", help="Parquet output: fsspec glob, directory, file or the pipeline's --output prefix")
    p.add_argument("--html", default="report.html", help="report to write (any fsspec path)")
    p.add_argument("--per-label", type=_NON_NEGATIVE, default=DEFAULT_PER_LABEL, help="thumbnails per label section")
    p.add_argument(
        "--max-thumbnails",
        type=_NON_NEGATIVE,
        default=DEFAULT_MAX_THUMBNAILS,
        help="thumbnails embedded in all sections",
    )
    p.add_argument("--review", type=_NON_NEGATIVE, default=DEFAULT_REVIEW, help="images in each needs-review list")
    p.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help="top-1 minus top-2 score below which is a close call"
    )
    p.add_argument("--max-failed", type=_NON_NEGATIVE, default=DEFAULT_MAX_FAILED, help="failed rows listed")
    p.add_argument("--page-size", type=_NON_NEGATIVE, default=DEFAULT_PAGE_SIZE, help="failed rows per page")
    p.add_argument("--top-labels", type=_NON_NEGATIVE, default=DEFAULT_TOP_LABELS, help="labels in the bar chart")
    p.add_argument("--thumb-size", type=_NON_NEGATIVE, default=DEFAULT_THUMB_SIZE, help="thumbnail size in pixels")
    p.add_argument("--workers", type=_NON_NEGATIVE, default=DEFAULT_WORKERS, help="threads reading thumbnails")
    p.add_argument(
        "--max-bytes",
        type=_NON_NEGATIVE,
        default=DEFAULT_MAX_BYTES,
        help="larger images get no thumbnail (placeholder)",
    )
    p.add_argument(
        "--allowed-schemes",
        type=_scheme_list,
        default=",".join(DEFAULT_ALLOWED_SCHEMES),
        help="URI schemes thumbnails may be read from, comma-separated",
    )
    p.add_argument(
        "--allow-private-hosts",
        action="store_true",
        help="read thumbnails from loopback, link-local and private http(s) hosts (following redirects), and local "
        "files even when the output is not local; only for output you trust (else they are shown as placeholders)",
    )
    p.add_argument(
        "--duplicates",
        type=_NON_NEGATIVE,
        default=DEFAULT_DUPLICATES,
        help="exact-duplicate groups and near-duplicate pairs listed",
    )
    p.add_argument(
        "--neighbours",
        type=_NON_NEGATIVE,
        default=DEFAULT_NEIGHBOURS,
        help="sampled images shown with their nearest neighbours (output written with --embeddings)",
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
        allow_private_hosts=args.allow_private_hosts,
        title=args.title,
        duplicates=args.duplicates,
        neighbours=args.neighbours,
    )
    try:
        data = gather(args.output, options)
        page = render_report(data, options)
    except (ReportError, duckdb.Error) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for warning in data.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    with fsspec.open(args.html, "w", encoding="utf-8") as f:
        f.write(page)
    print(f"wrote {args.html} ({len(page.encode('utf-8')) / 1024:.0f} KiB)")
    return 0
