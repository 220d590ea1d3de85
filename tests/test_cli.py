"""The command line: --help, and one clear line naming the flag for every bad launch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_job, shared_dir

PHOTOS = shared_dir() / "images" / "photos"  # an --input that exists and holds images


def test_help_lists_the_job_flags():
    result = subprocess.run([sys.executable, "-m", "beam_pipeline", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--input", "--output", "--model", "--labels", "--top-k", "--resize", "--max-batch-size"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "args,flag,words",
    [
        (["--top-k", "0"], "--top-k", "must be >= 1"),
        (["--resize", "stretch"], "--resize", "invalid choice"),
        (["--max-bytes", "lots"], "--max-bytes", "expected an integer"),
    ],
)
def test_bad_values_fail_in_one_line(tmp_path, args, flag, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_job("--input", PHOTOS, "--output", tmp_path / "out", *args)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and flag in message and words in message


def _launch_error(capsys, *args) -> str:
    assert run_job(*args) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message, message
    return message


def test_missing_input(tmp_path, tiny_model, labels_file, capsys):
    message = _launch_error(
        capsys, "--input", tmp_path / "nope", "--output", tmp_path / "o", "--model", tiny_model, "--labels", labels_file
    )
    assert "--input" in message and "nope" in message


def test_unknown_model_scheme(tmp_path, labels_file, capsys):
    message = _launch_error(
        capsys, "--input", PHOTOS, "--output", tmp_path / "o", "--model", "ftp2://x/model", "--labels", labels_file
    )
    assert "--model" in message and "ftp2" in message


def test_unreadable_labels(tmp_path, tiny_model, capsys):
    message = _launch_error(
        capsys,
        "--input",
        PHOTOS,
        "--output",
        tmp_path / "o",
        "--model",
        tiny_model,
        "--labels",
        tmp_path / "missing.txt",
    )
    assert "--labels" in message and "missing.txt" in message


def test_label_count_must_match_the_model(tmp_path, tiny_model, capsys):
    short = tmp_path / "ten.txt"
    short.write_text("\n".join(f"class {i}" for i in range(10)))
    message = _launch_error(
        capsys, "--input", PHOTOS, "--output", tmp_path / "o", "--model", tiny_model, "--labels", short
    )
    assert "--labels" in message and "10 labels" in message and "1001" in message


def test_unwritable_output(tmp_path, tiny_model, labels_file, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    message = _launch_error(
        capsys,
        "--input",
        PHOTOS,
        "--output",
        blocker / "sub" / "labels",
        "--model",
        tiny_model,
        "--labels",
        labels_file,
    )
    assert "--output" in message
