"""The INT8 student on Qualcomm's HTP backend (x86 simulator), CPU fallback disabled: the whole graph runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeser.export.onnx_export import export_onnx
from edgeser.models.student import Student
from edgeser.quant.qstudent import QuantStudent
from edgeser.runtimes import qnn_available, qnn_runner
from edgeser.stages.qat import calibrate


def test_qnn_htp_runs_whole_graph_and_agrees(tmp_path):
    ok, reason = qnn_available()
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    q = QuantStudent(Student(4, [16, 16, 16, 16]).eval())
    calibrate(q, torch.randn(16, 16000) * 0.1, 2, 8)
    export_onnx(q.to_export(), 16000, tmp_path / "m.onnx", static_batch=1)
    runner = qnn_runner(tmp_path / "m.onnx")  # raises if any node would fall back to the CPU EP
    x = (torch.randn(6, 16000, generator=torch.Generator().manual_seed(1)) * 0.1)
    out = runner(x.numpy())
    with torch.no_grad():
        ref = q(x).numpy()
    assert out.shape == (6, 4) and np.isfinite(out).all()
    assert np.abs(out - ref).max() < 0.5  # fp16 front-end and HTP rounding: a few int8 steps at most
