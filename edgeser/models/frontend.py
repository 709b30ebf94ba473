"""Log-mel front-end built from fixed Conv1d kernels, so it exports to every target (no STFT op).

peak level -> pre-emphasis -> Hann-windowed frames -> DFT (cos/sin kernels, pre-emphasis folded in) -> power
-> mel filterbank (matmul) -> log -> clamp to `top_db` below the clip's maximum -> scale to [-1, 1].

Level: the waveform is divided by its own peak before the DFT, and the log power gets 2 log(peak) back, so the
features are those of the raw waveform. In float this changes nothing (the per-clip normalisation removes any
gain). In INT8 it is what makes the model level-invariant: the DFT's input quantiser always sees a full-scale
signal, so a clip played 40 dB quieter reaches the DFT through the same 255 int8 steps as a loud one, instead
of a handful (issue 11: without it INT8 agreed with FP32 on 50 % of clips at -20 dB).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _inv_mel(m):
    return 700.0 * (10 ** (m / 2595.0) - 1.0)


# Peaks below this (-80 dBFS) are not amplified further: digital silence stays silence, never 0 / 0.
LEVEL_FLOOR = 1e-4
# DFT kernels are scaled so that a full-scale sine gives an amplitude of DFT_GAIN in its bin (up to 1.97x that
# with pre-emphasis, a power of 38,800 < fp16's 65,504), and peak-levelled speech powers of about 1..200, far
# above fp16's subnormals: targets that run the float front-end in fp16 (QNN HTP, the ANE) then match FP32.
# Measured on the HTP simulator, 64 held-out clips: a gain of 16 agreed with the QAT model on 92 %
# (max |dlogit| 5.6, powers in fp16's subnormal range), 128 on 100 % (0.23).
DFT_GAIN = 100.0


def peak_level(wav: torch.Tensor) -> torch.Tensor:
    """(B, samples) -> (B, 1): each clip's peak |sample|, floored at LEVEL_FLOOR."""
    return wav.abs().amax(dim=-1, keepdim=True).clamp_min(LEVEL_FLOOR)


def mel_grid(n_freqs: int, sr: int, fmax_hz: float | None = None) -> np.ndarray:
    """Frequencies at which the DTFT is sampled: evenly spaced on the mel scale from 0 to fmax_hz (default
    sr / 2), so every mel band gets the same number of samples (about n_freqs / n_mels) instead of the low bands
    getting one or none."""
    return _inv_mel(np.linspace(_mel(0.0), _mel(fmax_hz or sr / 2), n_freqs))


