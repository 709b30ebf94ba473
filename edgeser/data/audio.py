"""Audio loading: any rate to 16 kHz (polyphase), stereo to mono, int/float PCM accepted."""
from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly


class BadAudio(ValueError):
    """A file that cannot be used; the message says why. Callers skip and count it."""


def load_audio(path: Path, sr: int = 16000) -> np.ndarray:
    try:
        x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise BadAudio(f"not readable audio ({type(e).__name__})") from None
    if x.shape[0] == 0:
        raise BadAudio("empty")
    x = x.mean(axis=1)
    if not np.all(np.isfinite(x)):
        raise BadAudio("NaN or Inf samples")
    if file_sr != sr:
        g = gcd(int(file_sr), sr)
        x = resample_poly(x, sr // g, int(file_sr) // g).astype(np.float32)
    if float(np.max(np.abs(x))) < 1e-5:
        raise BadAudio("silent")
    return x


def fix_length(x: np.ndarray, n: int) -> np.ndarray:
    """Centre-crop or zero-pad to n samples."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start : start + n]
    out = np.zeros(n, dtype=np.float32)
    out[: len(x)] = x
    return out
