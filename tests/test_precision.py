"""--precision: f32 by default, bf16 on openvino where the CPU has bf16 instructions, a launch error elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import label, shared_dir

from beam_pipeline.launch import cli, job
from beam_pipeline.model import load, resolve
from beam_pipeline.model.ref import PrecisionError

SHARED = shared_dir()
PHOTOS = SHARED / "images" / "photos"
# Paths, not the float_model fixture: the checks below fail before any model is read, so these tests stay fast.
FLOAT_MODEL = str(SHARED / "models" / "mobilenet_v3_small_100_224_float")
TFLITE_MODEL = str(SHARED / "models" / "mobilenet_v3_small_100_224_uint8.tflite")
LABELS = str(SHARED / "labels" / "ImageNetLabels.txt")


def _cpu_has_bf16() -> bool:
    import openvino as ov
    import openvino.properties.device as device

    return "BF16" in ov.Core().get_property("CPU", device.capabilities)


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """As on a CPU without AMX or AVX512_BF16: the capability bf16 needs is one OpenVINO's CPU plugin never lists."""
    from beam_pipeline.model.backends import openvino as openvino_backend

    monkeypatch.setitem(openvino_backend.NEEDED_CAPABILITY, "bf16", "NO_SUCH_CAPABILITY")


def _launch_error(capsys, *args) -> str:
    assert label(PHOTOS, *args) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "model,backend,runtime",
    [
        (FLOAT_MODEL, "tensorflow", "tensorflow"),
        (TFLITE_MODEL, None, "litert"),
        (TFLITE_MODEL, "tensorflow", "tensorflow"),
    ],
)
def test_bf16_on_another_backend_is_a_launch_error(tmp_path, capsys, model, backend, runtime):
    args = [tmp_path / "o", model, LABELS, "--precision", "bf16", *(["--backend", backend] if backend else [])]
    message = _launch_error(capsys, *args)
    expected = f"error: argument --precision: bf16 is for --backend openvino; this model runs on {runtime}"
    assert message.endswith(expected), message


def test_bf16_on_a_cpu_without_it_is_a_launch_error(tmp_path, capsys, cpu_without_bf16):
    message = _launch_error(capsys, tmp_path / "o", FLOAT_MODEL, LABELS, "--precision", "bf16")
    assert "error: argument --precision: bf16 needs a CPU with AMX or AVX512_BF16; this one (" in message, message
    assert message.endswith(") has neither"), message


def test_an_unknown_precision_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        label(PHOTOS, tmp_path / "o", FLOAT_MODEL, LABELS, "--precision", "fp16")
    message = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "\n" not in message, message
    assert message.endswith("error: argument --precision: invalid choice: 'fp16' (choose from 'f32', 'bf16')")


@pytest.mark.slow  # compiles the float model with OpenVINO
def test_remote_workers_check_bf16_on_their_own_cpu(tmp_path, cpu_without_bf16):
    """Launching for remote workers checks the model in f32 (this machine's CPU is not theirs); the ModelRef they get
    still says bf16, and a worker whose CPU lacks it fails its load with the same message."""
    flags, _ = cli.build_parser().parse_known_args(
        ["--input", str(PHOTOS), "--output", str(tmp_path / "labels"), "--model", FLOAT_MODEL, "--labels", LABELS]
        + ["--precision", "bf16"]
    )
    config = job.prepare(flags, local=False)
    assert config.model.precision == "bf16" and config.model.backend == "openvino"
    with pytest.raises(PrecisionError, match="bf16 needs a CPU with AMX or AVX512_BF16"):
        load.load(config.model, num_threads=1)


@pytest.mark.slow  # compiles the float model with OpenVINO twice
@pytest.mark.skipif(not _cpu_has_bf16(), reason="this CPU has no bf16 instructions (AMX or AVX512_BF16)")
def test_bf16_compiles_in_bf16_and_f32_stays_exact():
    """The compiled model runs in the precision asked for (OpenVINO's own default on such a CPU is bf16, so f32 must
    be asked for explicitly); both give probabilities, and they differ, so bf16 is really what ran."""
    import openvino as ov
    import openvino.properties.hint as hints

    from beam_pipeline.decode.preprocess import DecodeSpec, decode_image

    images = np.stack(
        [decode_image(p.read_bytes(), DecodeSpec((224, 224)))[0] for p in sorted(PHOTOS.glob("*.[jb][pm][gp]"))]
    )
    by_precision = {p: load.load(resolve.resolve(FLOAT_MODEL, "openvino", p)) for p in ("f32", "bf16")}
    for precision, want in (("f32", ov.Type.f32), ("bf16", ov.Type.bf16)):
        assert by_precision[precision]._compiled.get_property(hints.inference_precision) == want
    f32, bf16 = (by_precision[p].predict(images) for p in ("f32", "bf16"))
    np.testing.assert_allclose(bf16.sum(axis=1), 1.0, atol=1e-3)
    assert not np.array_equal(f32, bf16)
