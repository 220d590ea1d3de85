"""A corpus of broken and unusual inputs: each ends as exactly one row, with a stable error type or a label."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import read_output, run_job
from images import jpeg_bytes, photo
from PIL import Image

MAX_BYTES = 2_000_000


def _png(im: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares width x height pixels (a decompression bomb)."""
    data = bytearray(_png(Image.new("L", (8, 8))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _broken_crc_png(im: Image.Image) -> bytes:
    data = bytearray(_png(im))
    data[29] ^= 0xFF  # flip a byte of the IHDR chunk's CRC (Pillow leaves IDAT CRCs to zlib's own checksum)
    return bytes(data)


def _exif_rotated_jpeg(im: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return jpeg_bytes(im, exif=exif.tobytes())


def _animated_gif(im: Image.Image) -> bytes:
    frames = [im.convert("P"), im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _sixteen_bit_png(im: Image.Image) -> bytes:
    gray = (np.asarray(im.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return _png(Image.fromarray(gray))


def _palette_with_transparency(im: Image.Image) -> bytes:
    palette = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return _png(palette, transparency=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared) -> tuple[Path, dict[str, str]]:
    """Files by name -> the expected outcome: 'ok' or the error type."""
    folder = tmp_path_factory.mktemp("hostile")
    im = photo(shared).resize((320, 240))
    good_jpeg = jpeg_bytes(im)
    rgba = im.convert("RGBA")
    rgba.putalpha(128)
    files = {
        "zero.jpg": (b"", "EmptyFile"),
        "random.jpg": (np.random.default_rng(1).bytes(4096), "NotAnImage"),
        "text.jpg": (b"hello, I am a text file\n" * 10, "NotAnImage"),
        "truncated_10.jpg": (good_jpeg[: len(good_jpeg) // 10], "CorruptImage"),
        "truncated_50.jpg": (good_jpeg[: len(good_jpeg) // 2], "CorruptImage"),
        "truncated_99.jpg": (good_jpeg[: len(good_jpeg) * 99 // 100], "CorruptImage"),
        "bad_crc.png": (_broken_crc_png(im), "CorruptImage"),
        "bomb.png": (_png_declaring(30000, 30000), "ImageTooLarge"),
        "huge_file.bmp": (b"BM" + bytes(MAX_BYTES + 10), "FileTooLarge"),
        "animated.gif": (_animated_gif(im), "ok"),
        "gray16.png": (_sixteen_bit_png(im), "ok"),
        "bilevel.png": (_png(im.convert("1")), "ok"),
        "cmyk.jpg": (jpeg_bytes(im.convert("CMYK")), "ok"),
        "gray.jpg": (jpeg_bytes(im.convert("L")), "ok"),
        "rgba.png": (_png(rgba), "ok"),
        "palette_transparent.png": (_palette_with_transparency(im), "ok"),
        "rotated_exif.jpg": (_exif_rotated_jpeg(im), "ok"),
        "with space ünïcödé 日本.jpg": (good_jpeg, "ok"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    (folder / "a_directory.jpg").mkdir()
    expected = {str(folder / name): outcome for name, (_, outcome) in files.items()}
    expected[str(folder / "missing.jpg")] = "NotFound"
    expected[str(folder / "a_directory.jpg")] = "IsADirectory"
    expected["ftp://example.com/image.jpg"] = "UnsupportedScheme"
    expected["gopher://example.com/image.jpg"] = "UnsupportedScheme"
    return folder, expected


def test_every_hostile_input_ends_as_one_row(tmp_path, corpus, tiny_model, labels_file):
    folder, expected = corpus
    manifest = tmp_path / "manifest.jsonl"
    lines = [f'{{"uri": {_json(uri)}, "n": {i}}}' for i, uri in enumerate(expected)]
    lines += ['{"uri": "", "n": 1000}', '{"uri": null, "n": 1001}', "not json at all"]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = tmp_path / "out" / "labels"
    args = ["--input", manifest, "--output", prefix, "--model", tiny_model, "--labels", labels_file]
    assert run_job(*args, "--max-bytes", str(MAX_BYTES)) == 0

    rows = read_output(prefix).to_pylist()
    assert len(rows) == len(lines), "one row per manifest row"
    by_uri = {r["uri"]: r for r in rows if r["n"] is not None and r["n"] < 1000}
    for uri, outcome in expected.items():
        row = by_uri[uri]
        if outcome == "ok":
            assert row["status"] == "ok", (uri, row["error"])
            assert row["top_k"] and row["width"] and row["height"]
        else:
            assert (row["status"], row["error_type"]) == ("error", outcome), (uri, row["error"])
            assert row["error"].split(":")[0], row["error"]
    rotated = by_uri[str(folder / "rotated_exif.jpg")]
    assert (rotated["width"], rotated["height"]) == (240, 320), "EXIF orientation applied"
    empty_rows = [r for r in rows if r["n"] is None or r["n"] >= 1000]
    assert sorted(r["error_type"] for r in empty_rows) == ["BadManifestRow", "EmptyUri", "EmptyUri"]


def test_malformed_manifest_rows_become_error_rows(tmp_path, shared, tiny_model, labels_file):
    photo_path = shared / "images" / "photos" / "hot_dog.jpg"
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text(f"id,uri\n1,{photo_path}\n2,{photo_path},surplus field\n3,{photo_path}\n")
    txt_manifest = tmp_path / "m.txt"
    txt_manifest.write_bytes(str(photo_path).encode() + b"\n/photos/caf\xe9.jpg\n")  # Latin-1, not UTF-8
    prefix = tmp_path / "out" / "labels"
    args = ["--input", csv_manifest, "--input", txt_manifest, "--output", prefix]
    assert run_job(*args, "--model", tiny_model, "--labels", labels_file) == 0
    rows = read_output(prefix).to_pylist()
    assert len(rows) == 5
    outcomes = sorted((r["id"] or 0, r["status"], r["error_type"]) for r in rows)
    assert outcomes == [
        (0, "error", "BadManifestRow"),
        (0, "error", "NotFound"),
        (0, "ok", None),
        (1, "ok", None),
        (3, "ok", None),
    ]
    (bad,) = [r for r in rows if r["error_type"] == "BadManifestRow"]
    assert "surplus field" in bad["error"]


def test_empty_manifest_gives_an_empty_output(tmp_path, tiny_model, labels_file):
    manifest = tmp_path / "empty.txt"
    manifest.write_text("")
    prefix = tmp_path / "out" / "labels"
    assert run_job("--input", manifest, "--output", prefix, "--model", tiny_model, "--labels", labels_file) == 0
    table = read_output(prefix)
    assert table.num_rows == 0 and "top_k" in table.schema.names


def _json(value: str) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
