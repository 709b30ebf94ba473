"""The on-disk audio store: every source file decoded and resampled once, kept by its content.

Layout of a store folder (data.store, default RUN/data/store):

    objects/<k[:2]>/<k>.npy   one utterance, mono at the store's rate: int16 when that is lossless (PCM16 at
                              its own rate: x * 32768 is an integer for every sample), else float32
    objects/<k[:2]>/<k>.bad   the BadAudio reason of a file that cannot be used (not decoded again)
    stat-cache.json           (path, size, mtime_ns) -> sha256 of the file's bytes, so unchanged files are not
                              re-read to be hashed; a file whose size or mtime changed is hashed again
    views/<k>.npy             float32 rows (N, samples) derived from the store, e.g. augmented KD views

k = sha256(file bytes, sample rate, STORE_VERSION): a changed file, or another rate, is another object, and
only it is decoded again. One .npy per utterance rather than shards: the key of a shard would change with any
of its files, and these are read with plain reads (np.load without mmap), so the pages they pass through are
page cache, not this process's memory (a memory map that a pass reads end to end counts in its RSS).

Why not a library: Hugging Face datasets, litdata and mosaicml-streaming key their caches by the building
function's fingerprint or by whole-dataset shards, not by each source file's content, and each would add a
large dependency for what numpy's .npy format and a content hash do here. Readers never take a lock: objects
are written to a temp file and renamed, so a reader sees a whole object or none, and concurrent writers of
the same key write the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from edgeser.data.audio import BadAudio, load_audio
from edgeser.errors import InputError
from edgeser.fileio import atomic_path, sha256

STORE_VERSION = 1
_SCALE = 32768.0


def lossless_int16(x: np.ndarray) -> np.ndarray | None:
    """x as int16 (x * 32768) when that is exact, else None."""
    if x.size and float(np.max(np.abs(x))) > 32767 / _SCALE:
        return None
    q = np.round(x.astype(np.float64) * _SCALE)
    return q.astype(np.int16) if np.array_equal(q / _SCALE, x.astype(np.float64)) else None


def as_float(a: np.ndarray) -> np.ndarray:
    """A stored utterance as float32 in [-1, 1]."""
    return (a.astype(np.float32) / np.float32(_SCALE)) if a.dtype == np.int16 else a.astype(np.float32)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, read from its header only."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        return shape, dtype, f.tell()


CACHE_BYTES = 128 << 20  # stored utterances kept after a read (as stored: int16 mostly), least recent out first


class ByteBoundedCache:
    """key -> array, at most `limit` bytes of arrays, least recently used dropped first: a small corpus is read
    from disk once and then from memory; a large one costs this much memory and no more."""

    def __init__(self, limit: int):
        from collections import OrderedDict

        self.limit, self.bytes, self._d = limit, 0, OrderedDict()

    def get(self, key):
        a = self._d.get(key)
        if a is not None:
            self._d.move_to_end(key)
        return a

    def put(self, key, a: np.ndarray) -> None:
        if a.nbytes > self.limit or key in self._d:
            return
        self._d[key] = a
        self.bytes += a.nbytes
        while self.bytes > self.limit:
            _, old = self._d.popitem(last=False)
            self.bytes -= old.nbytes

    def __getstate__(self):  # a DataLoader worker starts with an empty cache of its own
        return {"limit": self.limit, "bytes": 0, "_d": type(self._d)()}


def read_npy_1d(path: Path) -> np.ndarray:
    """A 1-D int16 or float32 .npy file as the store writes it (np.save), read without np.load's header
    parser (ast.literal_eval: most of the time of reading a short utterance); anything else through np.load."""
    with open(path, "rb") as f:
        b = f.read()
    if b[:8] == b"\x93NUMPY\x01\x00":
        hl = int.from_bytes(b[8:10], "little")
        head = b[10 : 10 + hl]
        for descr, dtype in ((b"'<i2'", np.int16), (b"'<f4'", np.float32)):
            if b"'descr': " + descr in head and b"'fortran_order': False" in head:
                return np.frombuffer(b, dtype, offset=10 + hl)
    return np.load(path)


class AudioStore:
    def __init__(self, root: Path, sample_rate: int, field: str = "data.store", writable: bool = True):
        """writable=False: a reader of a store another process filled (torchrun ranks other than 0): it
        writes nothing, and an object it lacks is an error."""
        self.root, self.sample_rate, self.writable = Path(root), int(sample_rate), writable
        try:
            if not writable:
                raise FileExistsError
            (self.root / "objects").mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except FileExistsError:
            pass
        except OSError as e:
            raise InputError(f"{field}: the store folder {self.root} is not writable ({e.strerror or e})") from None
        self._stat_path = self.root / "stat-cache.json"
        try:
            self._stats = json.loads(self._stat_path.read_text()) if self._stat_path.is_file() else {}
        except (OSError, ValueError):
            self._stats = {}  # a damaged cache only costs re-hashing
        self._dirty = False
        self.decoded = 0  # files decoded by this object (the rest came from the store)
        self._cache = ByteBoundedCache(CACHE_BYTES)

    # --- keys ---
    def file_sha(self, path: Path) -> str:
        st = os.stat(path)
        k = str(Path(path).resolve())
        hit = self._stats.get(k)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256(path)
        self._stats[k] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def key(self, path: Path) -> str:
        return hashlib.sha256(f"{self.file_sha(path)}:{self.sample_rate}:{STORE_VERSION}".encode()).hexdigest()

    def object_path(self, key: str, suffix: str = ".npy") -> Path:
        return self.root / "objects" / key[:2] / f"{key}{suffix}"

    # --- writing ---
    def put(self, path: Path) -> tuple[str, int]:
        """(key, samples) of a source file, decoding it only when the store lacks it. BadAudio (also for a file
        recorded as bad before) and FileNotFoundError as load_audio raises them."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(path)
        try:
            key = self.key(path)
        except OSError as e:
            raise BadAudio("unreadable file", e.strerror or type(e).__name__) from None
        obj, bad = self.object_path(key), self.object_path(key, ".bad")
        if obj.is_file():
            return key, int(npy_header(obj)[0][0])
        if bad.is_file():
            raise BadAudio(bad.read_text())
        if not self.writable:
            raise RuntimeError(f"{self.root}: the store lacks {path} (its writer should have decoded it)")
        try:
            wav = load_audio(path, self.sample_rate)
        except BadAudio as e:
            with atomic_path(bad) as tmp:
                tmp.write_text(e.reason)
            raise
        q = lossless_int16(wav)
        with atomic_path(obj) as tmp:
            np.save(tmp, q if q is not None else wav.astype(np.float32))
        self.decoded += 1
        return key, len(wav)

    def save(self) -> None:
        """Write the stat cache (atomically) if it changed."""
        if self._dirty and self.writable:
            with atomic_path(self._stat_path) as tmp:
                tmp.write_text(json.dumps(self._stats))
            self._dirty = False

    # --- reading ---
    def read(self, key: str) -> np.ndarray:
        """One utterance, float32 (from the cache of recently read ones, else its file)."""
        raw = self._cache.get(key)
        if raw is None:
            raw = read_npy_1d(self.object_path(key))
            self._cache.put(key, raw)
        return as_float(raw)

    def view_path(self, key: str) -> Path:
        return self.root / "views" / f"{key}.npy"


class RowWriter:
    """Writes float32 rows (N, n) to a .npy file chunk by chunk (temp file, renamed on close), never holding
    more than one chunk: np.lib.format's header, then the raw rows."""

    def __init__(self, dest: Path, rows: int, n: int):
        self.dest, self.rows, self.n, self.written = Path(dest), rows, n, 0
        self._ctx = atomic_path(self.dest)
        self.tmp = self._ctx.__enter__()
        self._f = open(self.tmp, "wb")
        np.lib.format.write_array_header_1_0(self._f, {"descr": "<f4", "fortran_order": False, "shape": (rows, n)})

    def write(self, x) -> None:
        a = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
        if a.ndim != 2 or a.shape[1] != self.n:
            raise ValueError(f"rows of {self.n} samples expected, got {a.shape}")
        self._f.write(a.tobytes())
        self.written += len(a)

    def close(self) -> None:
        self._f.close()
        if self.written != self.rows:
            self._ctx.__exit__(ValueError, ValueError("short"), None)
            raise ValueError(f"{self.dest}: {self.written} of {self.rows} rows written")
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._f.close()
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
