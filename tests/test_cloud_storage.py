"""Whole runs with input, model, labels and output in a bucket: gs:// on a local GCS emulator, s3:// on moto's server.

Each job runs in a new process (`python -m beam_pipeline`) on the default local runner, with only the environment a
user would set to point the clients at the emulator. Reads go through fsspec (gcsfs, s3fs); the output is written
by Beam's own filesystems (google-cloud-storage, boto3), which is why the GCS emulator must also serve the JSON
API's batch and rewrite calls (gcp-storage-emulator does; fake-gcs-server answers a batch request with a
non-multipart body, which google-cloud-storage rejects).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from images import jpeg_bytes, photo
from proxies import Recorded, recording_proxy

IMAGES = 24
BUCKET = "labeller-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bucket_files(tiny_model: str, labels_file: str, shared: Path) -> dict[str, bytes]:
    """What the run reads, by object name: images, the SavedModel's files and the label file."""
    base = photo(shared).resize((320, 240))
    files = {f"images/img_{i:03d}.jpg": jpeg_bytes(base.rotate(15 * i)) for i in range(IMAGES)}
    files["images/empty.jpg"] = b""  # GCS and S3 answer a ranged GET of an empty object with 416
    model = Path(tiny_model)
    files.update({f"models/tiny/{p.relative_to(model)}": p.read_bytes() for p in model.rglob("*") if p.is_file()})
    files["meta/ImageNetLabels.txt"] = Path(labels_file).read_bytes()
    return files


def _check_run(success: dict, shards: list[bytes], scheme: str, proxy: Recorded) -> None:
    """`_SUCCESS` says ok with every image, the shards hold each image once, labelled (the empty object as an
    EmptyFile row), and each image was read by one GET of at most --max-bytes + 1 bytes, nothing else."""
    assert success["status"] == "ok", success["problems"]
    assert success["rows"] == IMAGES + 1 and success["rows_in"] == IMAGES + 1
    assert success["model"] == f"{scheme}://{BUCKET}/models/tiny"
    assert success["output_prefix"].startswith(f"{scheme}://{BUCKET}/labels/")
    rows = {r["uri"]: r for r in pa.concat_tables([pq.read_table(io.BytesIO(data)) for data in shards]).to_pylist()}
    empty = rows.pop(f"{scheme}://{BUCKET}/images/empty.jpg")
    assert (empty["status"], empty["error_type"]) == ("error", "EmptyFile")
    assert sorted(rows) == sorted(f"{scheme}://{BUCKET}/images/img_{i:03d}.jpg" for i in range(IMAGES))
    assert {r["status"] for r in rows.values()} == {"ok"} and all(r["label"] for r in rows.values())
    reads = [r for r in proxy.to("images/") if "prefix=" not in r[1] and "list-type" not in r[1]]
    assert sorted(path.split("images/")[1].split("?")[0] for _, path, _ in reads) == sorted(
        [f"img_{i:03d}.jpg" for i in range(IMAGES)] + ["empty.jpg"]
    ), "one request per image"
    assert {(method, byte_range) for method, _, byte_range in reads} == {("GET", "bytes=0-50000000")}


# gs:// ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def token_endpoint() -> Iterator[str]:
    """An OAuth2 token endpoint on 127.0.0.1 that grants any request, for the service-account key below.

    Beam's GCS client asks google.auth for credentials and, finding none, retries for ~30 s before going anonymous;
    with a key whose token_uri is this endpoint it authenticates at once, as on Dataflow, and nothing leaves the host.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()


def service_account_key(path: Path, token_uri: str) -> Path:
    """A service-account key file (a fresh RSA key) whose tokens come from `token_uri`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "labeller-test",
        "private_key_id": "test",
        "private_key": pem.decode(),
        "client_email": "labeller@labeller-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return path


@pytest.fixture
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator on 127.0.0.1, in memory, with an empty bucket; yields its URL."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # a warning per response otherwise
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_gs_input_model_and_output(tmp_path, gcs_emulator, tiny_model, labels_file, shared):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="labeller-test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator}
    )
    bucket = client.bucket(BUCKET)
    for name, data in _bucket_files(tiny_model, labels_file, shared).items():
        bucket.blob(name).upload_from_string(data)

    with token_endpoint() as token_uri, recording_proxy(gcs_emulator) as proxy:
        env = {
            "STORAGE_EMULATOR_HOST": proxy.url,  # google-cloud-storage (Beam's gs filesystem) and gcsfs
            "GOOGLE_APPLICATION_CREDENTIALS": str(service_account_key(tmp_path / "key.json", token_uri)),
            "GOOGLE_CLOUD_PROJECT": "labeller-test",
            "NO_GCE_CHECK": "True",  # google.auth never probes the GCE metadata server
            "FSSPEC_GCS_TOKEN": "anon",  # gcsfs's `token` (fsspec reads FSSPEC_<PROTOCOL>_<OPTION>)
            # gcsfs >= 2025.10 asks the Storage Control API (gRPC, not served by emulators) for each bucket's
            # layout and waits for its 60 s timeout; this switch, read when gcsfs is imported, turns that off.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }
        result = run_cli(
            "--input", f"gs://{BUCKET}/images/",
            "--output", f"gs://{BUCKET}/labels/dt={{date}}/",
            "--model", f"gs://{BUCKET}/models/tiny",
            "--labels", f"gs://{BUCKET}/meta/ImageNetLabels.txt",
            env=env,
        )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    blobs = {blob.name: blob for blob in client.list_blobs(BUCKET, prefix="labels/dt=")}
    (success_name,) = [name for name in blobs if name.endswith("/_SUCCESS")]
    success = json.loads(blobs[success_name].download_as_bytes())
    shards = [blob.download_as_bytes() for name, blob in sorted(blobs.items()) if name.endswith(".parquet")]
    assert not [name for name in blobs if "/_staging-" in name], "the staging folder is removed"
    _check_run(success, shards, "gs", proxy)


# s3:// ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_input_model_and_output(s3_server, tiny_model, labels_file, shared):
    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never probe the EC2 instance metadata service for credentials
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    for name, data in _bucket_files(tiny_model, labels_file, shared).items():
        s3.put_object(Bucket=BUCKET, Key=name, Body=data)

    with recording_proxy(s3_server) as proxy:
        # botocore (under both s3fs and Beam's S3 filesystem) takes its endpoint from AWS_ENDPOINT_URL_S3.
        env["AWS_ENDPOINT_URL_S3"] = proxy.url
        result = run_cli(
            "--input", f"s3://{BUCKET}/images/",
            "--output", f"s3://{BUCKET}/labels/dt={{date}}/",
            "--model", f"s3://{BUCKET}/models/tiny",
            "--labels", f"s3://{BUCKET}/meta/ImageNetLabels.txt",
            env=env,
        )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="labels/dt=").get("Contents", [])]
    (success_key,) = [key for key in keys if key.endswith("/_SUCCESS")]
    success = json.loads(s3.get_object(Bucket=BUCKET, Key=success_key)["Body"].read())
    shards = [s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in sorted(keys) if key.endswith(".parquet")]
    assert not [key for key in keys if "/_staging-" in key], "the staging folder is removed"
    _check_run(success, shards, "s3", proxy)
