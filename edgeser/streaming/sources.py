"""Where stream audio comes from: a file, raw PCM on stdin, or a microphone. Each yields float32 chunks."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from edgeser.data.audio import BadAudio, load_audio
from edgeser.streaming.artifact import StreamError

PCM_FORMATS = {"s16le": (np.dtype("<i2"), 1 / 32768.0), "f32le": (np.dtype("<f4"), 1.0)}


def wav_chunks(path: Path, chunk: int, sr: int = 16000) -> Iterator[np.ndarray]:
    """Any file soundfile reads, resampled to 16 kHz mono, in `chunk`-sample pieces."""
    if not Path(path).is_file():
        raise StreamError(f"--wav {path}: no such file")
    try:
        audio = load_audio(Path(path), sr)
    except BadAudio as e:
        raise StreamError(f"--wav {path}: {e}") from None
    for i in range(0, len(audio), chunk):
        yield audio[i : i + chunk]


def pcm_chunks(stream: BinaryIO, chunk: int, fmt: str = "s16le") -> Iterator[np.ndarray]:
    """Raw mono 16 kHz PCM from a byte stream (stdin): s16le (e.g. `arecord -f S16_LE -r 16000 -c 1 -t raw`)
    or f32le. A trailing partial sample at the end of the stream is dropped."""
    if fmt not in PCM_FORMATS:
        raise StreamError(f"--format {fmt}: expected one of {', '.join(PCM_FORMATS)}")
    dtype, scale = PCM_FORMATS[fmt]
    nbytes, rest = chunk * dtype.itemsize, b""
    read = getattr(stream, "read1", stream.read)  # read1: what has arrived now (live), not a full chunk
    while True:
        data = read(nbytes)
        if not data:
            return
        data = rest + data
        n = len(data) // dtype.itemsize * dtype.itemsize
        rest = data[n:]
        if n:
            yield np.frombuffer(data[:n], dtype=dtype).astype(np.float32) * scale


def stdin_chunks(chunk: int, fmt: str) -> Iterator[np.ndarray]:
    return pcm_chunks(sys.stdin.buffer, chunk, fmt)


def mic_chunks(chunk: int, sr: int = 16000) -> Iterator[np.ndarray]:
    """The default input device via the optional `sounddevice` package (PortAudio); Ctrl-C stops."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise StreamError(f"--mic needs the optional `sounddevice` package and PortAudio ({e}); "
                          f"or pipe PCM in: arecord -f S16_LE -r {sr} -c 1 -t raw | edgeser stream ART --stdin")
    try:
        with sd.InputStream(samplerate=sr, channels=1, dtype="float32", blocksize=chunk) as mic:
            while True:
                block, _ = mic.read(chunk)
                yield block[:, 0].copy()
    except sd.PortAudioError as e:
        raise StreamError(f"--mic: no usable input device ({e})") from None
