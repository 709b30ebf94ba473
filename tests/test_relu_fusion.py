"""The unsigned post-ReLU quantiser (qat.relu_quant: unsigned): its steps are max/255 over [0, max], fake-quant and
the exported Q/DQ agree exactly, onnxruntime drops every ReLU and runs each block as one QLinearConv (fewer Q/DQ
nodes than the symmetric layout), a saved model keeps its layout, `auto` picks symmetric for TensorRT runs, and
TensorRT's rules reject an unsigned graph."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeser.export.onnx_export import export_onnx
from edgeser.models.student import Student
from edgeser.quant.calibrate import calibrate
from edgeser.quant.fakequant import ActQuant
from edgeser.quant.qstudent import QuantStudent

ROOT = Path(__file__).resolve().parents[1]


def _clips(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    env = 10 ** (-2 * torch.rand(n, 40, generator=g))  # 25 ms pieces between 0 and -40 dB
    return 0.3 * torch.randn(n, 16000, generator=g) * env.repeat_interleave(400, dim=1)


def _qmodel(unsigned: bool) -> QuantStudent:
    torch.manual_seed(0)
    q = QuantStudent(Student(4, [16, 16, 16, 16]).eval(), relu_unsigned=unsigned)
    calibrate(q, _clips(16, 1), 2, 8)
    return q.eval()


def test_unsigned_quantiser_steps_are_max_over_255_and_export_matches():
    a = ActQuant(unsigned=True).eval()
    x = torch.relu(torch.randn(4, 8, 50)) * 3
    a(x)  # first batch: the observer sets the scale
    s = float(a.scale)
    assert abs(s - float(x.amax()) / 255) <= 1e-7 * s
    y = a(x)
    assert float((y - x).abs().max()) <= s / 2 * (1 + 1e-5)  # half a step: 2x finer than symmetric's max/127
    assert float(a(-x).abs().max()) == 0.0  # negatives round to the zero point (0)
    a.freeze_export()
    assert torch.equal(a(x), y)  # quantized_decomposed Q/DQ with zero point -128: the same values


def test_unsigned_layout_fuses_relu_into_qlinearconv_and_matches_fakequant(tmp_path):
    x = _clips(3, 3)
    ops = {}
    for unsigned in (False, True):
        q = _qmodel(unsigned)
        with torch.no_grad():
            ref = q(x).numpy()
        path = tmp_path / f"q{unsigned}.onnx"
        export_onnx(q.to_export(), 16000, path)
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"opt{unsigned}.onnx")
        out = ort.InferenceSession(str(path), so).run(None, {"audio": x.numpy()})[0]
        assert np.abs(out - ref).max() < 1e-5
        ops[unsigned] = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    sym, uns = ops[False], ops[True]
    assert uns["Relu"] == 0 and uns["QLinearConv"] == 5, uns  # the DFT and 4 body blocks, no ReLU left
    assert sym["Relu"] == 4 and sym["QLinearConv"] == 5, sym
    q_dq = lambda c: c["QuantizeLinear"] + c["DequantizeLinear"]  # noqa: E731
    assert q_dq(uns) <= q_dq(sym) - 8, (q_dq(uns), q_dq(sym))  # one Q and one DQ fewer per block


def test_a_saved_unsigned_model_loads_unsigned(tmp_path):
    from edgeser.models.io import save_model
    from edgeser.models.student import student_config
    from edgeser.quant.calibrate import load_qat

    q = _qmodel(True)
    save_model(tmp_path / "model.pt", q, student_config(Student(4, [16, 16, 16, 16]).body) | {"frontend": None})
    back, _ = load_qat(tmp_path / "model.pt")
    x = _clips(2, 4)
    with torch.no_grad():
        assert back.relu_unsigned and back.relu_q[0].unsigned and torch.equal(back(x), q(x))


@pytest.mark.parametrize("formats, mode, want", [
    (["onnx-fp32", "onnx-int8"], "auto", True),
    (["onnx-int8", "tensorrt"], "auto", False),
    (["onnx-int8"], "unsigned", True),
    (["onnx-int8"], "symmetric", False),
])
def test_auto_is_symmetric_for_tensorrt(formats, mode, want):
    from types import SimpleNamespace

    from edgeser.recipe import load_recipe
    from edgeser.stages.common import relu_unsigned

    r = load_recipe(ROOT / "recipes/demo.yaml", [f"export.formats=[{','.join(formats)}]", f"qat.relu_quant={mode}"])
    assert relu_unsigned(SimpleNamespace(recipe=r)) is want


def test_tensorrt_rules_reject_the_unsigned_graph(tmp_path):
    from edgeser.export.tensorrt import check_tensorrt_rules

    for unsigned in (False, True):
        path = tmp_path / f"q{unsigned}.onnx"
        export_onnx(_qmodel(unsigned).to_export(), 16000, path)
        rules = {v["rule"] for v in check_tensorrt_rules(path)["violations"]}
        assert ("zero_point" in rules) is unsigned, rules
