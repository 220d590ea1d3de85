"""content_sha256 and phash: on every row that was read, grouping byte-identical copies and keeping re-encoded,
resized copies within the documented Hamming distance of their original, far from every other image."""

from __future__ import annotations

import hashlib
import io
import itertools
from pathlib import Path

import imagehash
import pytest
from conftest import label, read_output
from PIL import Image

from beam_pipeline import errors
from beam_pipeline.decode.dofn import FAILED_TAG, DecodeImage
from beam_pipeline.decode.preprocess import DecodeSpec, decode_image, hamming_distance
from beam_pipeline.decode.reading import ReadPolicy
from beam_pipeline.report.data import NEAR_DUPLICATE_DISTANCE

COPIES = 5  # byte-identical copies, and as many re-encoded ones


def reencoded(data: bytes, scale: float = 0.75, quality: int = 80) -> bytes:
    """The image resized by `scale` and saved again as a JPEG of `quality`: other bytes, the same picture."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def corpus_with_copies(sample: Path, folder: Path) -> dict[str, str]:
    """The 100-image sample plus COPIES byte-identical and COPIES re-encoded copies, in `folder`; copy -> original."""
    folder.mkdir()
    originals = sorted(sample.glob("*.JPEG"))
    for path in originals:
        (folder / path.name).write_bytes(path.read_bytes())
    copies = {}
    for path in originals[:COPIES]:
        (folder / f"copy-{path.name}").write_bytes(path.read_bytes())
        copies[f"copy-{path.name}"] = path.name
    for path in originals[COPIES : 2 * COPIES]:
        name = f"reencoded-{path.stem}.jpg"
        (folder / name).write_bytes(reencoded(path.read_bytes()))
        copies[name] = path.name
    return copies


def test_phash_is_imagehash_phash_within_two_bits(shared):
    """The hash taken from the reduced pixels is the standard pHash of the full-size file, to within 2 of 64 bits."""
    sample = sorted((shared / "images" / "imagenet-sample-100").glob("*.JPEG"))
    photos = sorted((shared / "images" / "photos").glob("*.[jb][pm][gp]"))
    distances = []
    for path in sample + photos:
        _, _, ours = decode_image(path.read_bytes(), DecodeSpec((224, 224)))
        assert len(ours) == 16 and int(ours, 16) >= 0
        distances.append(hamming_distance(ours, str(imagehash.phash(Image.open(path)))))
    assert max(distances) <= 2, distances
    assert distances.count(0) > len(distances) // 2


def test_phash_does_not_depend_on_the_resize_mode_much(shared):
    for path in sorted((shared / "images" / "photos").glob("*.[jb][pm][gp]")):
        data = path.read_bytes()
        hashes = [decode_image(data, DecodeSpec((224, 224), mode))[2] for mode in ("squash", "center-crop")]
        assert hamming_distance(*hashes) <= 2


def test_a_row_that_was_read_carries_its_sha256_even_when_it_does_not_decode(tmp_path):
    truncated = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buffer, "PNG")
    truncated.write_bytes(buffer.getvalue()[:60])
    good = tmp_path / "good.png"
    good.write_bytes(buffer.getvalue())
    decode = DecodeImage(ReadPolicy(), DecodeSpec((224, 224)), model_id="m")
    tag, row = decode.decode_row({"uri": str(truncated)})
    assert tag == FAILED_TAG and row["error_type"] == errors.CORRUPT_IMAGE
    assert row["content_sha256"] == hashlib.sha256(truncated.read_bytes()).hexdigest() and row["phash"] is None
    tag, row = decode.decode_row({"uri": str(tmp_path / "missing.png")})
    assert tag == FAILED_TAG and row["content_sha256"] is None and row["phash"] is None
    tag, (row, _) = decode.decode_row({"uri": str(good)})
    assert tag is None and row["content_sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert len(row["phash"]) == 16


def test_copies_share_sha256_and_reencoded_copies_stay_near(tmp_path, shared, float_model, labels_file):
    folder = tmp_path / "images"
    copies = corpus_with_copies(shared / "images" / "imagenet-sample-100", folder)
    prefix = tmp_path / "out" / "labels"
    assert label(folder, prefix, float_model, labels_file) == 0
    rows = {Path(r["uri"]).name: r for r in read_output(prefix).to_pylist()}
    assert len(rows) == 100 + 2 * COPIES and all(r["status"] == "ok" for r in rows.values())
    for name, row in rows.items():
        assert row["content_sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    by_sha = {}
    for name, row in rows.items():
        by_sha.setdefault(row["content_sha256"], set()).add(name)
    groups = sorted(sorted(names) for names in by_sha.values() if len(names) > 1)
    assert groups == sorted(sorted([c, o]) for c, o in copies.items() if c.startswith("copy-"))
    for copy, original in copies.items():
        assert hamming_distance(rows[copy]["phash"], rows[original]["phash"]) <= NEAR_DUPLICATE_DISTANCE
        if copy.startswith("copy-"):
            assert rows[copy]["top_k"] == rows[original]["top_k"]
    originals = [r for name, r in rows.items() if name not in copies]
    closest = min(hamming_distance(a["phash"], b["phash"]) for a, b in itertools.combinations(originals, 2))
    assert closest > NEAR_DUPLICATE_DISTANCE


@pytest.mark.parametrize("scale, quality", [(0.5, 75), (0.75, 85), (0.3, 60), (1.5, 90)])
def test_reencoded_copies_of_the_sample_are_within_the_threshold(shared, scale, quality):
    """The figures docs/embeddings.md gives for the threshold: every copy within it, at each scale and quality."""
    spec = DecodeSpec((224, 224))
    for path in sorted((shared / "images" / "imagenet-sample-100").glob("*.JPEG")):
        data = path.read_bytes()
        original, copy = (decode_image(d, spec)[2] for d in (data, reencoded(data, scale, quality)))
        assert hamming_distance(original, copy) <= NEAR_DUPLICATE_DISTANCE
