"""Training-time augmentations: SpecAugment frequency masks, WSOLA time-stretch, pitch shift, noise/babble
mixing at an exact SNR, and SMOTE oversampling in feature space.

Every random draw comes from the generator passed in (torch.Generator, or numpy Generator for `babble`);
nothing touches a global RNG.  Waveforms are (B, N) float tensors; nothing is modified in place.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from scipy import fft as sfft

from edgeser.data import synth
from edgeser.data.audio import BadAudio, fix_length, load_audio

_FRAME, _HOP, _TOL = 512, 256, 160  # WSOLA at 16 kHz: 32 ms Hann frames, 16 ms synthesis hop, +-10 ms search


def _uniform(gen, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def clip_peaks(x: torch.Tensor, gen, max_db: float, p: float) -> torch.Tensor:
    """(B, samples) PCM: each clip, with probability p, clipped as if played up to max_db past its own peak into
    a full-scale limit (uniform in 0..max_db dB), and left at its level: |x| is clamped at peak / 10^(d/20)."""
    if x.dim() != 2 or max_db < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"clip_peaks wants (B, samples), max_db >= 0 and p in [0, 1], got {tuple(x.shape)}, "
                         f"{max_db}, {p}")
    b = x.shape[0]
    on = (torch.rand(b, 1, generator=gen) < p).to(x.device)
    limit = x.abs().amax(1, keepdim=True) * 10 ** (-torch.rand(b, 1, generator=gen).to(x.device) * max_db / 20)
    return torch.where(on, torch.maximum(torch.minimum(x, limit), -limit), x)


def freq_mask(mel: torch.Tensor, gen, fraction: float = 0.2) -> torch.Tensor:
    """(B, n_mels, T): per example one band of round(fraction * n_mels) contiguous mel bins, random start,
    set to that example's minimum (-1 for the normalised LogMel output)."""
    if mel.dim() != 3 or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"freq_mask wants (B, n_mels, T) and fraction in [0, 1], got {tuple(mel.shape)}, {fraction}")
    b, n_mels, _ = mel.shape
    width = int(round(fraction * n_mels))
    start = torch.randint(0, n_mels - width + 1, (b,), generator=gen).to(mel.device)
    bins = torch.arange(n_mels, device=mel.device)
    band = ((bins >= start[:, None]) & (bins < (start + width)[:, None]))[:, :, None]
    return torch.where(band, mel.amin(dim=(1, 2), keepdim=True), mel)


