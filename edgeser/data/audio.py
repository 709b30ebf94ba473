"""Audio loading: any rate to 16 kHz (polyphase), stereo to mono, int/float PCM accepted."""
from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly


class BadAudio(ValueError):
    """A file that cannot be used. `reason` is one of a few fixed phrases (callers skip and count files by it);
    the message may add details of this file."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason


MIN_SECONDS = 0.1  # shorter clips carry no emotion; zero-padded to the clip length they would be near silence
SAMPLE_RATES = (4000, 384_000)  # plausible rates; a header outside them is corrupt (and resampling would explode)
MAX_PEAK = 100.0  # float WAVs may exceed 1.0 a little; far beyond that the samples are not audio in [-1, 1]
_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS", b"ID3", b".snd", b"caff", b"wvpk")


def _unreadable_reason(path: Path) -> str:
    """Why soundfile could not open a file, from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "unreadable file"
    if head.startswith(b"version https://git-lfs"):
        return "Git LFS pointer, not the audio (run git lfs pull)"
    if head.startswith(_AUDIO_MAGIC):
        return "corrupt or truncated audio header"
    try:
        text = head.decode("utf-8")
        if "\x00" not in text:
            return "text file, not audio"
    except UnicodeDecodeError:
        pass
    return "not an audio file"


def _wav_shortfall(path: Path, size: int) -> tuple[int, int] | None:
    """(declared, present) data bytes of a RIFF WAV whose `data` chunk claims more than the file holds."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        for _ in range(64):  # the data chunk follows fmt and a few metadata chunks
            f.seek(pos)
            hdr = f.read(8)
            if len(hdr) < 8:
                return None
            cid, n = hdr[:4], int.from_bytes(hdr[4:], "little")
            if cid == b"data":
                present = size - pos - 8
                # 0 and 0xFFFFFFFF: "unknown", written by streaming recorders; 1 % slack for sloppy writers
                unknown = n in (0, 0xFFFFFFFF)
                return (n, present) if not unknown and present < 0.99 * n else None
            pos += 8 + n + (n & 1)
    return None


def load_audio(path: Path, sr: int = 16000, min_seconds: float = MIN_SECONDS) -> np.ndarray:
    """Mono float32 at `sr`. BadAudio (with a fixed `reason`) for anything unusable: missing, not a file,
    empty, not audio, corrupt or truncated, implausible sample rate, too short, NaN/Inf, out of range, silent."""
    path = Path(path)
    try:
        if not path.exists():  # a dangling symlink too
            raise BadAudio("missing file")
        if not path.is_file():
            raise BadAudio("not a file (a folder?)")
        size = path.stat().st_size
    except OSError as e:
        raise BadAudio("unreadable file", e.strerror or type(e).__name__) from None
    if size == 0:
        raise BadAudio("empty file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            file_sr, frames = int(f.samplerate), f.frames
            if not SAMPLE_RATES[0] <= file_sr <= SAMPLE_RATES[1]:
                raise BadAudio("implausible sample rate", f"{file_sr} Hz")
            x = f.read(dtype="float32", always_2d=True)
    except BadAudio:
        raise
    except Exception:  # soundfile raises several types for unreadable files
        raise BadAudio(_unreadable_reason(path)) from None
    if x.shape[0] == 0:
        raise BadAudio("no samples")
    try:
        short = _wav_shortfall(path, size)
    except OSError:
        short = None
    if short is not None:
        raise BadAudio("truncated (header claims more data than the file holds)",
                       f"{short[1]} of {short[0]} data bytes")
    if x.shape[0] < min_seconds * file_sr:
        raise BadAudio("too short", f"{x.shape[0] / file_sr * 1000:.1f} ms < {min_seconds * 1000:g} ms")
    x = x.mean(axis=1)
    if not np.all(np.isfinite(x)):
        raise BadAudio("NaN or Inf samples")
    peak = float(np.max(np.abs(x)))
    if peak > MAX_PEAK:
        raise BadAudio("samples out of range", f"peak {peak:.3g}, expected [-1, 1]")
    if file_sr != sr:
        g = gcd(file_sr, sr)
        x = resample_poly(x, sr // g, file_sr // g).astype(np.float32)
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
