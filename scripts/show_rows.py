"""Prints the first rows of a run's Parquet output: uri, status, top-1 label and score, error."""

from __future__ import annotations

import sys

import pyarrow.dataset as ds


def show(pattern_dir: str, limit: int) -> None:
    dataset = ds.dataset(pattern_dir, format="parquet")
    table = dataset.head(limit, columns=["uri", "status", "label", "score", "error"])
    for row in table.to_pylist():
        result = f"{row['label']} ({row['score']:.2f})" if row["status"] == "ok" else row["error"]
        print(f"{row['status']:5}  {row['uri']}  ->  {result}")


if __name__ == "__main__":
    show(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)
