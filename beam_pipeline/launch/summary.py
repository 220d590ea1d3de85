"""The end-of-run summary printed by a launcher that waited: formatted from the record in `_SUCCESS`."""

from __future__ import annotations

import datetime


def format_summary(record: dict) -> str:
    """A few lines: counts, time and speed, skipped rows, errors by type, the most frequent labels."""
    counts = record["status_counts"]
    seconds = (
        datetime.datetime.fromisoformat(record["finished_at"]) - datetime.datetime.fromisoformat(record["started_at"])
    ).total_seconds()
    lines = [
        f"images read: {record['rows']}  labelled: {counts['ok']}  failed: {counts['error']}",
        f"time: {seconds:.1f} s  ({record['images_per_second'] or 0:.1f} images/s)",
    ]
    if record["rows_skipped"]:
        failed = record.get("rows_skipped_failed", 0)
        labelled = record["rows_skipped"] - failed
        line = f"skipped (labelled by an earlier run): {labelled}"
        lines.append(line + (f", failed for good in an earlier run: {failed}" if failed else ""))
    if record["errors_by_type"]:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(record["errors_by_type"].items())))
    if record["top_labels"]:
        lines.append("top labels: " + ", ".join(f"{label} ({n})" for label, n in record["top_labels"][:5]))
    return "\n".join(lines)
