"""The command line: --help, and one clear line naming the flag for every bad launch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_cli, run_job, shared_dir

PHOTOS = shared_dir() / "images" / "photos"  # an --input that exists and holds images


def test_help_lists_the_job_flags():
    result = subprocess.run([sys.executable, "-m", "beam_pipeline", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--input", "--output", "--model", "--labels", "--top-k", "--resize", "--max-batch-size"):
        assert flag in result.stdout
    usage = " ".join(result.stdout.split("\n\n")[0].split())
    assert " --input INPUT " in usage and " --output OUTPUT " in usage, f"shown as required: {usage}"
    assert "[--model MODEL]" in usage


def test_without_input_or_output_the_launch_names_them(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_job("--top-k", "3")
    assert exit_info.value.code == 2
    missing = "the following arguments are required: --input, --output"
    assert capsys.readouterr().err == f"beam-image-labeller: error: {missing}\n"


@pytest.mark.parametrize(
    "args,flag,words",
    [
        (["--top-k", "0"], "--top-k", "must be >= 1"),
        (["--top_k", "0"], "--top-k", "must be >= 1"),  # each flag is named one way, however it was spelt
        (["--resize", "stretch"], "--resize", "invalid choice"),
        (["--max-bytes", "lots"], "--max-bytes", "expected an integer"),
        (["--max_bytes=lots"], "--max-bytes", "expected an integer"),
    ],
)
def test_bad_values_fail_in_one_line(tmp_path, args, flag, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_job("--input", PHOTOS, "--output", tmp_path / "out", *args)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith(f"beam-image-labeller: error: argument {flag}: {words}"), message


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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top-kk", "3"], "unrecognized argument --top-kk (did you mean --top-k?)"),
        (["--direct_num_worker=2"], "unrecognized argument --direct_num_worker (did you mean --direct_num_workers?)"),
        (["stray"], "unrecognized argument stray"),
    ],
)
def test_a_flag_nobody_defines_stops_the_launch(tmp_path, capsys, extra, message):
    assert run_job("--input", PHOTOS, "--output", tmp_path / "o", *extra) == 2
    assert capsys.readouterr().err.strip() == f"beam-image-labeller: error: {message}"


def test_beams_and_dataflows_own_options_pass_the_flag_check():
    from beam_pipeline.launch.cli import build_parser, unknown_flag

    parser = build_parser()
    argv = ["--input", "x", "--output", "o", "--runner", "DataflowRunner", "--project=p", "--region", "europe-west1"]
    argv += ["--sdk_container_image=img", "--direct_num_workers", "2", "--labels", "l.txt", "--experiments=a,b"]
    _, beam_args = parser.parse_known_args(argv)
    assert unknown_flag(beam_args, parser) is None


def test_a_normal_run_prints_only_the_jobs_own_lines(tmp_path, tiny_model, labels_file):
    # On TensorFlow, whose C++ notices (oneDNN, absl) are the ones to hide; the default runtime prints none.
    # TF_ENABLE_ONEDNN_OPTS=1: TensorFlow enables oneDNN, and says so, by default only on some CPUs.
    common = ["--input", PHOTOS, "--model", tiny_model, "--labels", labels_file, "--backend", "tensorflow"]
    onednn = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    run = run_cli(*common, "--output", tmp_path / "o" / "labels", env=onednn)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("images read: 5  labelled: 5  failed: 0\n")
    noise = [line for line in run.stderr.splitlines() if not line.startswith("labelled ")]
    assert noise == [], "library notices are hidden unless --verbose"
    verbose = run_cli(*common, "--output", tmp_path / "v" / "labels", "--verbose", env=onednn)
    assert verbose.returncode == 0 and "oneDNN" in verbose.stderr
