"""The log-mel front-end inside the graph matches a plain numpy log-mel, in PyTorch and in ONNX."""
from __future__ import annotations

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
