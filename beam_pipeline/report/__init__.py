"""Render a run's Parquet output as one self-contained, offline HTML report.

Usage::

    python -m beam_pipeline.report 'gs://bucket/run/labels-*.parquet' --html report.html

The input is any fsspec path: a glob, a directory of shards, a single file, or the
``--output`` prefix given to the pipeline (``out/labels`` means ``out/labels*``).
DuckDB aggregates and samples the Parquet files (``queries``), so only aggregates and a
few sampled rows reach Python. The page embeds everything it shows (CSS, matplotlib
charts as inline SVG, thumbnails as base64 JPEG ``data:`` URIs) and fetches nothing,
so it opens offline in any browser (``render``).
"""

from beam_pipeline.launch.cli import import_beam

# Before any module below imports Beam: the report never uses Beam's BigQuery connector, and importing it without
# the [gcp] extra (run_local.sh's venv) logs "apitools not found ..." on the root logger, which no user can act on.
import_beam()

from beam_pipeline.report.cli import build_report, main  # noqa: E402
from beam_pipeline.report.data import Options, ReportData, ReportError  # noqa: E402
from beam_pipeline.report.queries import gather  # noqa: E402
from beam_pipeline.report.render import render  # noqa: E402
from beam_pipeline.report.thumbnails import make_thumbnail, make_thumbnails  # noqa: E402

__all__ = [
    "Options",
    "ReportData",
    "ReportError",
    "build_report",
    "gather",
    "main",
    "make_thumbnail",
    "make_thumbnails",
    "render",
]
