"""The tflite-int8 format on its real runtime: a tiny QAT student exported through the registry with litert-torch,
run on the LiteRT interpreter (XNNPACK), and compared with the onnxruntime INT8 graph and the PyTorch QAT model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeser.export.onnx_export import export_onnx
from edgeser.formats import REGISTRY, available, load_runner, resolve
from edgeser.runtimes import onnx_runner
from tests.quant_steps import MIN_RANGE_STEPS, logit_step, tiny_export_job

ok, why = available("tflite-int8")
pytestmark = pytest.mark.skipif(not ok, reason=f"LiteRT absent: {why}")
CLASSES = ["a", "b", "c", "d"]
SAMPLES = 16000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    q, job = tiny_export_job(out, SAMPLES)
    torch.manual_seed(1)
    job.calib = (torch.randn(4, SAMPLES) * 0.1).numpy()
    export_onnx(job.qexport, SAMPLES, job.path("onnx-int8"), meta=job.meta)
    f = REGISTRY["tflite-int8"]
    rec = resolve(f.export)(job, job.path("tflite-int8"))
    return q, job, rec


def _clips(n=12, samples=SAMPLES, seed=1):
    x = (torch.randn(n, samples, generator=torch.Generator().manual_seed(seed)) * 0.1).numpy()
    x[::3] *= 0.01  # 40 dB quieter clips too: the graph levels each clip before the INT8 DFT
    return x


def test_file_metadata_quantisation_and_tflm_check(exported):
    from edgeser.export.litert import read_metadata

    _, job, rec = exported
    assert rec.get("status", "exported") == "exported", rec
    meta = read_metadata(job.path("tflite-int8"))
    assert json.loads(meta["classes"]) == CLASSES  # the artifact names its classes
    spec = json.loads(meta["input"])
    assert spec["min_samples"] == spec["max_samples"] == SAMPLES and spec["frame_samples"] == 801  # its window
    tfl = rec["checks"]["tflite"]
    io = json.loads(meta["tflite_io"])
    for side in ("input", "output"):  # recorded in the file and in the checks, read from the tensors
        assert {"dtype", "scale", "zero_point"} <= set(io[side]) and io[side]["dtype"] == tfl["io"][side]["dtype"]
    assert io["input"]["dtype"] == "float32"  # the raw waveform: levelled in the graph before the first quantiser
    bounds = tfl["io"]["int8_boundaries"]
    fe = job.qexport.frontend  # the DFT's input quantiser, on the clip's blocks each levelled by its own peak...
    blocks = -(-SAMPLES // fe.hop)  # whole blocks, zero-padded
    assert bounds[0]["op"] == "QUANTIZE" and bounds[0]["shape"] == [1, blocks, fe.hop]
    assert bounds[0]["scale"] == pytest.approx(float(job.qexport.frontend.in_q.export_scale))  # ...the QAT one
    assert all(b["zero_point"] == 0 and b["dtype"] == "int8" for b in bounds)  # symmetric, as the QAT model
    assert tfl["int8_mac_share"] > 0.9  # the DFT and the body on int8 kernels; mel and head stay float
    assert {("CONV_2D", "int8", "int8")} <= {(o["op"], o["dtype"], o["weight_dtype"]) for o in tfl["work_ops"]}
    tflm = tfl["tflm"]
    assert {"tflm_compatible", "ops", "unsupported"} <= set(tflm)
    assert tflm["tflm_compatible"] is True and tflm["unsupported"] == [] and tflm["static_shapes"]
    assert {"CONV_2D", "QUANTIZE", "LOG", "REDUCE_MAX"} <= set(tflm["ops"])
    assert tfl["parity"]["agreement_vs_qat"] == 1.0


def test_runs_and_agrees_with_onnxruntime_and_the_qat_model(exported):
    q, job, _ = exported
    x = _clips()
    r = load_runner("tflite-int8", job.path("tflite-int8"))
    out = r(x)
    ref_onnx = onnx_runner(job.path("onnx-int8"))(x)
    with torch.no_grad():
        ref = job.qexport(torch.from_numpy(x)).numpy()
    step = logit_step(q)
    assert np.ptp(ref) > MIN_RANGE_STEPS * step  # outputs that are not trivially small
    # The QAT model's own scales on the same int8 grids: measured 0.09 step at most from the QAT model (72 clips,
    # a third 40 dB quieter; LiteRT's fixed-point requantisation rounds a rare tie the other way), so one step of
    # the head input is the slack. onnxruntime's int8 kernels round differently (5.2-6.2 steps from the QAT model
    # here): LiteRT may be no further from it than the QAT model is, plus that step.
    assert np.abs(out - ref).max() <= 1 * step
    assert np.abs(out - ref_onnx).max() <= np.abs(ref - ref_onnx).max() + step
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_level_invariant_fixed_window_and_bad_input(exported):
    q, job, _ = exported
    r = load_runner("tflite-int8", job.path("tflite-int8"))
    assert (r.fixed_samples, r.static_batch, r.min_samples) == (SAMPLES, 1, 801)
    x = (torch.randn(4, SAMPLES, generator=torch.Generator().manual_seed(2)) * 0.1).numpy()
    # the same clip 40 dB quieter reaches the int8 DFT through the same steps (measured: identical logits)
    assert np.abs(r(x * 0.01) - r(x)).max() <= logit_step(q)
    longer, shorter = r(np.tile(x[:2], (1, 3))), r(x[:2, :801])  # slid window / tiled to the window
    assert longer.shape == shorter.shape == (2, 4) and np.isfinite(longer).all()
    with pytest.raises(ValueError, match="shorter than one analysis frame"):
        r(x[:1, :800])


def test_set_threads_recreates_the_interpreter(exported):
    _, job, _ = exported
    r = load_runner("tflite-int8", job.path("tflite-int8"))
    x = _clips(2)
    one = r(x)
    r.set_threads(2)
    assert np.array_equal(r(x), one)
    d = r.delegation()
    assert d["partitions"] >= 1 and set(d["ops_outside_delegate"]) <= {"RELU"}  # XNNPACK takes all but int8 ReLUs


def test_int8_io_uses_the_tensors_own_scale_and_zero_point():
    """A file with int8 input or output (not this graph's float I/O) is fed and read with its tensors' own
    quantisation parameters, clamped to the dtype's range."""
    from edgeser.export.litert import dequantise, quantise

    d = {"dtype": np.int8, "quantization": (0.5, -3)}
    x = np.array([[0.0, 1.0, -1.26, 100.0, -100.0]], np.float32)
    qx = quantise(x, d)
    assert qx.dtype == np.int8 and qx.tolist() == [[-3, -1, -6, 127, -128]]
    assert dequantise(qx, d).tolist() == [[0.0, 1.0, -1.5, 65.0, -62.5]]
    f = {"dtype": np.float32, "quantization": (0.0, 0)}
    assert quantise(x, f).dtype == np.float32 and np.array_equal(dequantise(x, f), x)


def test_model_card_states_the_io_quantisation_and_tflm(exported, tmp_path):
    from edgeser.export.model_card import write_model_card

    _, job, rec = exported
    meta = job.meta | {"edgeser_version": "0", "recipe_sha256": "0" * 64, "sample_rate": "16000", "length": "any"}
    card = tmp_path / "README.md"
    write_model_card(card, [{"name": "tflite-int8", "precision": "int8", "status": "exported",
                             "path": "student_int8.tflite", **rec}], meta, tmp_path)
    text = card.read_text()
    io = rec["checks"]["tflite"]["io"]
    assert f"| model input | {io['input']['dtype']} | {io['input']['scale']} |" in text
    assert "TFLite Micro: every op is in its op resolver" in text
    assert any(f"{b['scale']:.6g}" in text for b in io["int8_boundaries"] if isinstance(b["scale"], float))
