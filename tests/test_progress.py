"""Progress lines while a local run runs: counts, total, rate and ETA; plain lines off a terminal; --quiet."""

from __future__ import annotations

import io
import re
import time

from conftest import label

from beam_pipeline.launch import progress

WAIT_SECONDS = 30  # for lines printed every 0.01 s: a bound on a hang, not a timing assertion


def test_format_with_and_without_a_known_total():
    tally = progress.Tally()
    tally.reset(inputs=1, expected_rows=2000)
    for i in range(1200):
        tally.add_written(failed=i < 58)
    assert progress.format_progress(tally, 5.0) == "labelled 1,200/2,000  (58 failed)  240 images/s  ETA 3 s"
    tally.reset(inputs=1, expected_rows=None)
    tally.add_input()
    tally.add_written(failed=False)
    assert progress.format_progress(tally, 2.0) == "labelled 1  (0 failed)  0 images/s"
    tally.finish_input()
    assert progress.format_progress(tally, 2.0).startswith("labelled 1/1 ")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_updating_line_on_a_terminal_plain_lines_elsewhere():
    tally = progress.Tally()
    tally.reset(inputs=0, expected_rows=3)
    for stream in (io.StringIO(), _Terminal()):
        with progress.ProgressReporter(tally, interval=0.01, stream=stream):
            for _ in range(3):
                tally.add_written(failed=False)
            deadline = time.monotonic() + WAIT_SECONDS  # a reporter that never prints fails here, never hangs
            while stream.getvalue().count("labelled") < 2:
                assert time.monotonic() < deadline, f"fewer than 2 progress lines in {WAIT_SECONDS} s"
                time.sleep(0.005)
        text = stream.getvalue()
        if isinstance(stream, _Terminal):
            assert text.startswith("\r\x1b[Klabelled ") and text.endswith("\n") and text.count("\n") == 1
        else:
            assert all(line.startswith("labelled ") for line in text.splitlines()) and "\r" not in text


def test_a_local_run_prints_progress_and_quiet_turns_it_off(
    tmp_path, shared, tiny_model, labels_file, capsys, monkeypatch
):
    monkeypatch.setattr(progress, "INTERVAL_SECONDS", 0.01)
    photos = shared / "images" / "photos"
    assert label(photos, tmp_path / "a" / "labels", tiny_model, labels_file) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("labelled ")]
    assert lines and all(
        re.fullmatch(r"labelled \d/5  \(0 failed\)  [\d,]+ images/s(  ETA [\d,]+ s)?", x) for x in lines
    )
    assert label(photos, tmp_path / "b" / "labels", tiny_model, labels_file, "--quiet") == 0
    assert "labelled " not in capsys.readouterr().err
