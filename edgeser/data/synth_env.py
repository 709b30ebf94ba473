"""Synthetic environmental sounds: a stand-in source domain for SoundNet-style pretraining and the MMD term.

SoundNet was pretrained on environmental sound; no such weights or data can be downloaded here, so the
transfer-learning bench pretrains on these six generated classes instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from edgeser.fileio import atomic_path

ENV_CLASSES = ("hum", "rain", "siren", "birds", "knocks", "wind")


def _noise_lp(rng, n, a):
    return lfilter([1 - a], [1, -a], rng.standard_normal(n))


def env_clip(kind: str, rng: np.random.Generator, n: int, sr: int = 16000) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == "hum":
        f0 = rng.uniform(45, 130)
        x = sum(rng.uniform(0.2, 1) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) for h in range(1, 8))
        x = x + 0.1 * rng.standard_normal(n)
    elif kind == "rain":
        x = _noise_lp(rng, n, rng.uniform(0.1, 0.6))
        drops = rng.random(n) < rng.uniform(2e-4, 1e-3)
        x = x + lfilter([1], [1, -0.97], drops * rng.uniform(2, 6, n))
    elif kind == "siren":
        f = rng.uniform(500, 900) + rng.uniform(150, 400) * np.sin(2 * np.pi * rng.uniform(0.3, 2) * t)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.05 * rng.standard_normal(n)
    elif kind == "birds":
        x = 0.03 * rng.standard_normal(n)
        for _ in range(rng.integers(3, 12)):
            start, length = rng.integers(0, max(1, n - 2000)), rng.integers(600, 2000)
            tt = np.arange(length) / sr
            f = rng.uniform(2000, 4000) + rng.uniform(500, 2500) * tt / tt[-1]
            x[start : start + length] += np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(length)
    elif kind == "knocks":
        x = 0.02 * rng.standard_normal(n)
        f, r = rng.uniform(150, 900), rng.uniform(0.990, 0.998)
        a = [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r]
        period = int(sr / rng.uniform(1.5, 6))
        x[:: period] += rng.uniform(3, 8)
        x = lfilter([1], a, x)
    elif kind == "wind":
        x = _noise_lp(rng, n, rng.uniform(0.95, 0.995)) * (1.2 + np.sin(2 * np.pi * rng.uniform(0.1, 0.8) * t))
    else:
        raise ValueError(f"unknown environmental sound kind {kind!r}")
    x = np.asarray(x, dtype=np.float64)
    return (0.06 * x / (np.sqrt(np.mean(x * x)) + 1e-12)).clip(-1, 1).astype(np.float32)


def synthesize_env(out_dir: Path, clips_per_class: int = 40, seconds: float = 2.0, seed: int = 0) -> Path:
    """Writes out_dir/<class>/<class>_<i>.wav (a `folder`-layout corpus) and returns out_dir."""
    out_dir = Path(out_dir)
    n = int(16000 * seconds)
    for ci, kind in enumerate(ENV_CLASSES):
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
        for i in range(clips_per_class):
            rng = np.random.default_rng([seed, ci, i])
            dest = out_dir / kind / f"{kind}_{i:04d}.wav"
            with atomic_path(dest) as tmp:
                sf.write(tmp, env_clip(kind, rng, n), 16000, subtype="PCM_16", format="WAV")
    return out_dir
