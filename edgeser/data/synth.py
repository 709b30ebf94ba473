"""Built-in synthetic speech-emotion corpus (pure numpy/scipy source-filter voices).

Each clip is a string of synthetic syllables: a Rosenberg glottal pulse train driven by
an f0 contour (declination + accent bumps + jitter/shimmer), mixed with aspiration
noise, tilted, and shaped by cascaded formant resonators whose vowel changes per
syllable.  Emotions shift the *distributions* of pitch, pitch range, speaking rate,
spectral tilt, breathiness, voice quality and attack sharpness; the distributions
overlap on purpose so the task is not trivially separable.  Every clip is RMS
normalised, so loudness is not a cue.
"""
from __future__ import annotations

import csv
import pathlib
import wave

import numpy as np
from scipy.signal import lfilter

from edgeser.fileio import atomic_path

CLASSES = ("neutral", "happy", "sad", "angry")
TARGET_RMS = 0.06  # ~ -24.4 dBFS; leaves > 24 dB headroom for peaks

# Emotion profiles: parameter -> (mean, sd).  Sampled per clip, clipped to sane ranges.
_EMOTIONS = {
    #             f0 shift  range  syll/s  tilt a  breath  open q.  attack  jitter  F1 scale
    #              (st)     (st)           (0..1)          quotient  (ms)    (%)
    "neutral": dict(f0=(-0.1, 1.6), rng=(2.7, 1.2), rate=(4.2, 0.6), tilt=(0.67, 0.09),
                    breath=(0.025, 0.04), oq=(0.62, 0.06), attack=(25, 8), jit=(0.46, 0.3), f1=(1.00, 0.04)),
    "happy": dict(f0=(4.3, 1.8), rng=(7.3, 1.8), rate=(5.05, 0.7), tilt=(0.41, 0.09),
                  breath=(0.025, 0.04), oq=(0.52, 0.06), attack=(17, 7), jit=(0.8, 0.35), f1=(1.07, 0.04)),
    "sad": dict(f0=(-2.85, 1.6), rng=(1.6, 1.0), rate=(2.85, 0.55), tilt=(0.89, 0.06),
                breath=(0.28, 0.07), oq=(0.82, 0.06), attack=(47, 10), jit=(1.07, 0.4), f1=(0.91, 0.04)),
    "angry": dict(f0=(3.0, 1.8), rng=(5.3, 1.8), rate=(5.4, 0.7), tilt=(0.12, 0.09),
                  breath=(0.0, 0.03), oq=(0.36, 0.05), attack=(5.5, 4), jit=(1.23, 0.4), f1=(1.15, 0.04)),
}

