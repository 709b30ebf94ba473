"""The log-mel front-end inside the graph matches a plain numpy log-mel, in PyTorch and in ONNX."""
from __future__ import annotations

import math

import numpy as np
import torch

from edgeser.models.frontend import LogMel, mel_filterbank


def numpy_logmel(x: np.ndarray, fe: LogMel) -> np.ndarray:
    """Reference: pre-emphasis, Hann frames of 50 ms every 25 ms, DTFT power at the same bins, mel, log, scale."""
    sr, n = 16000, 800
    y = np.concatenate([[0.0], x[1:] - 0.97 * x[:-1]])[1:]  # y[t] = x[t] - 0.97 x[t-1], t >= 1
    hop = fe.hop
    frames = np.stack([y[i : i + n] for i in range(0, len(y) - n + 1, hop)])
    win = np.hanning(n + 2)[1:-1]
    freqs = fe.freqs.numpy()  # mel-spaced DTFT sample points
    basis = np.exp(-2j * np.pi * freqs[:, None] * np.arange(n)[None] / sr)
    power = np.abs((frames * win) @ basis.T) ** 2  # (T, F)
    mel = mel_filterbank(40, freqs, sr) @ power.T
    logmel = np.log(mel + 1e-10)
    peak = logmel.max()
    logmel = np.maximum(logmel, peak - fe.range)
    return (logmel - peak) * (2 / fe.range) + 1


def test_frontend_matches_numpy_reference():
    fe = LogMel()
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    ours = fe(torch.from_numpy(x)[None])[0].numpy()
    ref = numpy_logmel(x.astype(np.float64), fe)
    assert ours.shape == ref.shape == (40, fe.n_frames(16000))
    assert np.abs(ours - ref).max() < 2e-3
    assert ours.min() >= -1 - 1e-6 and ours.max() <= 1 + 1e-6


def test_frontend_loudness_invariant():
    fe = LogMel()
    x = torch.randn(1, 16000) * 0.1
    assert torch.allclose(fe(x), fe(x * 4), atol=1e-4)


def test_frontend_same_in_exported_graph(tmp_path):
    """The log-mel the model trains on is the one the exported ONNX graph computes."""
    import onnxruntime as ort

    from edgeser.export.onnx_export import export_onnx

    fe = LogMel().eval()
    export_onnx(fe, 16000, tmp_path / "fe.onnx")
    x = (torch.randn(3, 16000, generator=torch.Generator().manual_seed(1)) * 0.1).numpy()
    out = ort.InferenceSession(str(tmp_path / "fe.onnx")).run(None, {"audio": x})[0]
    assert np.abs(out - fe(torch.from_numpy(x)).numpy()).max() < 1e-4


def _clips_at_different_levels() -> torch.Tensor:
    """A loud tone, quiet noise and a very quiet chirp: after peak levelling their log-mel peaks still differ
    (a tone puts its power in one band, noise spreads it), so one shared normaliser would shift some of them."""
    g = torch.Generator().manual_seed(3)
    t = torch.arange(16000) / 16000
    tone = 0.8 * torch.sin(2 * math.pi * 440 * t)
    noise = 0.002 * torch.randn(16000, generator=g)
    chirp = 1e-3 * torch.sin(2 * math.pi * (100 + 1500 * t) * t) + 1e-4 * torch.randn(16000, generator=g)
    return torch.stack([tone, noise, chirp])


def test_frontend_normalises_each_clip_on_its_own():
    """Per clip, not per batch: every clip of a mixed batch gets exactly its single-clip log-mel."""
    fe = LogMel().eval()
    x = _clips_at_different_levels()
    peaks = fe.frames(x, restore=False).amax(dim=(1, 2))
    assert float(peaks.max() - peaks.min()) > 1.0  # the clips really differ (else any normaliser passes)
    batch = fe(x)
    for i in range(len(x)):
        alone = fe(x[i : i + 1])[0]
        assert torch.allclose(batch[i], alone, atol=1e-5), f"clip {i} depends on the other clips of its batch"
        assert abs(float(batch[i].max()) - 1.0) < 1e-6  # each clip's own peak maps to +1
        assert float(batch[i].min()) >= -1 - 1e-6
    # and the clips are not made alike: a shared offset would move them together
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)


