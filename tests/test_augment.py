"""Augmentations: SpecAugment mask, WSOLA time-stretch, pitch shift, noise at exact SNR, babble, SMOTE."""
from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import welch

from edgeser.data import augment as A

SR = 16000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _tone(freq, seconds=2.0, b=1):
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (0.5 * torch.sin(2 * torch.pi * freq * t)).float().repeat(b, 1)


def _dominant_hz(x: torch.Tensor) -> float:
    x = x.double().numpy()
    x = x[len(x) // 8 : -len(x) // 8]  # ignore the edges
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.argmax(spec)) * SR / (8 * len(x))


def _onset_offset(y: torch.Tensor) -> tuple[int, int]:
    hot = (y.abs() > 0.1 * y.abs().max()).nonzero().squeeze(1)
    return int(hot[0]), int(hot[-1])


def _snr_db(clean, noisy):
    c, z = clean.numpy().astype(np.float64), noisy.numpy().astype(np.float64)
    return 10 * np.log10(np.mean(c**2, axis=1) / np.mean((z - c) ** 2, axis=1))


def test_freq_mask_masks_one_band_of_8_bins():
    torch.manual_seed(0)
    mel = torch.rand(16, 40, 30) * 1.8 - 0.9
    out = A.freq_mask(mel, _gen(1), fraction=0.2)
    assert out.shape == mel.shape and not torch.equal(out, mel)
    starts = set()
    for b in range(16):
        changed = (out[b] != mel[b]).any(dim=1).nonzero().squeeze(1).tolist()
        assert len(changed) == 8 and changed == list(range(changed[0], changed[0] + 8))
        starts.add(changed[0])
        band = out[b, changed[0] : changed[0] + 8]
        assert torch.all(band == mel[b].min())
    assert len(starts) > 3  # random start per example
    assert torch.equal(out, A.freq_mask(mel, _gen(1)))  # deterministic


@pytest.mark.parametrize("rate", [0.85, 1.15])
def test_time_stretch_keeps_pitch(rate):
    x = _tone(220.0, b=2)
    y = A.time_stretch(x, _gen(), rates=[rate, rate])
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert abs(_dominant_hz(y[0]) - 220.0) < 0.02 * 220.0


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_time_stretch_moves_onsets_by_the_rate(rate):
    n = 2 * SR
    x = torch.zeros(1, n)
    i0, i1 = int(0.5 * SR), int(0.7 * SR)
    x[0, i0:i1] = _tone(1000.0, 0.2)[0]
    y = A.time_stretch(x, _gen(), rates=rate)[0]
    shift = max(round(n / rate) - n, 0) // 2  # centre crop when the stretched clip is longer
    on, off = _onset_offset(y)
    assert y.shape == (n,)
    assert abs(on - (i0 / rate - shift)) < A._FRAME and abs(off - (i1 / rate - shift)) < A._FRAME
    if rate > 1:  # shorter clip: zero-padded at the end
        assert torch.all(y[round(n / rate) :] == 0)


def test_time_stretch_random_rates_are_deterministic():
    x = torch.randn(3, 8000) * 0.1
    a, b = A.time_stretch(x, _gen(5)), A.time_stretch(x, _gen(5))
    assert torch.equal(a, b) and a.shape == x.shape