# Vowel formants (F1, F2, F3) in Hz for an adult male vocal tract (Peterson & Barney-like).
_VOWELS = np.array([(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
                    (570, 840, 2410), (660, 1720, 2410), (490, 1350, 1690), (440, 1020, 2240)], float)
_BANDWIDTHS = np.array([80.0, 110.0, 160.0, 250.0])


def speaker_params(seed: int, index: int) -> dict:
    """Deterministic voice of speaker `index` (even index = male, odd = female)."""
    rng = np.random.default_rng([int(seed), 7919, int(index)])
    female = index % 2 == 1
    return dict(
        name=f"spk{index:02d}",
        female=female,
        f0=float(rng.uniform(170, 250) if female else rng.uniform(90, 140)),
        formant_scale=float(rng.uniform(1.05, 1.2) if female else rng.uniform(0.85, 1.0)),
        breath=float(rng.uniform(0.02, 0.12) + (0.03 if female else 0.0)),
        rate_bias=float(rng.uniform(0.85, 1.15)),
        tilt_bias=float(rng.uniform(-0.08, 0.08)),
    )


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """Klatt 2-pole resonator with unity DC gain."""
    r = np.exp(-np.pi * bw / sr)
    b1, b2 = 2 * r * np.cos(2 * np.pi * freq / sr), -r * r
    return lfilter([1.0 - b1 - b2], [1.0, -b1, -b2], x)


def _sample(rng, profile: dict) -> dict:
    p = {k: rng.normal(m, s) for k, (m, s) in profile.items()}
    p["rng"] = max(p["rng"], 0.5)
    p["rate"] = float(np.clip(p["rate"], 2.0, 7.5))
    p["tilt"] = float(np.clip(p["tilt"], 0.05, 0.92))
    p["breath"] = max(p["breath"], 0.0)
    p["oq"] = float(np.clip(p["oq"], 0.3, 0.9))
    p["attack"] = max(p["attack"], 3.0) / 1000.0
    p["jit"] = max(p["jit"], 0.1) / 100.0
    return p


def _syllables(rng, duration: float, rate: float) -> list[tuple[float, float]]:
    """(start, end) times of voiced syllables, separated by short gaps and rare pauses."""
    t, out = rng.uniform(0.03, 0.2), []
    while True:
        period = rng.uniform(0.7, 1.3) / rate
        dur = period * rng.uniform(0.55, 0.8)
        if t + dur > duration - 0.02:
            break
        out.append((t, t + dur))
        t += period + (rng.uniform(0.15, 0.35) if rng.random() < 0.1 else 0.0)
    return out or [(0.02, max(duration - 0.02, 0.03))]


def _clip(spk: dict, emotion: str, rng, n: int, sr: int) -> np.ndarray:
    p = _sample(rng, _EMOTIONS[emotion])
    t = np.arange(n) / sr
    syl = _syllables(rng, n / sr, p["rate"] * spk["rate_bias"])
    # Pitch contour in semitones re speaker base: shift + declination + accent bumps.
    st = p["f0"] - rng.uniform(1.0, 3.5) * t / t[-1]
    for s, e in syl:
        if rng.random() < 0.6:
            st += p["rng"] * rng.uniform(0.3, 1.0) * np.exp(-0.5 * ((t - (s + e) / 2) / ((e - s) * 0.5)) ** 2)
    drift = lfilter([0.002], [1, -0.998], rng.standard_normal(n)) * p["jit"] * 40
    f0 = spk["f0"] * 2.0 ** (st / 12.0) * (1.0 + drift)
    # Rosenberg glottal pulse by phase accumulation, with per-period shimmer.
    phase = np.cumsum(f0 / sr)
    frac, cyc = phase % 1.0, phase.astype(np.int64)
    tp, tn = p["oq"] * 0.65, p["oq"] * 0.35
    g = np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                 np.where(frac < tp + tn, np.cos(0.5 * np.pi * np.minimum(frac - tp, tn) / tn), 0.0))
    g *= 1.0 + p["jit"] * 3.0 * rng.standard_normal(cyc[-1] + 1)[cyc]
    src = np.diff(g, prepend=0.0)
    a = float(np.clip(p["tilt"] + spk["tilt_bias"], 0.02, 0.95))
    src = lfilter([1 - a], [1, -a], src)
    src /= np.sqrt(np.mean(src**2)) + 1e-12
    breath = p["breath"] + spk["breath"]
    asp = np.diff(rng.standard_normal(n + 1)) * (0.4 + g) * breath * 1.5
    source = src + asp
    # Syllables: envelope x formant filter (one vowel per syllable), overlap-added.
    out = np.zeros(n)
    scale = spk["formant_scale"] * np.array([p["f1"], 1.0, 1.0])
    bw = _BANDWIDTHS * rng.uniform(0.8, 1.25) * (1.0 + breath)
    tail = int(0.03 * sr)
    for s, e in syl:
        i0, i1 = int(s * sr), int(e * sr)
        m = i1 - i0
        att = min(max(int(p["attack"] * sr), 1), m // 2)
        rel = max(min(int(rng.uniform(0.03, 0.07) * sr), m - att), 1)
        env = np.ones(m)
        env[:att] = 0.5 - 0.5 * np.cos(np.pi * np.arange(att) / att)
        env[-rel:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(rel) / rel)
        env *= np.linspace(1.0, rng.uniform(0.5, 0.9), m) * rng.uniform(0.5, 1.0)
        seg = np.concatenate([source[i0:i1] * env, np.zeros(tail)])
        if rng.random() < 0.5:  # consonant-like noise burst at onset
            k = min(int(rng.uniform(0.01, 0.04) * sr), len(seg))
            seg[:k] += np.diff(rng.standard_normal(k + 1)) * rng.uniform(0.1, 0.5)
        formants = np.append(_VOWELS[rng.integers(len(_VOWELS))] * scale, 3500 * spk["formant_scale"])
        formants *= rng.uniform(0.93, 1.07, 4)
        for f, b in zip(formants, bw):
            seg = _resonator(seg, min(f, 0.45 * sr), b, sr)
        seg = seg[: n - i0]
        out[i0 : i0 + len(seg)] += seg
    # Background noise at 15-30 dB SNR, then RMS normalisation (peak-safe).
    out /= np.sqrt(np.mean(out**2)) + 1e-12
    noise = lfilter([1.0], [1.0, -rng.uniform(0.0, 0.9)], rng.standard_normal(n))
    out += noise / (np.sqrt(np.mean(noise**2)) + 1e-12) * 10 ** (-rng.uniform(15, 30) / 20)
    out *= TARGET_RMS / np.sqrt(np.mean(out**2))
    peak = np.max(np.abs(out))
    if peak > 0.95:  # very rare: soft-limit then restore the RMS
        out = 0.95 * np.tanh(out / 0.95)
        out *= TARGET_RMS / np.sqrt(np.mean(out**2))
    return np.clip(out, -1.0, 32767 / 32768)


def _write_wav(path: pathlib.Path, x: np.ndarray, sr: int) -> None:
    pcm = np.round(x * 32768).clip(-32768, 32767).astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def synthesize_corpus(out_dir, seed: int = 0, clips_per_class: int = 160, n_speakers: int = 10,
                      clip_seconds: float = 2.0, sample_rate: int = 16000,
                      on_clip=None) -> pathlib.Path:
    """Writes out_dir/wav/<speaker>/<speaker>_<label>_<idx>.wav (16-bit PCM mono) and out_dir/manifest.csv
    with header `path,label,speaker` (paths relative to out_dir, forward slashes). Returns the manifest path.
    clips_per_class is the total per class, spread round-robin over the speakers (so every speaker has every class).
    on_clip: optional callable(done:int, total:int) called after each clip (for a progress bar)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(n_speakers, (int, np.integer)) or n_speakers < 2:
        raise ValueError(f"n_speakers must be an integer >= 2, got {n_speakers!r}")
    if not isinstance(clips_per_class, (int, np.integer)) or clips_per_class < n_speakers:
        raise ValueError(f"clips_per_class must be >= n_speakers ({n_speakers}), got {clips_per_class!r}")
    if not isinstance(sample_rate, (int, np.integer)) or not 8000 <= sample_rate <= 96000:
        raise ValueError(f"sample_rate must be an integer in [8000, 96000], got {sample_rate!r}")
    if not isinstance(clip_seconds, (int, float)) or not 0.25 <= clip_seconds <= 60:
        raise ValueError(f"clip_seconds must be in [0.25, 60], got {clip_seconds!r}")
    if on_clip is not None and not callable(on_clip):
        raise ValueError("on_clip must be callable or None")

    out_dir = pathlib.Path(out_dir)
    n = int(round(clip_seconds * sample_rate))
    total, done, rows = clips_per_class * len(CLASSES), 0, []
    speakers = [speaker_params(seed, i) for i in range(n_speakers)]
    for si, spk in enumerate(speakers):
        spk_dir = out_dir / "wav" / spk["name"]
        spk_dir.mkdir(parents=True, exist_ok=True)
        for ci, label in enumerate(CLASSES):
            for idx in range(si, clips_per_class, n_speakers):  # round-robin assignment
                rng = np.random.default_rng([int(seed), si, ci, idx])
                name = f"{spk['name']}_{label}_{idx:04d}.wav"
                _write_wav(spk_dir / name, _clip(spk, label, rng, n, sample_rate), sample_rate)
                rows.append((f"wav/{spk['name']}/{name}", label, spk["name"]))
                done += 1
                if on_clip is not None:
                    on_clip(done, total)

    manifest = out_dir / "manifest.csv"
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("path", "label", "speaker"))
        writer.writerows(rows)
    return manifest
