"""Fake-quant: BN folding is exact, the export graph matches fake-quant, and onnxruntime runs INT8 kernels."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgeser.export.onnx_export import export_onnx
from edgeser.models.student import Student
from edgeser.quant.fakequant import fold_bn
from edgeser.quant.qstudent import QuantStudent
from edgeser.quant.calibrate import calibrate
from tests.quant_steps import MIN_RANGE_STEPS, logit_step


def test_fold_bn_exact():
    torch.manual_seed(0)
    conv, bn = nn.Conv1d(8, 12, 3, padding=1, bias=False), nn.BatchNorm1d(12)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 8, 20)
    ref = bn.eval()(conv(x))
    assert torch.allclose(fold_bn(conv, bn)(x), ref, atol=1e-5)


def _qmodel():
    torch.manual_seed(0)
    s = Student(4, [16, 16, 16, 16]).eval()
    q = QuantStudent(s)
    calibrate(q, torch.randn(16, 16000) * 0.1, 2, 8)
    return q


def test_quantisation_changes_outputs_but_little():
    """Fake-quant vs float, in logit steps (one int8 step of the head input, tests/quant_steps.py).

    The pool quantiser alone rounds each head input by up to half a step; every body quantiser upstream adds its
    own rounding, which reaches the head input as a few steps in some channels (measured up to 9) but mostly
    cancels in the head's sum. Measured on 32 clips like the calibration ones: 0.91 steps here, at most 1.98
    over seeds 0-5, so the bound is 3 steps (~2.9e-3 on logits spanning ~0.4, i.e. ~420 steps)."""
    q = _qmodel()
    x = torch.randn(32, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        a = q(x)
        q.set_quant(False)
        b = q(x)
    step = logit_step(q)
    assert not torch.equal(a, b)  # quantisation is on
    assert float(b.max() - b.min()) >= MIN_RANGE_STEPS * step  # "3 steps" is small against the logits
    assert float((a - b).abs().max()) <= 3 * step
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_export_weights_are_per_channel_int8_of_the_folded_weights():
    """Every exported weight is round(w / s_k), s_k = max|w_k| / 127 per output channel of the BN-folded float
    weight, computed here independently. The output agreement tests cannot see this: on the untrained student
    per-tensor or 4-bit-coarse weight scales move the logits by ~1 logit step, inside their noise."""
    from edgeser.quant.fakequant import QConv1d, QLinear

    q = _qmodel()
    e = q.to_export()
    layers = [(n, m) for n, m in e.named_modules() if isinstance(m, (QConv1d, QLinear))]
    assert len(layers) == 6  # DFT, 4 body convs, head
    for name, m in layers:
        w = m.weight_bias()[0].detach()
        amax = w.abs().reshape(len(w), -1).amax(1)
        s = amax.clamp(min=1e-8) / 127.0  # the floor keeps an all-zero channel (the DFT's sine at 0 Hz) finite
        assert len(set(s.tolist())) > 1, name  # channels differ, so a per-tensor scale would show
        assert torch.equal(m.w_scale, s), name
        assert m.w_int8.dtype == torch.int8 and m.w_int8.shape == w.shape and not m.w_zp.any(), name
        peak = m.w_int8.reshape(len(w), -1).abs().amax(1)
        assert (peak[amax > 1e-8] == 127).all(), name  # every non-zero channel uses its full int8 range
        sk = s.reshape(-1, *[1] * (w.dim() - 1))
        assert bool(((m.w_int8.float() * sk - w).abs() <= sk / 2 * (1 + 1e-6)).all()), name  # half a step


def test_export_graph_matches_fakequant_and_runs_int8_kernels(tmp_path):
    q = _qmodel()
    x = torch.randn(3, 16000) * 0.1
    e = q.to_export()
    with torch.no_grad():
        ref = q(x).numpy()
        assert np.array_equal(e(x).numpy(), ref)
    path = tmp_path / "q.onnx"
    export_onnx(e, 16000, path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    out = ort.InferenceSession(str(path), so).run(None, {"audio": x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-5  # bit-for-bit up to float summation order
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so)
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)
    assert ops["QLinearConv"] == 5 and ops["Conv"] == 0, ops  # INT8 kernels for the DFT and every body conv
    # every Q/DQ is symmetric: zero point 0, int8
    g = onnx.load(path).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any()


def test_qconv_bn_folding_follows_then_freezes_statistics():
    from edgeser.quant.fakequant import QConv1d

    torch.manual_seed(0)
    conv, bn = nn.Conv1d(4, 6, 3, padding=1, bias=False), nn.BatchNorm1d(6).eval()
    q = QConv1d(conv, bn)
    q.enabled = False
    x = torch.randn(8, 4, 20) + 1.0
    assert torch.allclose(q.eval()(x), fold_bn(conv, bn)(x), atol=1e-5)  # BN folded on the fly
    q.train()
    q.bn_update = True
    q(x)
    moved = q.bn.running_mean.clone()
    assert not torch.equal(moved, bn.running_mean)  # statistics follow the batch
    q.bn_update = False
    q(x * 3)
    assert torch.equal(q.bn.running_mean, moved)  # frozen
    q.enabled = True
    e = q.eval()
    ref = e(x)
    e.freeze_int8()
    e.export = True
    assert torch.allclose(e(x), ref, atol=1e-6)  # export graph = folded, fake-quantised weights