def mel_filterbank(n_mels: int, freqs_hz: np.ndarray, sr: int, fmax_hz: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filters from 0 to fmax_hz (default sr / 2), evaluated at the given frequencies:
    (n_mels, len(freqs))."""
    edges = _inv_mel(np.linspace(_mel(0.0), _mel(fmax_hz or sr / 2), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs_hz)), dtype=np.float64)
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs_hz - lo) / (c - lo)
        down = (hi - freqs_hz) / (hi - c)
        fb[m] = np.clip(np.minimum(up, down), 0, None)
    fb /= np.maximum(fb.sum(1, keepdims=True), 1e-8)
    return fb.astype(np.float32)


def level_frames(wav: torch.Tensor, dft, log_power, restore: bool = True) -> torch.Tensor:
    """log_power(dft(wav / peak)) + 2 log(peak): the DFT only ever sees peak-1 input.

    restore=False leaves out the + 2 log(peak). A whole clip's `normalise` subtracts its own peak, so the term
    cancels; left in, it only moves quiet clips' log-mel away from 0, where fp16 front-ends (HTP, ANE) round
    more coarsely (at -40 dB it shifts values by -9 nats, and the fp16 step there is 4x the step near 3).
    A stream needs it: its cached frames come from calls with different peaks."""
    g = peak_level(wav)
    lp = log_power(dft(wav / g))
    return lp + 2.0 * torch.log(g).unsqueeze(-1) if restore else lp


class LogMel(nn.Module):
    def __init__(self, sr: int = 16000, frame_ms: float = 50, hop_ms: float = 25, n_mels: int = 40,
                 n_freqs: int = 100, preemph: float = 0.97, top_db: float = 40.0, fmax_hz: float | None = None):
        super().__init__()
        if fmax_hz is not None and not 0 < fmax_hz <= sr / 2:
            raise ValueError(f"fmax_hz must be in (0, {sr / 2}], got {fmax_hz}")
        n = int(sr * frame_ms / 1000)
        self.hop = int(sr * hop_ms / 1000)
        self.kernel_samples = n + 1  # one analysis frame, pre-emphasis included: the shortest input
        freqs = mel_grid(n_freqs, sr, fmax_hz)
        t = np.arange(n)
        win = np.hanning(n + 2)[1:-1]
        ang = 2 * math.pi * freqs[:, None] * t[None, :] / sr
        k = np.concatenate([np.cos(ang) * win, -np.sin(ang) * win]) * (2 * DFT_GAIN / win.sum())  # (2F, n)
        # fold pre-emphasis y[t] = x[t] - a x[t-1] into the kernel: length n + 1
        kp = np.zeros((2 * n_freqs, n + 1))
        kp[:, 1:] += k
        kp[:, :-1] -= preemph * k
        self.dft = nn.Conv1d(1, 2 * n_freqs, n + 1, stride=self.hop, bias=False)
        self.dft.weight.data = torch.tensor(kp[:, None, :], dtype=torch.float32)
        # Applied to [re; im]^2 at once: mel @ (re^2 + im^2) == [mel, mel] @ [re; im]^2. The DFT output then has
        # one consumer (Pow), which onnxruntime needs to fuse the INT8 DFT into QLinearConv, and no separate
        # add of re^2 and im^2 (a ReduceSum there cost 11 % of the INT8 student's time).
        fb = mel_filterbank(n_mels, freqs, sr, fmax_hz)
        self.register_buffer("mel", torch.tensor(np.concatenate([fb, fb], axis=1)))
        self.n_freqs = n_freqs
        self.register_buffer("freqs", torch.tensor(freqs), persistent=False)
        self.range = top_db / 10.0 * math.log(10.0)  # top_db in natural-log power units
        self.requires_grad_(False)

    def n_frames(self, samples: int) -> int:
        return (samples - self.dft.kernel_size[0]) // self.hop + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.frames(wav, restore=False))

    def frames(self, wav: torch.Tensor, restore: bool = True) -> torch.Tensor:
        """(B, samples) -> un-normalised log mel power per frame (B, n_mels, T), computed from the peak-levelled
        waveform and (restore=True) restored to the raw waveform's level."""
        return level_frames(wav, lambda x: self.dft(x.unsqueeze(1)), self.log_power, restore)

    def log_power(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 2F, T) DFT parts -> log mel power per frame (B, n_mels, T). Each frame depends only on its own
        samples, so a stream computes every frame once and overlapping windows share it (`edgeser stream`)."""
        # clamp, not "+ 1e-10": the ONNX exporter folds away the add as adding zero, and log(0) = -inf
        # the mel matmul as a 1x1 conv: torch.export's matmul decomposition guards T != 1, a conv does not, so
        # the exported graphs take any length down to one frame
        return torch.log(F.conv1d(spec.pow(2), self.mel.unsqueeze(-1)).clamp_min(1e-10))

    def normalise(self, logmel: torch.Tensor) -> torch.Tensor:
        """Per clip (or stream window): clamp to `top_db` below its peak, scale to [-1, 1]."""
        peak = logmel.amax(dim=(1, 2), keepdim=True)
        logmel = torch.maximum(logmel, peak - self.range)
        return (logmel - peak) * (2.0 / self.range) + 1.0