def test_pitch_shift_octave_doubles_frequency_and_keeps_timing():
    x = _tone(200.0, b=2)
    y = A.pitch_shift(x, _gen(), semitones=[12.0, -12.0])
    assert y.shape == x.shape
    assert abs(_dominant_hz(y[0]) - 400.0) < 0.03 * 400.0
    assert abs(_dominant_hz(y[1]) - 100.0) < 0.03 * 100.0
    burst = torch.zeros(1, 2 * SR)
    burst[0, SR // 2 : int(0.7 * SR)] = _tone(500.0, 0.2)[0]
    on, off = _onset_offset(A.pitch_shift(burst, _gen(), semitones=2.0)[0])
    assert abs(on - SR // 2) < A._FRAME and abs(off - 0.7 * SR) < A._FRAME  # tempo preserved


@pytest.mark.parametrize("bank_len", [1000, 40000])
def test_add_noise_exact_snr_from_bank(bank_len):
    torch.manual_seed(0)
    x = _tone(300.0, 1.0, b=4) * torch.tensor([[1.0], [0.1], [0.5], [0.02]])
    bank = torch.randn(3, bank_len)
    for snr in (-5.0, 10.0, 30.0):
        y = A.add_noise(x, _gen(2), snr_db=snr, noise_bank=bank)
        assert np.all(np.abs(_snr_db(x, y) - snr) < 0.1)
    assert torch.equal(y, A.add_noise(x, _gen(2), snr_db=30.0, noise_bank=bank))
    silent = torch.zeros(2, 1000)
    assert torch.equal(A.add_noise(silent, _gen(), noise_bank=bank), silent)


def test_add_noise_default_babble_exact_snr():
    x = _tone(300.0, 1.0, b=3)
    y = A.add_noise(x, _gen(4), snr_db=10.0)
    assert np.all(np.abs(_snr_db(x, y) - 10.0) < 0.1)


def _flatness(x: np.ndarray) -> float:
    _, p = welch(x, fs=SR, nperseg=512)
    p = p[1:]
    return float(np.exp(np.mean(np.log(p + 1e-20))) / np.mean(p))


def test_babble_is_not_white_and_deterministic():
    a = A.babble(SR, np.random.default_rng(3))
    assert a.shape == (SR,) and a.dtype == np.float32
    assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(0.06, rel=1e-3)
    white = _flatness(np.random.default_rng(0).standard_normal(SR))
    assert white > 0.8 and _flatness(a) < 0.3 * white
    assert np.array_equal(a, A.babble(SR, np.random.default_rng(3)))
    assert not np.array_equal(a, A.babble(SR, np.random.default_rng(4)))


def test_load_noise_bank_skips_bad_files(tmp_path):
    good = (0.3 * np.random.default_rng(0).standard_normal(1600)).astype(np.float32)
    sf.write(tmp_path / "good.wav", good, SR, subtype="FLOAT")
    sf.write(tmp_path / "silent.wav", np.zeros(1600, np.float32), SR)
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    bank = A.load_noise_bank(tmp_path, 4000)
    assert bank.shape == (1, 4000) and bank.dtype == torch.float32
    assert np.allclose(bank[0].numpy(), np.resize(good, 4000))  # short file tiled
    (tmp_path / "good.wav").unlink()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        A.load_noise_bank(tmp_path, 4000)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        A.load_noise_bank(empty, 4000)


def test_smote_balances_on_segments_and_is_deterministic():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 3 + [3] * 1)
    feats = torch.randn(len(labels), 2, 3)
    sx, sy = A.smote(feats, labels, _gen(7), k=3)
    assert sx.shape[1:] == feats.shape[1:] and len(sx) == len(sy) == 4 + 7 + 9
    assert torch.bincount(torch.cat([labels, sy])).tolist() == [10, 10, 10, 10]
    flat = feats.reshape(len(feats), -1).double()
    for s, c in zip(sx.reshape(len(sx), -1).double(), sy):
        pts = flat[labels == c]
        best = float("inf")
        for a in pts:
            for b in pts:
                d = b - a
                u = 0.0 if d.norm() == 0 else float(((s - a) @ d) / (d @ d))
                if -1e-6 <= u <= 1 + 1e-6:
                    best = min(best, float((a + u * d - s).norm()))
        assert best < 1e-5
    sx2, sy2 = A.smote(feats, labels, _gen(7), k=3)
    assert torch.equal(sx, sx2) and torch.equal(sy, sy2)
    ex, ey = A.smote(feats[:12], torch.tensor([0, 1] * 6), _gen())
    assert ex.shape == (0, 2, 3) and ey.shape == (0,)


def test_augmenter_deterministic_and_identity_when_off():
    torch.manual_seed(0)
    x = torch.randn(6, SR) * 0.1
    x0 = x.clone()
    assert torch.equal(A.Augmenter(seed=3)(x), x)
    kw = dict(time_stretch=True, pitch_shift=True, noise=True, noise_bank=torch.randn(2, 5000), p=0.5, seed=11)
    a, b = A.Augmenter(**kw), A.Augmenter(**kw)
    ya, yb = [a(x) for _ in range(2)], [b(x) for _ in range(2)]
    assert all(torch.equal(u, v) for u, v in zip(ya, yb)) and not torch.equal(ya[0], ya[1])
    assert ya[0].shape == x.shape and torch.equal(x, x0)
    assert torch.equal(A.Augmenter(noise=True, p=0.0)(x), x)
    assert not torch.isclose(A.Augmenter(noise=True, p=1.0)(x), x).all(dim=1).any()


def test_clip_peaks_clamps_at_the_drawn_level_below_each_peak():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2000, generator=g) * torch.linspace(0.01, 0.9, 64)[:, None]
    y = A.clip_peaks(x, torch.Generator().manual_seed(1), 6.0, 0.5)
    peak, limit = x.abs().amax(1), y.abs().amax(1)
    clipped = limit < peak
    assert 16 < int(clipped.sum()) < 48  # p = 0.5 of 64 clips
    ratio_db = 20 * torch.log10(peak[clipped] / limit[clipped])
    assert float(ratio_db.min()) >= 0 and float(ratio_db.max()) <= 6.0 + 1e-4  # 0..6 dB past the peak
    assert torch.equal(y[~clipped], x[~clipped])  # the others untouched
    inside = x[clipped].abs() < limit[clipped, None]
    assert torch.equal(y[clipped][inside], x[clipped][inside])  # only the samples past the limit change
    assert torch.equal(A.clip_peaks(x, torch.Generator().manual_seed(1), 0.0, 1.0), x)  # 0 dB: no change
    assert torch.equal(A.clip_peaks(x, torch.Generator().manual_seed(1), 6.0, 0.0), x)  # p = 0: no change
    again = A.clip_peaks(x, torch.Generator().manual_seed(1), 6.0, 0.5)
    assert torch.equal(again, y)  # its generator decides
    with pytest.raises(ValueError, match="max_db"):
        A.clip_peaks(x, g, -1.0, 0.5)
