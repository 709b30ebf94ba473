"""The INT8 DFT's two output ranges (QuantFrontend.two_range, qat.dft_fine_gain): each output is within half a
fine step of the float DFT where the fine range holds it and within half a coarse step elsewhere, the scale is the
coarse range's, onnxruntime runs it as one QLinearConv and matches fake-quant, and a saved model keeps it."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from edgeser.export.onnx_export import export_onnx
from edgeser.models.frontend import peak_level
from edgeser.models.student import Student
from edgeser.quant.calibrate import calibrate
from edgeser.quant.qstudent import QuantStudent

GAIN = 4.0


def _speechlike(n: int, seed: int) -> torch.Tensor:
    """Clips whose frames differ in loudness by up to 40 dB (so many DFT outputs are far below the range)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16000, generator=g)
    env = 10 ** (-2 * torch.rand(n, 40, generator=g))  # per 25 ms: 0 .. -40 dB
    return 0.3 * x * env.repeat_interleave(400, dim=1)


def _qmodel(gain: float | None, batches: int = 2) -> QuantStudent:
    torch.manual_seed(0)
    q = QuantStudent(Student(4, [16, 16, 16, 16]).eval())
    q.frontend.equalise(_speechlike(16, 1), 64.0)
    if gain:
        q.frontend.two_range(gain)
    calibrate(q, _speechlike(16, 1), batches, 8)
    return q.eval()


def _float_dft(fe, f: torch.Tensor) -> torch.Tensor:
    """The DFT of the int8 blocks (or frames) through the int8 (coarse-half) weights, in float: what the output
    quantisers round."""
    w = fe.dft.qweight(fe.dft.weight)
    return F.conv1d(f, w[: len(w) // 2], stride=fe.dft.stride)


def test_two_range_outputs_are_within_half_a_step_of_their_range():
    q = _qmodel(GAIN)
    fe = q.frontend
    x = _speechlike(8, 2)
    with torch.no_grad():
        frames, _ = fe.dft_input(x / peak_level(x))
        f = fe.in_q(frames)
        z = _float_dft(fe, f)
        spec = fe.quantised_dft(f)
    s = float(fe.dft_q.scale)
    fine = z.abs() < (126.5 / GAIN) * s  # where round(gain z / s) stays inside the fine range
    err = (spec - z).abs()
    ulp = 1e-5 * z.abs() + 1e-7  # float32 summation order of the two convs
    assert spec.shape == z.shape
    assert fine.float().mean() > 0.5  # most outputs are quiet: the case the fine range is for
    assert bool((err[fine] <= s / (2 * GAIN) + ulp[fine]).all()), float(err[fine].max() / s)
    coarse = ~fine & (z.abs() <= 127 * s)  # (the calibrated scale is an EMA: a few outputs saturate)
    assert float(coarse.float().mean()) > 0.01 and float((z.abs() > 127 * s).float().mean()) < 0.01
    assert bool((err[coarse] <= s / 2 + ulp[coarse]).all()), float(err[coarse].max() / s)
    # one range rounds the quiet outputs to the coarse step: its error there is about GAIN times larger
    one = fe.dft_q.quantise(z)
    assert float((one - z)[fine].pow(2).mean()) > (GAIN ** 2 / 2) * float((spec - z)[fine].pow(2).mean())


def test_the_output_scale_is_the_coarse_ranges():
    """One calibration batch: the scale is that batch's largest coarse output / 127, not the fine half's (which
    is GAIN times larger and would make the fine range the coarse one)."""
    q = _qmodel(GAIN, batches=1)
    fe = q.frontend
    x = _speechlike(16, 1)[:8]
    with torch.no_grad():
        frames, _ = fe.dft_input(x / peak_level(x))
        z = _float_dft(fe, fe.in_q(frames))
    assert abs(float(fe.dft_q.scale) - float(z.abs().amax()) / 127) <= 1e-6 * float(fe.dft_q.scale)


def test_two_range_exports_as_one_qlinearconv_that_matches_fakequant(tmp_path):
    q = _qmodel(GAIN)
    e = q.to_export()
    x = _speechlike(3, 3)
    with torch.no_grad():
        ref = q(x).numpy()
        assert np.array_equal(e(x).numpy(), ref)
        one = _qmodel(None)(x).numpy()
    assert not np.allclose(one, ref)  # the second range changes the outputs
    path = tmp_path / "q.onnx"
    export_onnx(e, 16000, path)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    out = ort.InferenceSession(str(path), so).run(None, {"audio": x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-5
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)
    # INT8 kernels for the DFT (both ranges in one conv: two convs on one input stayed float) and 4 body convs
    assert ops["QLinearConv"] == 5 and ops["Where"] == 1, ops


def test_a_saved_two_range_model_loads_with_both_ranges(tmp_path):
    from edgeser.models.io import save_model
    from edgeser.models.student import student_config
    from edgeser.quant.calibrate import load_qat

    torch.manual_seed(0)
    s = Student(4, [16, 16, 16, 16]).eval()
    q = QuantStudent(s)
    q.frontend.two_range(GAIN)
    calibrate(q, _speechlike(16, 1), 2, 8)
    save_model(tmp_path / "model.pt", q, student_config(s.body) | {"frontend": None})
    back, _ = load_qat(tmp_path / "model.pt")
    x = _speechlike(2, 4)
    with torch.no_grad():
        assert back.frontend.two_ranges and torch.equal(back(x), q.eval()(x))


def test_the_masked_and_two_conv_spellings_equal_where_exactly():
    """quantised_dft's spellings for runtimes without split / where (ExecuTorch's XNNPACK, TFLite Micro): the
    0/1 mask and the two half convs give the same values as the ONNX graph's where, bit for bit, including
    outputs one fine step either side of the saturation limit."""
    q = _qmodel(GAIN)
    e = q.to_export()
    fe = e.frontend
    x = _speechlike(4, 5) * 3  # louder: many outputs saturate the fine range
    with torch.no_grad():
        frames, _ = fe.dft_input(x / peak_level(x))
        f = fe.in_q(frames)
        ref = fe.quantised_dft(f)
        masked = fe.quantised_dft(f, masked=True)
        half = fe.dft.w_int8.shape[0] // 2
        w = fe.dft.qweight(None)
        halves = fe.quantised_dft(f, halves=lambda f: (F.conv1d(f, w[:half], stride=fe.dft.stride),
                                                       F.conv1d(f, w[half:], stride=fe.dft.stride)), masked=True)
        fine = fe.dft_q.quantise(fe.dft(f))[:, half:].abs() / float(fe.dft_q.export_scale)
    assert bool(((fine > 120) & (fine < 127)).any()) and bool((fine >= 127).any())  # both sides of the limit
    assert torch.equal(masked, ref) and torch.equal(halves, ref)
