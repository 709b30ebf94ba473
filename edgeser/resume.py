"""The engine's stage cache: a content-hash key per stage and a done marker naming the stage's outputs.

A stage's key covers the recipe sections it declares (the target as its profile's content), the key and output
hashes of the stage before it (so, by the chain, everything upstream, including the loaded corpus), the seed and
the package version. `compress --resume` skips a stage whose stages/<name>/done.json has the same key and whose
outputs still have the recorded sha256; anything else runs again. done.json is written last, atomically, so a
stage killed at any point is simply not done. Training loops continue from their epoch checkpoints
(edgeser/checkpoint.py), so a resumed run ends byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import random
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from edgeser.fileio import sha256, write_json
from edgeser.run_dir import RunDir



def package_version() -> str:
    try:
        return metadata.version("edgeser")
    except metadata.PackageNotFoundError:
        return "dev"


def stage_key(stage: str, sections: dict, seed: int, upstream: dict | None) -> str:
    """sections: the recipe sections the stage declares, as it reads them (the target as its profile's content);
    upstream: the previous stage's done record ({"key", "outputs"}), or None for the first stage."""
    payload = {"stage": stage, "version": package_version(), "seed": seed, "sections": sections,
               "upstream": upstream and {"key": upstream["key"], "outputs": upstream["outputs"]}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def corpus_digest(corpus) -> str:
    """The loaded audio, labels and speakers of every split: the data stage's real output."""
    from edgeser.data.rows import rows_digest

    h = hashlib.sha256(json.dumps(corpus.classes).encode())
    for name in sorted(corpus.splits):
        s = corpus.splits[name]
        h.update(name.encode())
        h.update(rows_digest(s.x).encode())  # stored clips by their content keys, tensors by their bytes
        h.update(s.y.numpy().tobytes())
        h.update(json.dumps(list(s.speakers)).encode())
        if getattr(s, "target", None) is not None:  # vote distributions (data.labels: soft)
            h.update(s.target.contiguous().numpy().tobytes())
    return h.hexdigest()


def stage_outputs(run_dir: Path, paths) -> list[Path]:
    """The files (or folders, hashed whole) a stage declared as its outputs. One that is missing is a stage that
    did not write what it declares: an error, not a silently shorter done record."""
    out = [Path(run_dir) / p for p in paths]
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise RuntimeError(f"a stage did not write its declared outputs: {', '.join(missing)}")
    return out


class StageCache:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def _marker(self, stage: str) -> Path:
        return RunDir(self.run_dir).done(stage)

    def lookup(self, stage: str, key: str) -> dict | None:
        """The done record when the stage finished with this key and its outputs are unchanged."""
        try:
            rec = json.loads(self._marker(stage).read_text())
        except (OSError, ValueError):
            return None
        if rec.get("key") != key:
            return None
        for rel, digest in rec.get("outputs", {}).items():
            p = self.run_dir / rel
            if not p.exists() or sha256(p) != digest:
                return None
        return rec

    def mark(self, stage: str, key: str, outputs: list[Path], extra: dict | None = None) -> dict:
        rec = {"key": key, "outputs": {str(p.relative_to(self.run_dir)): sha256(p) for p in outputs},
               **(extra or {})}
        write_json(self._marker(stage), rec)
        return rec

    def clear(self, stage: str) -> None:
        self._marker(stage).unlink(missing_ok=True)


def seed_everything(seed: int) -> None:
    """Each stage starts from its own seed, so a stage gives the same result whether or not the stages
    before it ran in this process (resume skips them)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
