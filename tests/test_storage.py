"""Flaky storage is retried, private hosts are refused, failures are permanent or transient, and a run with too
many failures exits non-zero."""

from __future__ import annotations

import collections
import os
import socket

import fsspec
import pytest
from conftest import read_output, run_job, serve_folder
from fsspec.implementations.memory import MemoryFileSystem

from beam_pipeline import errors
from beam_pipeline.decode import reading

SCHEMES = "file,memory,flaky,http"


class FlakyFileSystem(MemoryFileSystem):
    """A memory filesystem whose first `failures` opens of each path raise ConnectionResetError."""

    protocol = "flaky"
    failures = 2
    opens: collections.Counter = collections.Counter()

    @classmethod
    def _strip_protocol(cls, path):
        return MemoryFileSystem._strip_protocol(path.removeprefix("flaky://"))

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode:
            return super()._open(path, mode, **kwargs)
        self.opens[path] += 1
        if self.opens[path] <= self.failures:
            raise ConnectionResetError(f"simulated reset #{self.opens[path]} reading {path}")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def flaky(shared):
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.opens.clear()
    fs = fsspec.filesystem("flaky")
    fs.pipe("/photos/hot_dog.jpg", (shared / "images" / "photos" / "hot_dog.jpg").read_bytes())
    yield fs
    fs.rm("/photos", recursive=True)


def test_transient_errors_are_retried_and_missing_files_are_not(tmp_path, flaky, monkeypatch, tiny_model, labels_file):
    monkeypatch.setattr(reading, "BACKOFF_SECONDS", 0.01)
    manifest = tmp_path / "m.txt"
    manifest.write_text("flaky://photos/hot_dog.jpg\nflaky://photos/missing.jpg\n")
    prefix = tmp_path / "out" / "labels"
    args = ["--input", manifest, "--output", prefix, "--model", tiny_model, "--labels", labels_file]
    assert run_job(*args, "--allowed-schemes", SCHEMES, "--read-retries", "3") == 0
    rows = {r["uri"]: r for r in read_output(prefix).to_pylist()}
    assert rows["flaky://photos/hot_dog.jpg"]["status"] == "ok"
    assert rows["flaky://photos/missing.jpg"]["error_type"] == "NotFound"
    assert FlakyFileSystem.opens["/photos/hot_dog.jpg"] == 3, "two failures, then success"


def test_retries_are_bounded(tmp_path, flaky, monkeypatch, tiny_model, labels_file):
    monkeypatch.setattr(reading, "BACKOFF_SECONDS", 0.01)
    manifest = tmp_path / "m.txt"
    manifest.write_text("flaky://photos/hot_dog.jpg\n")
    prefix = tmp_path / "out" / "labels"
    args = ["--input", manifest, "--output", prefix, "--model", tiny_model, "--labels", labels_file]
    assert run_job(*args, "--allowed-schemes", SCHEMES, "--read-retries", "1") == 0
    (row,) = read_output(prefix).to_pylist()
    assert row["error_type"] == "ReadError" and "ConnectionResetError" in row["error"] and "2 attempts" in row["error"]
    assert FlakyFileSystem.opens["/photos/hot_dog.jpg"] == 2


@pytest.fixture
def local_http_server(shared):
    """Serves ../shared/images/photos on 127.0.0.1 (a loopback address: private by the job's rules)."""
    with serve_folder(shared / "images" / "photos") as (url, _):
        yield url


def test_private_http_hosts_are_refused_unless_allowed(tmp_path, local_http_server, tiny_model, labels_file):
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{local_http_server}/hot_dog.jpg\nhttp://169.254.169.254/latest/meta-data/\n")
    base = ["--input", manifest, "--model", tiny_model, "--labels", labels_file]

    assert run_job(*base, "--output", tmp_path / "refused" / "labels") == 0
    refused = read_output(tmp_path / "refused" / "labels").to_pylist()
    assert [r["error_type"] for r in refused] == ["BlockedHost", "BlockedHost"]

    assert (
        run_job(*base, "--output", tmp_path / "allowed" / "labels", "--allow-private-hosts", "--read-retries", "0") == 0
    )
    allowed = {r["uri"]: r for r in read_output(tmp_path / "allowed" / "labels").to_pylist()}
    assert allowed[f"{local_http_server}/hot_dog.jpg"]["status"] == "ok"


