"""Rows of audio that live on disk and are read a batch at a time: what Split.x and Split.full hold for a
corpus in the store (edgeser/data/store.py). Each reads only the rows asked for; none keeps audio in memory.

- Utterances: whole utterances (their own lengths), as float32 numpy arrays: `full[i]`, `len(full)`,
  `full.lengths`.
- Clips: the fixed-length clips (data.clip_seconds; centre crop or zero pad, as fix_length) of Utterances,
  as float32 tensors: `x[idx]` for an int, a slice, a list or a tensor of indices; `x.shape`, `len(x)`.
- RowFile: float32 rows of a .npy file (e.g. augmented KD views), read with positioned reads.
- Stack: rows of several of these, one after another (the KD set's train rows: clips, then views).

Each has `digest()`: what its rows are, by content (store keys, a file's hash), without reading the audio.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from edgeser.data.audio import fix_length
from edgeser.data.store import AudioStore, npy_header


def _indices(idx, n: int) -> np.ndarray:
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    if isinstance(idx, torch.Tensor):
        idx = idx.numpy()
    a = np.asarray(idx, dtype=np.int64).reshape(-1)
    if a.size and (a.min() < -n or a.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(a < 0, a + n, a)


class Utterances:
    def __init__(self, store: AudioStore, keys: list[str], lengths):
        self.store, self.keys, self.lengths = store, list(keys), np.asarray(lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.store.read(self.keys[int(i)])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def subset(self, idx) -> "Utterances":
        ix = _indices(idx, len(self))
        return Utterances(self.store, [self.keys[i] for i in ix], self.lengths[ix])

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()


class _Rows:
    """Common to the (N, samples) row sources: shape, len, numpy()."""

    n: int

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.n)

    def numpy(self) -> np.ndarray:
        """Every row at once (small splits only: the caller asks for the memory)."""
        return self[:].numpy()

    def __getitem__(self, idx) -> torch.Tensor:
        ix = _indices(idx, len(self))
        out = self.gather(ix)
        return out[0] if isinstance(idx, (int, np.integer)) else out

    def gather(self, ix: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


class Clips(_Rows):
    def __init__(self, utterances: Utterances, n: int):
        self.utterances, self.n = utterances, int(n)

    def __len__(self) -> int:
        return len(self.utterances)

    def gather(self, ix: np.ndarray) -> torch.Tensor:
        out = np.empty((len(ix), self.n), np.float32)
        for j, i in enumerate(ix):
            out[j] = fix_length(self.utterances[int(i)], self.n)
        return torch.from_numpy(out)

    def digest(self) -> str:
        return hashlib.sha256(f"clips:{self.n}:{self.utterances.digest()}".encode()).hexdigest()


class RowFile(_Rows):
    def __init__(self, path, digest: str):
        self.path, self._digest = path, digest
        shape, dtype, self.offset = npy_header(path)
        if dtype != np.dtype("<f4") or len(shape) != 2:
            raise ValueError(f"{path}: expected float32 rows (N, samples), got {dtype} {shape}")
        self.rows, self.n = shape

    def __len__(self) -> int:
        return self.rows

    def gather(self, ix: np.ndarray) -> torch.Tensor:
        out = np.empty((len(ix), self.n), np.float32)
        width = self.n * 4
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for j, i in enumerate(ix):
                buf = os.pread(fd, width, self.offset + int(i) * width)
                out[j] = np.frombuffer(buf, "<f4")
        finally:
            os.close(fd)
        return torch.from_numpy(out)

    def digest(self) -> str:
        return self._digest


class Stack(_Rows):
    def __init__(self, parts: list):
        self.parts = list(parts)
        ns = {p.shape[1] for p in self.parts}
        if len(ns) != 1:
            raise ValueError(f"rows of different lengths cannot stack: {sorted(ns)}")
        self.n = ns.pop()
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def gather(self, ix: np.ndarray) -> torch.Tensor:
        out = torch.empty(len(ix), self.n)
        part = np.searchsorted(self.starts, ix, side="right") - 1
        for k in np.unique(part):
            sel = np.nonzero(part == k)[0]
            p = self.parts[k]
            local = ix[sel] - self.starts[k]
            out[torch.from_numpy(sel)] = p[torch.from_numpy(local)] if isinstance(p, torch.Tensor) else p.gather(local)
        return out

    def digest(self) -> str:
        h = hashlib.sha256(b"stack")
        for p in self.parts:
            h.update((p.digest() if hasattr(p, "digest") else tensor_digest(p)).encode())
        return h.hexdigest()


def tensor_digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


def rows_digest(x) -> str:
    """The content digest of any row source: an in-memory tensor by its bytes, the others by their keys."""
    return x.digest() if hasattr(x, "digest") else tensor_digest(x)


class Extended:
    """Whole utterances from the store followed by in-memory ones (dataset.append_rows on a stored split)."""

    def __init__(self, stored: Utterances, more: list[np.ndarray]):
        self.stored, self.more = stored, list(more)
        self.lengths = np.concatenate([stored.lengths, [len(w) for w in self.more]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        i = int(i)
        return self.stored[i] if i < len(self.stored) else self.more[i - len(self.stored)]

    def __iter__(self):
        return (self[i] for i in range(len(self)))
