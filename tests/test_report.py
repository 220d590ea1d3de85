"""Tests of the offline HTML report (beam_pipeline.report) on small synthetic Parquet runs written with the output
schema: filesystems and _SUCCESS, placeholders and escaping, pagination, the thumbnail cap, a million rows,
untrusted thumbnails, packaging. The real run in a browser is in test_report_browser.py."""

from __future__ import annotations

import datetime as dt
import html
import io
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import serve_folder
from PIL import Image
from report_pages import (
    CARRIED,
    REPO,
    card_value,
    external_resources,
    reasons,
    render,
    row,
    thumbnails,
    write_image,
    write_run,
)

from beam_pipeline import report
from beam_pipeline.records import RESERVED_NAMES, TOP_K_TYPE, output_schema
from beam_pipeline.report import queries, text
from beam_pipeline.report.data import DEFAULT_MAX_FAILED, DEFAULT_MAX_THUMBNAILS
from beam_pipeline.report.thumbnails import LOCAL_FILE_REFUSED, make_thumbnail

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
                # Every tenth id shares its bytes with the next one: 100,000 exact-duplicate pairs.
                "content_sha256": pa.array([f"{i - (i % 10 == 1):064x}" for i in ids]),
                "phash": pa.array([f"{h:016x}" for h in rng.integers(0, 2**63, size=per)], mask=~ok),
                "model": pa.array(["m"] * per),
                "labelled_at": pa.nulls(per, pa.timestamp("us", tz="UTC")),
            }
        ).cast(schema)
        pq.write_table(table, tmp_path / f"labels-{s:05d}-of-{shards:05d}.parquet")
    page = render(str(tmp_path / "labels"), tmp_path)
    assert card_value(page, "rows") == n
    assert "(100,000 groups, 200,000 rows;" in page
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
def test_messages_name_the_program_and_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Errors and warnings start with the program's name and say what to do: a folder of non-Parquet files, a
    parent folder of runs, and one shard of a run whose _SUCCESS lists more."""
    prog = "beam-image-labeller-report"
    html = str(tmp_path / "r.html")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hi\n")
    assert report.main([str(tmp_path / "notes"), "--html", html]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"{prog}: error: {str(tmp_path / 'notes' / 'a.txt')!r} is not a Parquet file: give the report a run's output"
        f" folder, its --output prefix or a glob of its .parquet shards (not {str(tmp_path / 'notes')!r})\n"
    )

    write_image(tmp_path / "a.jpg")
    rows = [row(str(tmp_path / "a.jpg"), i) for i in range(10)]
    for day in ("dt=2026-11-25", "dt=2026-11-26"):
        write_run(
            str(tmp_path / "runs" / day),
            rows,
            shards=2,
            success={
                "rows": 10,
                "shards": [str(tmp_path / "runs" / day / f"labels-{k:05d}-of-00002.parquet") for k in range(2)],
            },
        )
    assert report.main([str(tmp_path / "runs"), "--html", html]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: no Parquet files match {str(tmp_path / 'runs')!r}; it holds the output")
    assert f"of 2 run(s), such as {str(tmp_path / 'runs' / 'dt=2026-11-25')!r}: pass one of them" in err
    assert card_value(render(str(tmp_path / "runs" / "*" / "*.parquet"), tmp_path), "rows") == 20

    one_shard = str(tmp_path / "runs" / "dt=2026-11-26" / "labels-00000-of-00002.parquet")
    assert report.main([one_shard, "--html", html]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"{prog}: warning: 1 of the 2 shards {str(tmp_path / 'runs' / 'dt=2026-11-26' / '_SUCCESS')} lists are read"
        " (it records 10 rows): the report shows only those; pass the output folder or --output prefix for the"
        " whole run\n"
    )
    assert card_value(Path(html).read_text(encoding="utf-8"), "rows") == 5
    assert report.main([str(tmp_path / "runs" / "dt=2026-11-26"), "--html", html]) == 0
    assert capsys.readouterr().err == "", "the whole run: no warning"


def test_report_logs_nothing_without_the_gcp_extra(tmp_path: Path) -> None:
    """As in run_local.sh's venv (no apache-beam[gcp], so no apitools): the report prints no library warning."""
    write_image(tmp_path / "a.jpg")
    output = write_run(str(tmp_path / "out"), [row(str(tmp_path / "a.jpg"), 1)], shards=1)
    no_apitools = (
        "import runpy, sys; sys.modules['apitools'] = None; "
        "runpy.run_module('beam_pipeline.report', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", no_apitools, output, "--html", str(tmp_path / "r.html")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    assert proc.stdout.startswith(f"wrote {tmp_path / 'r.html'} ")


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
