"""DuckDB over a run's Parquet output: the bounded queries that gather everything the page shows.

All aggregation and sampling is done by DuckDB over the Parquet files, so the report costs bounded time and
memory whatever the number of rows; only the aggregates and the few sampled rows ever reach Python.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb
import fsspec
from fsspec.implementations.local import LocalFileSystem

from beam_pipeline.records import EMBEDDING, LEADING_FIELDS, RESULT_FIELDS, STATUS_OK
from beam_pipeline.report.data import (
    NEAR_DUPLICATE_DISTANCE,
    NEAR_DUPLICATE_SAMPLE,
    NEIGHBOURS_PER_IMAGE,
    SCORE_BINS,
    DuplicateGroup,
    Failure,
    NearPair,
    Neighbours,
    Options,
    Prediction,
    ReportData,
    ReportError,
)
from beam_pipeline.report.files import missing_shards, read_success, resolve_inputs
from beam_pipeline.report.text import MAX_TEXT

# Output columns the report does without (it then shows no image sizes, models, time range or duplicates).
OPTIONAL_COLUMNS = frozenset({"width", "height", "model", "labelled_at", "content_sha256", "phash", EMBEDDING})
REQUIRED_COLUMNS = tuple(f.name for f in LEADING_FIELDS + RESULT_FIELDS if f.name not in OPTIONAL_COLUMNS)
MAX_ERROR_TYPES = 50
MAX_MODELS = 20


def _duckdb_paths(con: duckdb.DuckDBPyConnection, fs: fsspec.AbstractFileSystem, files: list[str]) -> list[str]:
    """Paths DuckDB can open: local ones as they are, others through the registered fsspec filesystem."""
    if isinstance(fs, LocalFileSystem):
        return files
    con.register_filesystem(fs)  # a fresh connection per report: nothing registered yet
    return [fs.unstrip_protocol(p) for p in files]


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
    data = ReportData(
        source=output, files=[fs.unstrip_protocol(p) for p in files], output_is_local=isinstance(fs, LocalFileSystem)
    )
    data.success = read_success(fs, files)
    data.warnings = missing_shards(files, data.success)

    con = duckdb.connect(config={"preserve_insertion_order": False})
    try:
        paths = _duckdb_paths(con, fs, files)
        try:
            con.read_parquet(paths, union_by_name=True).create_view("t")
            columns = {row[0] for row in con.execute("DESCRIBE t").fetchall()}
        except (duckdb.InvalidInputException, duckdb.IOException) as exc:
            raise ReportError(_not_parquet(str(exc), output)) from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ReportError(f"{output!r} is not an image labeller output: missing columns {', '.join(missing)}")
        has = columns.__contains__
        _gather_totals(con, data, has)
        _gather_labels(con, data, options, has)
        _gather_failures(con, data, options)
        _gather_duplicates(con, data, options, has)
    finally:
        con.close()
    return data


def _not_parquet(message: str, output: str) -> str:
    """DuckDB's error on a file that is not Parquet ("File '...' too small to be a Parquet file", "No magic bytes
    found at end of file '...'"), said in the report's terms; any other error as DuckDB gives it."""
    match = re.search(r"[Ff]ile '([^']*)'", message)
    if not match or ("Parquet" not in message and "magic bytes" not in message):
        return message
    return (
        f"{match.group(1)!r} is not a Parquet file: give the report a run's output folder, its --output prefix or a"
        f" glob of its .parquet shards (not {output!r})"
    )


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


def _gather_duplicates(con: duckdb.DuckDBPyConnection, data: ReportData, options: Options, has: Any) -> None:
    """Exact duplicates (content_sha256), near-duplicates (phash, among a bounded sample) and, with embeddings, the
    nearest neighbours of the first sampled images (array_cosine_similarity over every row: one scan per report)."""
    data.has_identity = has("content_sha256") and has("phash")
    shown = max(options.duplicates, 0)
    # The section's thumbnails count against --max-thumbnails too: groups take one, pairs two, neighbours four.
    room = max(options.max_thumbnails - len(data.sampled_uris()), 0)
    if data.has_identity:
        groups = "SELECT content_sha256, count(*) AS n FROM t WHERE content_sha256 IS NOT NULL GROUP BY 1 HAVING n > 1"
        data.duplicate_group_count, data.duplicate_rows = con.execute(
            f"SELECT count(*), coalesce(sum(n), 0) FROM ({groups})"
        ).fetchone()
        data.duplicate_groups = [
            DuplicateGroup(sha, int(n), tuple(uris))
            for sha, n, uris in con.execute(
                """SELECT content_sha256, count(*) AS n, list(coalesce(uri, '') ORDER BY uri)[1:4] FROM t
                   WHERE content_sha256 IS NOT NULL GROUP BY 1 HAVING n > 1 ORDER BY n DESC, 1 LIMIT $n""",
                {"n": min(shown, room)},
            ).fetchall()
        ]
        sample = f"""WITH s AS (SELECT coalesce(uri, '') AS uri, content_sha256 AS sha, ('0x' || phash)::UBIGINT AS h
                         FROM t WHERE phash IS NOT NULL ORDER BY hash(uri) LIMIT {NEAR_DUPLICATE_SAMPLE})"""
        pairs = f"""FROM s AS a JOIN s AS b ON a.uri < b.uri AND a.sha IS DISTINCT FROM b.sha
                    AND bit_count(xor(a.h, b.h)) <= {NEAR_DUPLICATE_DISTANCE}"""
        data.near_compared, data.near_pair_count = con.execute(
            f"{sample} SELECT (SELECT count(*) FROM s), (SELECT count(*) {pairs})"
        ).fetchone()
        room -= len(data.duplicate_groups)
        data.near_pairs = [
            NearPair(a, b, int(d))
            for a, b, d in con.execute(
                f"{sample} SELECT a.uri, b.uri, bit_count(xor(a.h, b.h)) AS d {pairs} ORDER BY d, 1, 2 LIMIT $n",
                {"n": min(shown, room // 2)},
            ).fetchall()
        ]
        room -= 2 * len(data.near_pairs)
    data.has_embeddings = has(EMBEDDING)
    queries = [p.uri for _, _, ps in data.samples for p in ps]
    queries = queries[: min(max(options.neighbours, 0), room // (1 + NEIGHBOURS_PER_IMAGE))]
    if not data.has_embeddings or not queries:
        return
    size = con.execute("SELECT len(embedding) FROM t WHERE embedding IS NOT NULL LIMIT 1").fetchone()
    if size is None:
        return
    vectors = (
        f"SELECT coalesce(uri, '') AS uri, embedding::FLOAT[{int(size[0])}] AS v FROM t WHERE embedding IS NOT NULL"
    )
    found = con.execute(
        f"""WITH e AS ({vectors}), q AS (SELECT * FROM e WHERE list_contains($uris, uri))
            SELECT q.uri, max_by({{'uri': e.uri, 's': array_cosine_similarity(q.v, e.v)}},
                                 array_cosine_similarity(q.v, e.v), {NEIGHBOURS_PER_IMAGE})
            FROM q JOIN e ON e.uri <> q.uri GROUP BY q.uri""",
        {"uris": queries},
    ).fetchall()
    by_uri = {uri: tuple((n["uri"], float(n["s"])) for n in nearest) for uri, nearest in found}
    data.neighbours = [Neighbours(uri, by_uri[uri]) for uri in dict.fromkeys(queries) if uri in by_uri]