def _wsola(x: np.ndarray, rates: np.ndarray, n_in: np.ndarray, n_out: int) -> np.ndarray:
    """Batched WSOLA in numpy (single-threaded: ~1.5k tiny ops would stall on OpenMP barriers in torch
    when the CPU is shared). x (B, M) holds n_in[b] valid samples (zeros after); example b is played at
    tempo rates[b] (> 1 faster), giving round(n_in / rate) samples, centre-cropped / zero-padded to n_out.
    Frames advance in lock-step over the batch, so the Python loop is over frames, not examples."""
    L, H, d = _FRAME, _HOP, _TOL
    out_len = np.round(n_in / rates).astype(np.int64)
    pad = L + d
    xp = np.pad(x, ((0, 0), (pad, pad)))  # input time p lives at xp[:, p + pad]; out-of-range reads hit zeros
    last, rows = xp.shape[1] - 1, np.arange(len(x))[:, None]
    span = np.arange(L + 2 * d)
    nfft = 1 << (L + 2 * d - 1).bit_length()
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(L) / L)).astype(x.dtype)  # periodic Hann: sums to 1 at L/2
    y = np.zeros((len(x), (int(out_len.max()) // H + 2) * H + L), x.dtype)  # output t lives at y[:, t + L//2]
    prev = None
    for k in range(y.shape[1] // H - 1):
        nominal = np.round(k * H * rates).astype(np.int64) - L // 2 + pad
        if prev is None:
            start = nominal
        else:  # best match, within +-d of nominal, to the natural continuation of the previous frame
            region = xp[rows, np.clip((nominal - d)[:, None] + span, 0, last)]
            tmpl = xp[rows, np.clip((prev + H)[:, None] + span[:L], 0, last)]
            corr = sfft.irfft(sfft.rfft(region, nfft) * np.conj(sfft.rfft(tmpl, nfft)), nfft)[:, : 2 * d + 1]
            start = np.where(corr.max(1) > 0, nominal - d + corr.argmax(1), nominal)  # silence: stay put
        y[:, k * H : k * H + L] += xp[rows, np.clip(start[:, None] + span[:L], 0, last)] * win
        prev = start
    t = np.maximum((out_len - n_out) // 2, 0)[:, None] + np.arange(n_out)  # centre-crop if longer
    return y[rows, np.minimum(t + L // 2, y.shape[1] - 1)] * (t < out_len[:, None])  # zero-pad at the end


def time_stretch(x: torch.Tensor, gen, max_rate: float = 0.15, rates=None) -> torch.Tensor:
    """Tempo change without pitch change: rate r ~ U[1 - max_rate, 1 + max_rate] per example (r > 1 is
    faster; override with `rates`: scalar or (B,)), WSOLA, then centre-crop / zero-pad back to N samples."""
    b, n = x.shape
    r = _uniform(gen, b, 1 - max_rate, 1 + max_rate) if rates is None else torch.as_tensor(rates, dtype=torch.float64)
    r = r.expand(b) if r.dim() == 0 else r
    if r.shape != (b,) or not bool((r > 0).all()):
        raise ValueError(f"rates must be {b} positive numbers")
    y = _wsola(x.detach().cpu().numpy(), r.numpy(), np.full(b, n), n)
    return torch.from_numpy(y).to(x.device, x.dtype)


def pitch_shift(x: torch.Tensor, gen, max_semitones: float = 2.0, semitones=None) -> torch.Tensor:
    """Pitch change without tempo change: s ~ U[-max, max] semitones per example (override with
    `semitones`: scalar or (B,)); band-limited FFT resampling by 2**(s/12), then WSOLA back to N samples."""
    b, n = x.shape
    s = _uniform(gen, b, -max_semitones, max_semitones) if semitones is None else torch.as_tensor(semitones, dtype=torch.float64)
    s = s.expand(b) if s.dim() == 0 else s
    if s.shape != (b,):
        raise ValueError(f"semitones must have shape ({b},)")
    m = np.maximum(np.round(n / 2.0 ** (s.numpy() / 12.0)).astype(np.int64), 2)  # resampled lengths
    spec = sfft.rfft(x.detach().cpu().numpy(), axis=1, norm="forward")  # truncation low-passes at new Nyquist
    z = np.zeros((b, int(m.max())), spec.real.dtype)
    for i, mi in enumerate(m.tolist()):
        z[i, :mi] = sfft.irfft(spec[i, : min(n // 2, mi // 2) + 1], n=mi, norm="forward")
    return torch.from_numpy(_wsola(z, m / n, m, n)).to(x.device, x.dtype)


def babble(n_samples: int, gen_np: np.random.Generator, n_voices: int = 6, sr: int = 16000) -> np.ndarray:
    """Sum of `n_voices` random synthetic voices (random speaker, sex and emotion, circularly shifted by
    random offsets so syllables do not line up), RMS-normalised to synth.TARGET_RMS. float32 (n_samples,)."""
    if n_samples < 1 or n_voices < 1:
        raise ValueError("babble needs n_samples >= 1 and n_voices >= 1")
    m = max(int(n_samples), sr // 2)  # the voice generator wants a few syllables' worth of time
    out = np.zeros(m)
    for _ in range(n_voices):
        spk = synth.speaker_params(int(gen_np.integers(2**31)), int(gen_np.integers(1000)))
        emotion = synth.CLASSES[int(gen_np.integers(len(synth.CLASSES)))]
        out += np.roll(synth._clip(spk, emotion, gen_np, m, sr), int(gen_np.integers(m)))
    out = out[:n_samples]
    return (out * synth.TARGET_RMS / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _babble_bank(rows: int = 6, n_samples: int = 64000) -> torch.Tensor:
    """Fixed (seeded) babble noise bank, built once per process (~0.5 s); used when no bank is given."""
    rng = np.random.default_rng(0xBAB)
    return torch.from_numpy(np.stack([babble(n_samples, rng) for _ in range(rows)]))


def add_noise(x: torch.Tensor, gen, snr_db: float = 10.0, noise_bank: torch.Tensor | None = None) -> torch.Tensor:
    """Mix in noise at exactly `snr_db` per example (mean power of x[b] over that of the added noise).
    Noise: a random row of noise_bank (M, L) from a random offset, wrapped/tiled to N; when None, a cached
    babble bank.  Silent examples (or all-zero noise segments) are returned unchanged.  No clipping."""
    bank = _babble_bank() if noise_bank is None else noise_bank
    if bank.dim() != 2 or bank.shape[0] == 0 or bank.shape[1] == 0:
        raise ValueError(f"noise_bank must be (M, L) with M, L > 0, got {tuple(bank.shape)}")
    b, n = x.shape
    rows = torch.randint(0, bank.shape[0], (b,), generator=gen).numpy()
    offs = torch.randint(0, bank.shape[1], (b,), generator=gen).numpy()
    noise = bank.detach().cpu().numpy()[rows[:, None], (offs[:, None] + np.arange(n)) % bank.shape[1]]
    noise = noise.astype(np.float64)  # numpy, not torch: small ops stall on OpenMP when the CPU is shared
    xn = x.detach().cpu().numpy().astype(np.float64)
    ps, pn = np.mean(xn**2, axis=1, keepdims=True), np.mean(noise**2, axis=1, keepdims=True)
    gain = np.sqrt(ps / (np.maximum(pn, 1e-30) * 10.0 ** (snr_db / 10.0))) * (pn > 0)
    return torch.from_numpy(xn + gain * noise).to(x.device, x.dtype)


def load_noise_bank(folder, n_samples: int, sr: int = 16000, limit: int = 200) -> torch.Tensor:
    """Up to `limit` WAVs found (recursively, sorted) under `folder`, each at `sr` mono, tiled when shorter
    than n_samples or centre-cropped when longer: (M, n_samples) float32. Unusable files are skipped."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file()) if folder.is_dir() else []
    rows, skipped = [], 0
    for path in files:
        if len(rows) >= limit:
            break
        try:
            a = load_audio(path, sr)
        except BadAudio:
            skipped += 1
            continue
        rows.append(np.resize(a, n_samples) if len(a) < n_samples else fix_length(a, n_samples))
    if not rows:
        raise ValueError(f"no usable noise WAV files in {folder} ({len(files)} found, {skipped} unreadable/silent)")
    return torch.from_numpy(np.stack(rows).astype(np.float32))


@torch.no_grad()
def smote(features: torch.Tensor, labels: torch.Tensor, gen, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """SMOTE: synthesise examples of every minority class until each class matches the majority count.
    new = a + u * (b - a): a random example a of the class, b one of its k nearest same-class neighbours
    (Euclidean on flattened features), u ~ U[0, 1]. Returns only the synthetic (features, labels), classes
    in sorted order; empty when already balanced.  A class with a single example is copied."""
    if labels.dim() != 1 or len(labels) != len(features):
        raise ValueError("smote wants features (B, ...) and labels (B,)")
    flat = features.reshape(len(features), -1)
    flat = flat if flat.is_floating_point() else flat.float()
    new_x, new_y = [], []
    if len(labels):
        classes, counts = labels.unique(sorted=True, return_counts=True)
        for c, count in zip(classes.tolist(), counts.tolist()):
            need = int(counts.max()) - count
            if need == 0:
                continue
            pts = flat[labels == c]
            a = torch.randint(0, count, (need,), generator=gen)
            kk = min(k, count - 1)
            if kk > 0:
                dist = torch.cdist(pts, pts, compute_mode="donot_use_mm_for_euclid_dist")
                dist.fill_diagonal_(float("inf"))
                neigh = dist.topk(kk, dim=1, largest=False).indices
                nb = neigh[a, torch.randint(0, kk, (need,), generator=gen)]
            else:
                nb = a
            u = torch.rand(need, 1, generator=gen, dtype=flat.dtype).to(flat.device)
            new_x.append(pts[a] + u * (pts[nb] - pts[a]))
            new_y.append(torch.full((need,), c, dtype=labels.dtype, device=labels.device))
    if not new_x:
        return flat.new_zeros((0, *features.shape[1:])), labels.new_zeros(0)
    return torch.cat(new_x).reshape(-1, *features.shape[1:]), torch.cat(new_y)


class Augmenter:
    """Waveform augmentations chosen by flags, in the order time-stretch, pitch-shift, noise.  Each is
    applied to each example independently with probability p (drawn from this object's own seeded
    generator, so a given seed and call sequence always gives the same output).  x is never modified."""

    def __init__(self, time_stretch: bool = False, pitch_shift: bool = False, noise: bool = False,
                 snr_db: float = 10.0, noise_bank: torch.Tensor | None = None, p: float = 0.5, seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.flags = dict(time_stretch=time_stretch, pitch_shift=pitch_shift, noise=noise)
        self.snr_db, self.noise_bank, self.p = float(snr_db), noise_bank, float(p)
        self.gen = torch.Generator().manual_seed(int(seed))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ops = {"time_stretch": lambda z: time_stretch(z, self.gen),
               "pitch_shift": lambda z: pitch_shift(z, self.gen),
               "noise": lambda z: add_noise(z, self.gen, self.snr_db, self.noise_bank)}
        out = x
        for name, op in ops.items():
            if not self.flags[name]:
                continue
            sel = (torch.rand(x.shape[0], generator=self.gen) < self.p).to(x.device)
            if bool(sel.any()):
                out = out.clone()
                out[sel] = op(out[sel])
        return out