def test_max_error_fraction_writes_every_row_then_fails(tmp_path, shared, tiny_model, labels_file, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jpg").write_bytes((shared / "images" / "photos" / "hot_dog.jpg").read_bytes())
    for i in range(3):
        (folder / f"bad{i}.jpg").write_bytes(b"not an image")
    prefix = tmp_path / "out" / "labels"
    args = ["--input", folder, "--output", prefix, "--model", tiny_model, "--labels", labels_file]
    assert run_job(*args, "--max-error-fraction", "0.5") == 1
    assert "75.0% of inputs failed" in capsys.readouterr().err
    assert read_output(prefix).num_rows == 4
    assert run_job(*args, "--max-error-fraction", "0.8", "--overwrite") == 0


def test_uri_scheme_check_is_unit_level():
    with pytest.raises(Exception) as info:
        reading.read_image_bytes("ftp://x/y.jpg", reading.ReadPolicy(max_bytes=10, allowed_schemes=("file",)))
    assert getattr(info.value, "error_type", None) == "UnsupportedScheme"


def test_a_read_still_failing_transiently_after_its_retries_is_a_transient_read_error(flaky, monkeypatch):
    monkeypatch.setattr(reading, "BACKOFF_SECONDS", 0.01)
    with pytest.raises(errors.ImageInputError) as info:
        policy = reading.ReadPolicy(max_bytes=10**7, allowed_schemes=("flaky",), retries=1)
        reading.read_image_bytes("flaky://photos/hot_dog.jpg", policy)
    assert info.value.error_type == "ReadError" and info.value.transient is True
    assert errors.is_transient(info.value, errors.error_type_of(info.value, while_reading=True))


class ReadTimeoutError(Exception):
    """Named like botocore's, which is no TimeoutError."""


class ServiceUnavailable(Exception):
    status = 503


class BadRequest(Exception):
    status = 400


PERMANENT_TYPES = [
    "BadManifestRow", "EmptyUri", "UnsupportedScheme", "BlockedHost", "NotFound", "IsADirectory", "FileTooLarge",
    "EmptyFile", "NotAnImage", "ImageTooLarge", "CorruptImage",
]  # fmt: skip


@pytest.mark.parametrize("error_type", PERMANENT_TYPES)
def test_input_errors_are_permanent(error_type):
    assert not errors.is_transient(errors.ImageInputError(error_type, "x"), error_type)


@pytest.mark.parametrize(
    ("exc", "error_type", "transient"),
    [
        (FileNotFoundError("x"), "NotFound", False),
        (IsADirectoryError("x"), "IsADirectory", False),
        (ValueError("broken PNG"), "CorruptImage", False),
        (RuntimeError("OOM in the model"), "InferenceError", True),
        (KeyError("bug"), "UnexpectedError", True),
        (errors.ImageInputError("ReadError", "forbidden (HTTP 403)", transient=False), "ReadError", False),
        (
            errors.ImageInputError("ReadError", "redirect not followed (HTTP 302 to /x)", transient=False),
            "ReadError",
            False,
        ),
        (errors.ImageInputError("ReadError", "timed out (2 attempts)", transient=True), "ReadError", True),
        (errors.ImageInputError("ReadError", "HTTP 503 Service Unavailable", transient=True), "ReadError", True),
        (PermissionError("denied"), "ReadError", False),
        (OSError("Forbidden: bucket/key"), "ReadError", False),
        (TimeoutError(), "ReadError", True),
        (ReadTimeoutError(), "ReadError", True),
        (ConnectionResetError(), "ReadError", True),
        (ConnectionRefusedError(), "ReadError", True),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "ReadError", True),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "ReadError", False),
        (ServiceUnavailable(), "ReadError", True),
        (BadRequest(), "ReadError", False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_row_level_transience(exc, error_type, transient):
    assert errors.is_transient(exc, error_type) is transient


def test_file_is_not_read_on_remote_workers_unless_named():
    from beam_pipeline.launch.job import default_schemes

    assert "file" in default_schemes(local=True)
    assert "file" not in default_schemes(local=False) and "gs" in default_schemes(local=False)


@pytest.mark.parametrize("size, too_large", [(999, False), (1000, False), (1001, True)])
def test_a_local_file_is_read_whole_up_to_max_bytes(tmp_path, size, too_large):
    path = tmp_path / "image.jpg"
    path.write_bytes(b"x" * size)
    policy = reading.ReadPolicy(max_bytes=1000, allowed_schemes=("file",))
    if too_large:
        with pytest.raises(errors.ImageInputError, match="over --max-bytes"):
            reading.read_image_bytes(str(path), policy)
    else:
        assert reading.read_image_bytes(str(path), policy) == b"x" * size


def test_a_local_file_that_reports_no_size_is_read_up_to_the_limit():
    read_end, write_end = os.pipe()  # a pipe's st_size is 0, as /proc files' are
    os.write(write_end, b"y" * 3000)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        assert os.fstat(f.fileno()).st_size == 0
        assert reading._read_local(f, 5000) == b"y" * 3000
    read_end, write_end = os.pipe()
    os.write(write_end, b"y" * 3000)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        assert len(reading._read_local(f, 1000)) == 1001, "one byte past the limit, so the caller refuses it"
