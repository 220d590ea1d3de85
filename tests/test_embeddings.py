"""--embeddings on the real models: the vector feeding each model's classifier, from the same forward pass, against
the shared feature-vector model (the ground truth) on the same pixels; labels unchanged; DuckDB reads it back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import label, read_output, run_job
from test_content_identity import COPIES, corpus_with_copies

from beam_pipeline.decode.preprocess import DecodeSpec, decode_image
from beam_pipeline.model import load, resolve
from beam_pipeline.records import EMBEDDING, output_schema

SIZE = 1024
# The float backends compute the feature-vector model's own function: cosine >= 0.9999 on every image.
FLOAT_COSINE = 0.9999
# The 8-bit model's vector is its own (quantised weights and activations): measured on the 100-image sample, cosine
# to the float feature vector min 0.733, mean 0.870 (docs/embeddings.md); its own classifier applied to it gives its
# labels (the consistency check below), so the vector is the right tensor, dequantised right.
TFLITE_MIN_COSINE, TFLITE_MEAN_COSINE = 0.70, 0.85


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared) -> tuple[Path, dict[str, str]]:
    """The sample plus copies, and an empty file (an error row); (folder, copy -> original)."""
    folder = tmp_path_factory.mktemp("corpus") / "images"
    copies = corpus_with_copies(shared / "images" / "imagenet-sample-100", folder)
    (folder / "empty.jpg").write_bytes(b"")
    return folder, copies


@pytest.fixture(scope="module")
def feature_vectors(shared, corpus) -> dict[str, np.ndarray]:
    """The shared feature-vector SavedModel, called by TensorFlow on the pixels the pipeline decodes: name -> vector."""
    from beam_pipeline.model.backends.tensorflow import import_tensorflow

    tf = import_tensorflow()
    folder, _ = corpus
    model = tf.saved_model.load(str(shared / "models" / "mobilenet_v3_small_100_224_feature_vector"))
    paths = sorted(p for p in folder.iterdir() if p.stat().st_size)
    pixels = np.stack([decode_image(p.read_bytes(), DecodeSpec((224, 224)))[0] for p in paths])
    vectors = model.signatures["serving_default"](tf.constant(pixels.astype(np.float32) / 255))["feature_vector"]
    return dict(zip([p.name for p in paths], vectors.numpy()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus, float_model, tflite_model, labels_file):
    """The corpus labelled once per (model, backend, --embeddings); the output prefix of each."""
    folder, _ = corpus
    done: dict[tuple, Path] = {}

    def run(kind: str, backend: str | None, embeddings: bool = True) -> Path:
        key = (kind, backend, embeddings)
        if key not in done:
            prefix = tmp_path_factory.mktemp("run") / "labels"
            extra = (["--backend", backend] if backend else []) + (["--embeddings"] if embeddings else [])
            model = float_model if kind == "float" else tflite_model
            assert label(folder, prefix, model, labels_file, *extra) == 0
            done[key] = prefix
        return done[key]

    return run


def _vectors(table: pa.Table) -> dict[str, np.ndarray]:
    rows = table.select(["uri", EMBEDDING]).to_pylist()
    return {Path(r["uri"]).name: np.asarray(r[EMBEDDING], np.float32) for r in rows if r[EMBEDDING] is not None}


@pytest.mark.parametrize("backend", [None, "openvino", "tensorflow"], ids=["default", "openvino", "tensorflow"])
def test_float_embeddings_are_the_feature_vector_models(runs, feature_vectors, backend):
    table = read_output(runs("float", backend))
    assert table.schema.field(EMBEDDING).type == pa.list_(pa.float32())
    vectors = _vectors(table)
    assert {v.shape for v in vectors.values()} == {(SIZE,)}
    assert sorted(vectors) == sorted(feature_vectors), "an embedding on every ok row"
    names = sorted(vectors)
    similarity = cosine(np.stack([vectors[n] for n in names]), np.stack([feature_vectors[n] for n in names]))
    print(f"{backend or 'default'}: cosine min {similarity.min():.7f}")
    assert similarity.min() >= FLOAT_COSINE
    errors = table.filter(pa.compute.equal(table["status"], "error")).to_pylist()
    assert [(Path(r["uri"]).name, r[EMBEDDING]) for r in errors] == [("empty.jpg", None)]


def test_labels_are_unchanged_by_embeddings(runs):
    def labels(table: pa.Table) -> dict:
        return {r["uri"]: (r["status"], r["top_k"]) for r in table.select(["uri", "status", "top_k"]).to_pylist()}

    assert labels(read_output(runs("float", None))) == labels(read_output(runs("float", None, embeddings=False)))
    assert EMBEDDING not in read_output(runs("float", None, embeddings=False)).schema.names


def test_tflite_embeddings_within_their_documented_bound(runs, feature_vectors, float_model):
    table = read_output(runs("tflite", "litert"))
    vectors = _vectors(table)
    names = sorted(feature_vectors)
    ours = np.stack([vectors[n] for n in names])
    similarity = cosine(ours, np.stack([feature_vectors[n] for n in names]))
    print(f"litert uint8: cosine min {similarity.min():.3f} mean {similarity.mean():.3f}")
    assert similarity.min() >= TFLITE_MIN_COSINE and similarity.mean() >= TFLITE_MEAN_COSINE
    # The vector is what the 8-bit model's classifier reads: the (float) classifier weights applied to it give the
    # 8-bit model's own top-1 on almost every image.
    from beam_pipeline.model.backends.tensorflow import import_tensorflow

    variables = {v.name: v.numpy() for v in import_tensorflow().saved_model.load(float_model).variables}
    weights = next(a for k, a in variables.items() if "Logits/Conv2d_1c_1x1/weights" in k).reshape(SIZE, -1)
    biases = next(a for k, a in variables.items() if "Logits/Conv2d_1c_1x1/biases" in k)
    top1 = {Path(r["uri"]).name: r["top_k"][0]["class_id"] for r in table.to_pylist() if r["top_k"]}
    agree = np.mean((ours @ weights + biases).argmax(axis=1) == np.array([top1[n] for n in names]))
    assert agree >= 0.95


def test_tflite_embeddings_agree_between_litert_and_tensorflow(shared, tflite_model):
    photos = sorted((shared / "images" / "photos").glob("*.[jb][pm][gp]"))
    images = np.stack([decode_image(p.read_bytes(), DecodeSpec((224, 224)))[0] for p in photos])
    litert, tf_lite = (
        load.load(resolve.resolve(tflite_model, backend), embeddings=True).infer(images)
        for backend in ("litert", "tensorflow")
    )
    assert litert.embeddings.shape == (len(photos), SIZE)
    np.testing.assert_allclose(litert.embeddings, tf_lite.embeddings, atol=0.02)  # a quantisation step is 0.0195
    np.testing.assert_array_equal(litert.scores.argmax(axis=1), tf_lite.scores.argmax(axis=1))


@pytest.mark.parametrize("backend", ["openvino", "tensorflow"])
def test_a_feature_vector_model_writes_embeddings_and_no_labels(tmp_path, shared, backend):
    model = shared / "models" / "mobilenet_v3_small_100_224_feature_vector"
    photos = shared / "images" / "photos"
    # No --embeddings and no --labels: the model has no classes, so neither applies (the default label URL is
    # never fetched).
    args = ["--input", photos, "--output", tmp_path / "labels", "--model", model, "--backend", backend]
    assert run_job(*args) == 0
    table = read_output(tmp_path / "labels")
    assert table.schema == output_schema(embedding_size=SIZE)
    rows = table.to_pylist()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert all(r["label"] is None and r["score"] is None and r["top_k"] is None for r in rows)
    images = np.stack(
        [decode_image((photos / Path(r["uri"]).name).read_bytes(), DecodeSpec((224, 224)))[0] for r in rows]
    )
    direct = load.load(resolve.resolve(str(model), "tensorflow")).infer(images).embeddings
    assert cosine(np.stack([r[EMBEDDING] for r in rows]), direct).min() >= FLOAT_COSINE


def table_columns(path: str) -> list[str]:
    """The leaf columns of a Parquet file, in order."""
    return [c.path for c in pq.ParquetFile(path).schema]


NEAREST = """
    WITH e AS (SELECT uri, embedding::FLOAT[1024] AS v FROM read_parquet($files) WHERE embedding IS NOT NULL)
    SELECT a.uri, arg_max(b.uri, array_cosine_similarity(a.v, b.v)) AS nearest,
           max(array_cosine_similarity(a.v, b.v)) AS cosine
    FROM e AS a JOIN e AS b ON a.uri <> b.uri GROUP BY a.uri ORDER BY a.uri
