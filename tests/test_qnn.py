"""The INT8 student on Qualcomm's HTP backend (x86 simulator), CPU fallback disabled: the whole graph runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeser.export.htp import write_htp_onnx
from edgeser.export.onnx_export import export_onnx
from edgeser.models.student import Student
from edgeser.quant.qstudent import QuantStudent
from edgeser.runtimes import qnn_available, qnn_runner
from edgeser.quant.calibrate import calibrate
from tests.quant_steps import MIN_RANGE_STEPS, logit_step


def test_qnn_htp_runs_whole_graph_and_agrees(tmp_path):
    ok, reason = qnn_available()
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    q = QuantStudent(Student(4, [16, 16, 16, 16]).eval())
    calibrate(q, torch.randn(16, 16000) * 0.1, 2, 8)
    export_onnx(q.to_export(), 16000, tmp_path / "m.onnx", static_batch=1)
    write_htp_onnx(tmp_path / "m.onnx", tmp_path / "h.onnx")
    runner = qnn_runner(tmp_path / "h.onnx")  # raises if any node would fall back to the CPU EP
    x = (torch.randn(6, 16000, generator=torch.Generator().manual_seed(1)) * 0.1)
    out = runner(x.numpy())
    with torch.no_grad():
        ref = q(x).numpy()
    assert out.shape == (6, 4) and np.isfinite(out).all()
    # HTP runs the same int8 graph; its fp16 front-end and its own requantisation arithmetic flip a few roundings,
    # which reach the logits only through the head input. Measured: 0.18 logit steps (1.8e-4, step 9.6e-4); the
    # bound, one step, is the head input off by one int8 step in every channel at once. The logits span ~400
    # steps, so zeroed, bias-only or clipped logits (a wrong int16 output scale) are off by tens of steps.
    step = logit_step(q)
    assert np.ptp(ref) >= MIN_RANGE_STEPS * step
    assert np.abs(out - ref).max() <= step
    assert (out.argmax(1) == ref.argmax(1)).all()


def _int8_and_htp(tmp_path):
    torch.manual_seed(0)
    q = QuantStudent(Student(4, [16, 16, 16, 16]).eval())
    calibrate(q, torch.randn(16, 16000) * 0.1, 2, 8)
    export_onnx(q.to_export(), 16000, tmp_path / "m.onnx", static_batch=1)
    return q, write_htp_onnx(tmp_path / "m.onnx", tmp_path / "h.onnx")


def test_htp_head_is_the_int8_graph_to_half_an_int16_logit_step(tmp_path):
    """On the CPU provider, the HTP file differs from the INT8 file only by rounding its logits to int16: the
    head's int8 -> int16 input is exact (1/256 of the step), so |difference| <= half the logit step."""
    import onnx
    import onnxruntime as ort

    _, info = _int8_and_htp(tmp_path)
    x = (torch.randn(1, 16000, generator=torch.Generator().manual_seed(1)) * 0.1).numpy()
    a = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"audio": x})[0]
    b = ort.InferenceSession(str(tmp_path / "h.onnx")).run(None, {"audio": x})[0]
    assert np.abs(b - a).max() <= info["logit_scale"] / 2 * 1.001
    assert np.abs(a).max() <= info["logit_bound"]  # the bound holds, so int16 never clips
    types = {n.op_type for n in onnx.load(str(tmp_path / "h.onnx")).graph.node if n.domain == "com.microsoft"}
    assert types == {"QuantizeLinear", "DequantizeLinear"}


def test_htp_head_refuses_a_graph_without_a_float_gemm_head(tmp_path):
    from edgeser.export.htp import write_htp_onnx as w

    _int8_and_htp(tmp_path)
    with pytest.raises(ValueError, match="graph output comes from"):
        w(tmp_path / "h.onnx", tmp_path / "h2.onnx")  # already rewritten: its output comes from a DequantizeLinear
    assert not (tmp_path / "h2.onnx").exists()
