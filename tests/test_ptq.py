"""PTQ baseline: onnxruntime static quantization with the same symmetric-int8 layout as our QAT export."""
from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeser.export.onnx_export import export_onnx
from edgeser.export.ptq import frontend_nodes, ptq_quantize
from edgeser.export.tensorrt import check_tensorrt_rules
from edgeser.models.student import Student
from tests.quant_steps import MIN_RANGE_STEPS, onnx_head_steps
from tests.conftest import ORT_INT8_EXACT

SAMPLES = 16000
# the dynamic time axis is legal for TensorRT with an optimisation profile covering it
PROFILE = {"min_shape": (1, 801), "opt_shape": (1, SAMPLES), "max_shape": (8, 16000 * 30)}


def _session(path, optimized=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _clips(n, seed):
    return (torch.randn(n, SAMPLES, generator=torch.Generator().manual_seed(seed)) * 0.1).numpy()


def _ops(path):
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def ptq(tmp_path_factory):
    torch.manual_seed(0)
    model = Student(4, [16, 16, 16, 16]).eval()
    src = tmp_path_factory.mktemp("fp32") / "student.onnx"
    export_onnx(model, SAMPLES, src)
    out = tmp_path_factory.mktemp("ptq") / "student_ptq.onnx"
    info = ptq_quantize(src, out, _clips(32, 1), batch_size=16)
    return model, src, out, info


@ORT_INT8_EXACT
def test_ptq_runs_and_agrees_with_fp32(ptq):
    model, src, out, info = ptq
    x = _clips(32, 2)
    ref = _session(src).run(None, {"audio": x})[0]
    got = _session(out).run(None, {"audio": x})[0]
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(x)).numpy() - ref).max() < 1e-4
    assert got.shape == (32, 4) and _session(out).run(None, {"audio": x[:3]})[0].shape == (3, 4)
    # onnxruntime Q/DQs the logits (int8, scale ~1.8e-3), so they are off by up to half that step from their own
    # rounding, plus what the body's roundings do to the head input: the fake-quant budget of 3 logit steps
    # (tests/test_fakequant.py; logit step ~1.0e-3). Measured 1.28e-3 (0.71 output steps); bound ~4.0e-3.
    steps = onnx_head_steps(out)
    assert steps["output_scale"] is not None  # the layout quantises the logits (else drop the half step)
    bound = steps["output_scale"] / 2 + 3 * steps["logit_step"]
    assert np.isfinite(got).all() and np.ptp(ref) >= MIN_RANGE_STEPS * steps["logit_step"]
    assert np.abs(got - ref).max() <= bound
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert info["path"] == str(out) and info["calibration_clips"] == 32 and "MinMax" in info["method"]


def test_layout_mirrors_qat_and_runs_int8_kernels(ptq, tmp_path):
    _, _, out, info = ptq
    assert info["quantized_op_types"] == {"Conv": 5, "Gemm": 1, "Relu": 4}  # DFT + 4 body convs, head
    g = onnx.load(str(out)).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    fed_by_dq = {n.op_type for n in g.node if any(producer.get(i) == "DequantizeLinear" for i in n.input)}
    # the front-end float island (mel matmul, log, peak clamp, scaling) is not quantized
    assert not fed_by_dq & {"MatMul", "Log", "ReduceMax", "Max", "Sub", "Mul", "Add"}, fed_by_dq
    _session(out, optimized=tmp_path / "opt.onnx")
    ops = _ops(tmp_path / "opt.onnx")
    assert ops["QLinearConv"] == 5 and ops["Conv"] == 0, ops  # real INT8 kernels for the DFT and body convs


def test_tensorrt_rules_pass(ptq):
    res = check_tensorrt_rules(ptq[2], profile=PROFILE)
    assert res["passed"], res["violations"]
    assert res["checked"]["per_channel"] >= 6  # every Conv / Gemm weight, axis 0


def test_no_temp_files_left(ptq):
    _, src, out, _ = ptq
    assert os.listdir(out.parent) == [out.name]
    assert os.listdir(src.parent) == [src.name]


def test_float_frontend_option(ptq, tmp_path):
    _, src, _, _ = ptq
    out = tmp_path / "q_fe_float.onnx"
    info = ptq_quantize(src, out, _clips(8, 3), quantize_frontend=False)
    assert info["quantized_op_types"]["Conv"] == 4
    assert frontend_nodes(onnx.load(str(src)).graph) and check_tensorrt_rules(out, profile=PROFILE)["passed"]
    _session(out, optimized=tmp_path / "opt.onnx")
    ops = _ops(tmp_path / "opt.onnx")
    assert ops["QLinearConv"] == 4 and ops["Conv"] + ops["FusedConv"] == 2, ops  # DFT and mel filterbank: float
    assert sorted(os.listdir(tmp_path)) == ["opt.onnx", "q_fe_float.onnx"]


def test_static_batch_model(tmp_path):
    torch.manual_seed(0)
    src = tmp_path / "b1.onnx"
    export_onnx(Student(4, [16, 16, 16, 16]).eval(), SAMPLES, src, static_batch=1)
    out = tmp_path / "b1_ptq.onnx"
    info = ptq_quantize(src, out, _clips(5, 4), batch_size=16)  # fed one clip at a time
    assert info["calibration_clips"] == 5 and info["quantized_op_types"]["Conv"] == 5
    assert _session(out).run(None, {"audio": _clips(1, 5)})[0].shape == (1, 4)
    assert check_tensorrt_rules(out)["passed"]  # static batch and length: no profile needed
    with pytest.raises(ValueError, match="samples"):  # a static-length model calibrates on its own length only
        ptq_quantize(src, tmp_path / "bad.onnx", np.zeros((2, 8000), np.float32))
