"""Atomic writes (temp file in the same folder, then rename) and hashing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(dest: Path):
    """Yield a temp path beside `dest` (same suffix, which some writers insist on); rename it onto `dest`
    only if the block succeeds, so a crash never leaves a half-written file under the real name."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix, dir=dest.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield Path(tmp)
        if Path(tmp).is_dir() and dest.is_dir():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)


def write_text(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: Path, obj) -> None:
    write_text(dest, json.dumps(obj, indent=2, default=str) + "\n")


def save_state(dest: Path, state: dict) -> None:
    import torch

    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # a file object: the zip's folder is "archive", not the temp file's random name


def load_state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def sha256(path: Path) -> str:
    """sha256 of a file, or of a folder (e.g. .mlpackage): relative names and contents in sorted order."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_bytes(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
