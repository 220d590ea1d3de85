"""The report's duplicates section: exact-duplicate groups by content_sha256, near-duplicate pairs by phash, and
nearest neighbours by embedding, from DuckDB queries over a run's Parquet output."""

from __future__ import annotations

import html

import numpy as np
from report_pages import render, row, write_image, write_run

from beam_pipeline.report.data import NEAR_DUPLICATE_DISTANCE, Options
from beam_pipeline.report.queries import gather

SIZE = 8


def _flip(h: int, bits: int) -> int:
    """`h` with its lowest `bits` bits flipped."""
    return h ^ ((1 << bits) - 1)


def test_groups_pairs_and_neighbours(tmp_path):
    rng = np.random.default_rng(3)
    far = [int(x) for x in rng.integers(0, 2**63, size=8)]  # random hashes: ~32 bits apart
    assert min(bin(a ^ b).count("1") for i, a in enumerate(far) for b in far[i + 1 :]) > NEAR_DUPLICATE_DISTANCE + 2
    # 0-3: the same bytes; 4-5: the same bytes; 6: 0's picture re-encoded (3 bits off); 7: 4's, 12 bits off (not
    # near); 8-11: other pictures.
    hashes = [far[0]] * 4 + [far[1]] * 2 + [_flip(far[0], 3), _flip(far[1], 12)] + far[2:6]
    shas = [0, 0, 0, 0, 4, 4, 6, 7, 8, 9, 10, 11]
    rows = []
    for i in range(12):
        uri = str(tmp_path / f"img{i:02d}.png")
        write_image(tmp_path / f"img{i:02d}.png", color=(20 * i, 100, 50))
        rows.append({**row(uri, i, label="tabby" if i % 2 else "daisy"), "content_sha256": f"{shas[i]:064x}"})
        rows[-1]["phash"] = f"{hashes[i]:016x}"
        rows[-1]["embedding"] = rng.normal(size=SIZE).astype(np.float32).tolist()
    rows[11]["embedding"] = (np.array(rows[7]["embedding"]) * 2 + 0.01).tolist()  # 7's twin by direction
    rows.append(row(str(tmp_path / "broken.png"), 99, label=None))
    output = write_run(str(tmp_path / "out"), rows, embedding_size=SIZE)
    data = gather(output, Options(per_label=8, neighbours=12))

    assert (data.duplicate_group_count, data.duplicate_rows) == (2, 6)
    assert [(g.rows, len(g.uris)) for g in data.duplicate_groups] == [(4, 4), (2, 2)]
    assert data.near_compared == 12
    near = {(p.uri.rsplit("/", 1)[1], p.other.rsplit("/", 1)[1]): p.distance for p in data.near_pairs}
    # Pairs with different bytes within the threshold: the re-encoded copy and each copy of its original.
    assert near == {(f"img{i:02d}.png", "img06.png"): 3 for i in range(4)}
    assert data.near_pair_count == 4
    assert data.has_embeddings and len(data.neighbours) == 12, "every sampled image (all 12 ok rows)"
    nearest = {n.uri.rsplit("/", 1)[1]: n.nearest for n in data.neighbours}
    assert nearest["img07.png"][0][0].endswith("img11.png") and nearest["img07.png"][0][1] > 0.99
    assert nearest["img11.png"][0][0].endswith("img07.png")
    assert all(len(n) == 3 and n[0][1] >= n[1][1] >= n[2][1] for n in nearest.values())

    page = render(output, tmp_path, "--per-label", "8", "--neighbours", "12")
    section = page[page.index('<section id="duplicates">') : page.index('<section id="failed">')]
    assert 'id="exact-duplicates"' in section and 'id="near-duplicates"' in section
    assert "4 copies" in section and html.escape(rows[0]["content_sha256"]) in section
    assert section.count('class="grid neighbours"') == len(data.neighbours)
    assert section.count('<img class="thumb"') == len(data.duplicate_uris())


def test_an_output_without_the_columns_says_so(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_image(tmp_path / "a.png")
    old = write_run(str(tmp_path / "out"), [row(str(tmp_path / "a.png"), 0)], shards=1)
    shard = next((tmp_path / "out").glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(["content_sha256", "phash"]), shard)
    assert isinstance(table, pa.Table)
    page = render(old, tmp_path)
    assert "no content_sha256 and phash columns" in page