def test_quantised_frontend_levels_each_clip_on_its_own():
    """The INT8 front-end's DFT input quantiser sees each clip divided by its own peak: a -60 dB clip batched
    with a loud one keeps its single-clip features (one batch peak would leave it a few int8 steps)."""
    x = _clips_at_different_levels()
    qf = _calibrated_quant_frontend(x)
    batch = qf(x)
    for i in range(len(x)):
        # (a batched and a single conv round a few of the 10^4 values to the neighbouring int8 step: 0.002 here)
        diff = float((batch[i] - qf(x[i : i + 1])[0]).abs().max())
        assert diff < 0.01, f"clip {i} depends on its batch (max |diff| {diff:.3f})"


def _calibrated_quant_frontend(x: torch.Tensor):
    from edgeser.quant.qstudent import QuantFrontend

    qf = QuantFrontend(LogMel())
    qf.train()
    qf(x)  # the observers initialise their scales on this batch
    qf.eval()
    for m in qf.modules():
        if hasattr(m, "observe"):
            m.observe = False
    return qf


def test_quantised_frontend_levels_each_block_on_its_own():
    """A frame 40 dB quieter than the rest of its clip reaches the INT8 DFT through the same int8 codes as at
    full level (its blocks are levelled each by its own peak): its log-mel only moves by 2 ln(0.01), bit for bit
    up to float rounding. One level per clip (the front-end before edgeser 0.2) left it on a few int8 steps: its
    log-mel moved by up to nats."""
    g = torch.Generator().manual_seed(3)
    hop, k = 400, 801
    x = torch.randn(2, 16000, generator=g) * 0.3
    x[:, :8000] += torch.sin(torch.arange(8000) * 0.07) * 0.6  # a loud first half
    qf = _calibrated_quant_frontend(x)
    quiet = x.clone()
    quiet[:, 8000:] *= 0.01  # the second half 40 dB down
    loud_frames = qf.frames(x, restore=True)
    quiet_frames = qf.frames(quiet, restore=True)
    first = -(-8000 // hop)  # the first frame wholly in the second half
    inside = slice(first, qf.n_frames(16000))
    moved = quiet_frames[..., inside] - loud_frames[..., inside]
    assert inside.stop - inside.start >= 15 and k == qf.kernel_samples
    # float32 rounding of the division by each frame's level and of the log: 1e-4 of a nat
    assert float((moved - 2 * math.log(0.01)).abs().max()) < 1e-3
    # the same, one level per clip: the quiet frames' int8 codes are those of a 40 dB quieter input
    per_clip = _calibrated_quant_frontend(x)
    blocks = lambda v: -(-v.shape[1] // hop)  # noqa: E731  (whole blocks, zero-padded, unlevelled)
    per_clip.dft_input = lambda v: (torch.nn.functional.pad(v, (0, blocks(v) * hop - v.shape[1]))[:, None, :],
                                    torch.ones(v.shape[0], 1, blocks(v)))
    bad = per_clip.frames(quiet, restore=True)[..., inside] - per_clip.frames(x, restore=True)[..., inside]
    assert float((bad - 2 * math.log(0.01)).abs().max()) > 0.1


def test_blocked_frontend_in_float_is_the_logmel_at_any_length_and_block_level():
    """With its quantisers off, the INT8 front-end's blocks (each levelled by its own peak, partial DFT sums
    weighted back by level / frame level) give the FP32 log-mel: the frames that straddle a loud and a 40 dB
    quieter block included, at lengths from one frame to a ragged tail. The only difference is the 801st tap,
    dropped (8e-6 of its row), against log-mel values in [-1, 1]."""
    from edgeser.quant.qstudent import QuantFrontend

    fe = LogMel()
    qf = QuantFrontend(fe)
    assert qf.blocked and qf.positions == 2
    for m in qf.modules():
        if hasattr(m, "enabled"):
            m.enabled = False
    g = torch.Generator().manual_seed(5)
    for n in (801, 1200, 1201, 16000, 16399):
        x = torch.randn(3, n, generator=g) * 0.3
        gains = torch.ones(n)
        for start in range(0, n, 800):  # every other block 40 dB down: each frame spans both levels
            gains[start + 400:start + 800] = 0.01
        x = x * gains
        with torch.no_grad():
            assert float((qf(x) - fe(x)).abs().max()) < 1e-4, n
