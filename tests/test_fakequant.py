"""Fake-quant: BN folding is exact, the export graph matches fake-quant, and onnxruntime runs INT8 kernels."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
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
        ulp = 2 * torch.finfo(torch.float32).eps * w.abs()  # the float32 rounding of code x scale itself
        assert bool(((m.w_int8.float() * sk - w).abs() <= sk / 2 + ulp).all()), name  # half a step


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
    opt = onnx.load(tmp_path / "opt.onnx").graph
    ops = collections.Counter(n.op_type for n in opt.node)
    assert ops["QLinearConv"] == 5, ops  # INT8 kernels for the DFT and every body conv
    # no float Conv is left: the front-end's levelled blocks feed the one strided DFT conv (the one-hot framing
    # convs before issue 17 cost 26 % of the INT8 time), and the mel filterbank is the one FusedConv (Conv + the
    # clamp before the log)
    assert ops["Conv"] == 0 and ops["FusedConv"] == 1, ops
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


def test_a_qat_model_file_of_the_old_front_end_is_refused_by_name(tmp_path):
    """A QAT model of the per-frame layout (before issue 17: a 1x1 DFT conv over 801-sample frames) is an
    InputError naming the file, not a state_dict traceback; one of this layout loads back exactly."""
    from edgeser.errors import InputError
    from edgeser.models.io import save_model
    from edgeser.models.student import student_config
    from edgeser.quant.calibrate import load_qat

    q = _qmodel()
    cfg = student_config(Student(4, [16, 16, 16, 16]).body) | {"frontend": {}, "classes": ["a", "b", "c", "d"]}
    save_model(tmp_path / "new.pt", q, cfg)
    back, _ = load_qat(tmp_path / "new.pt")
    x = torch.randn(2, 16000) * 0.1
    assert torch.equal(back(x), q.eval()(x))
    # the per-frame layout before issue 17: no blocked_flag, the DFT a 1x1 conv over 801-sample frames
    old = {k: v for k, v in q.state_dict().items() if k != "frontend.blocked_flag"}
    old["frontend.dft.weight"] = torch.zeros(200, 801, 1)
    from edgeser.fileio import save_state

    save_state(tmp_path / "old.pt", {"config": cfg, "state_dict": old})
    with pytest.raises(InputError, match="old.pt: a QAT model of another layout"):
        load_qat(tmp_path / "old.pt")


def test_scale_search_undoes_a_miscalibrated_scale_and_never_raises_the_kl():
    """search_scales: a body quantiser's scale made 8x too coarse is searched back down (a factor below 1), every
    other one moves only where it lowers the KL, and the KL to the FP32 student falls.

    The head is scaled up 10x so the random-init student's softmax is decisive (mean top-1 probability 0.77):
    with its near-uniform softmax the KL is ~1e-8, rounding noise, and no scale is measurably better."""
    from edgeser.quant.calibrate import SCALE_FACTORS, search_scales

    torch.manual_seed(0)
    s = Student(4, [16, 16, 16, 16]).eval()
    with torch.no_grad():
        s.body.head.weight.mul_(10.0), s.body.head.bias.mul_(10.0)
    q = QuantStudent(s)
    x = torch.randn(32, 16000) * 0.1
    calibrate(q, x, 2, 16)
    q.conv_q[1].scale.mul_(8.0)
    out = search_scales(q, s, x)
    assert out["factors"]["conv_q.1"] < 1.0
    assert set(out["factors"].values()) <= set(SCALE_FACTORS) | {1.0}
    assert out["kl_after"] < 0.75 * out["kl_before"]
    agree = float((q(x).argmax(1) == s(x).argmax(1)).float().mean())
    assert agree >= 0.9  # the searched model still makes the FP32 student's decisions