"""


def test_duckdb_finds_each_copy_nearest_to_its_original(runs, corpus):
    _, copies = corpus
    prefix = runs("float", None)
    files = [str(p) for p in sorted(prefix.parent.glob(prefix.name + "-*.parquet"))]
    column = pq.ParquetFile(files[0]).metadata.row_group(0).column(len(table_columns(files[0])) - 1)
    assert column.path_in_schema == "embedding.list.element" and "BYTE_STREAM_SPLIT" in column.encodings
    typeof = "SELECT typeof(embedding::FLOAT[1024]) FROM read_parquet($files) WHERE embedding IS NOT NULL LIMIT 1"
    assert duckdb.execute(typeof, {"files": files}).fetchone() == ("FLOAT[1024]",)
    nearest = {
        Path(uri).name: (Path(other).name, similarity)
        for uri, other, similarity in duckdb.execute(NEAREST, {"files": files}).fetchall()
    }
    for copy, original in copies.items():
        assert nearest[copy][0] == original
        assert nearest[copy][1] > (0.9999 if copy.startswith("copy-") else 0.9)
    # Duplicates by content: each byte-identical copy and its original, and nothing else.
    groups = duckdb.execute(
        "SELECT list(uri ORDER BY uri) FROM read_parquet($files) WHERE content_sha256 IS NOT NULL "
        "GROUP BY content_sha256 HAVING count(*) > 1",
        {"files": files},
    ).fetchall()
    assert sorted(sorted(Path(u).name for u in g) for (g,) in groups) == sorted(
        sorted([c, o]) for c, o in copies.items() if c.startswith("copy-")
    )
    assert len(groups) == COPIES
    for (group,) in groups:
        assert len({hashlib.sha256(Path(u).read_bytes()).hexdigest() for u in group}) == 1
    assert duckdb.execute(
        "SELECT count(*), min(len(embedding)), max(len(embedding)) FROM read_parquet($files) WHERE status = 'ok'",
        {"files": files},
    ).fetchone() == (100 + 2 * COPIES, SIZE, SIZE)


@pytest.mark.parametrize("earlier", ["files", "table"])
def test_iceberg_gains_the_columns_and_skip_labelled_wants_embeddings(
    tmp_path, shared, float_model, labels_file, earlier
):
    """A table from before content identity gains content_sha256 and phash on the first run that writes them and
    `embedding` on the first run with --embeddings; --skip-labelled (over the shards, or naming the table) with
    --embeddings labels again the rows that have no embedding, and then skips them."""
    from pyiceberg.catalog import load_catalog

    catalog_spec = f"type=sql,uri=sqlite:///{tmp_path}/catalog.db,warehouse=file://{tmp_path}/warehouse"
    catalog = load_catalog("default", **dict(item.split("=", 1) for item in catalog_spec.split(",")))
    catalog.create_namespace("vision")
    older = pa.schema([f for f in output_schema() if f.name not in ("content_sha256", "phash")])
    catalog.create_table("vision.labels", schema=older)
    photos, out = shared / "images" / "photos", tmp_path / "out"
    skip = f"{out}/*/*" if earlier == "files" else "vision.labels"
    common = ["--iceberg-catalog", catalog_spec, "--iceberg-table", "vision.labels", "--skip-labelled", skip]

    assert label(photos, out / "1" / "labels", float_model, labels_file, *common) == 0
    table = catalog.load_table("vision.labels")
    names = [f.name for f in table.schema().fields]
    assert names[-2:] == ["content_sha256", "phash"] and EMBEDDING not in names

    assert label(photos, out / "2" / "labels", float_model, labels_file, *common, "--embeddings") == 0
    second = read_output(out / "2" / "labels")
    assert second.num_rows == 5, "rows labelled without embeddings are not done for a run that wants them"
    table = catalog.load_table("vision.labels")
    assert [f.name for f in table.schema().fields][-1] == EMBEDDING
    rows = table.scan().to_arrow().to_pylist()
    assert len(rows) == 10
    with_vectors = [r for r in rows if r[EMBEDDING] is not None]
    assert len(with_vectors) == 5 and {len(r[EMBEDDING]) for r in with_vectors} == {SIZE}
    assert all(r["content_sha256"] and r["phash"] for r in rows)
    assert len(table.snapshots()) == 2

    assert label(photos, out / "3" / "labels", float_model, labels_file, *common, "--embeddings") == 0
    assert read_output(out / "3" / "labels").num_rows == 0, "every row now has its embedding"
    # A run without --embeddings counts rows of either kind as done.
    assert label(photos, out / "4" / "labels", float_model, labels_file, *common) == 0
    assert read_output(out / "4" / "labels").num_rows == 0
