"""Nothing lost: a content-hash key per stage, a done marker naming the stage's outputs, and epoch checkpoints.

A stage's key covers its recipe sections, the key and output hashes of the stage before it (so, by the chain,
everything upstream, including the loaded corpus), the seed and the package version. `compress --resume`
skips a stage whose stages/<name>/done.json has the same key and whose outputs still have the recorded
sha256; anything else runs again. done.json is written last, atomically, so a stage killed at any point is
simply not done. Long training loops save an epoch checkpoint (model, optimiser, scheduler, every random
generator) and continue from it, so a resumed run ends byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import random
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from edgeser.fileio import load_state, save_state, sha256, write_json
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
    h = hashlib.sha256(json.dumps(corpus.classes).encode())
    for name in sorted(corpus.splits):
        s = corpus.splits[name]
        h.update(name.encode())
        h.update(s.x.contiguous().numpy().tobytes())
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


# --- epoch checkpoints ----------------------------------------------------------------------------------------------

def generators_of(*objs, depth: int = 4) -> list:
    """Every torch.Generator and numpy Generator held by these callables or objects (closures, bound methods,
    attributes, containers), in a stable order: the random state a training loop must save to resume exactly."""
    found, seen = [], set()

    def walk(o, d):
        if o is None or id(o) in seen or d < 0:
            return
        seen.add(id(o))
        if isinstance(o, (torch.Generator, np.random.Generator)):
            found.append(o)
            return
        if isinstance(o, (str, bytes, int, float, bool, torch.Tensor, np.ndarray, torch.nn.Parameter)):
            return
        if isinstance(o, (list, tuple, set)):
            for v in o:
                walk(v, d - 1)
            return
        if isinstance(o, dict):
            for v in o.values():
                walk(v, d - 1)
            return
        if hasattr(o, "__self__"):  # bound method
            walk(o.__self__, d - 1)
        for cell in getattr(o, "__closure__", None) or ():
            try:
                walk(cell.cell_contents, d - 1)
            except ValueError:  # empty cell
                pass
        attrs = getattr(o, "__dict__", None)
        if isinstance(attrs, dict) and not isinstance(o, type) and not callable(getattr(o, "__code__", None)):
            for k, v in attrs.items():
                if not k.startswith("_parameters") and not k.startswith("_buffers"):
                    walk(v, d - 1)

    for o in objs:
        walk(o, depth)
    return found


def rng_state(gens: list) -> dict:
    version, internal, gauss = random.getstate()
    out = {"torch": torch.get_rng_state(), "numpy": _np_global_state(), "python": [version, list(internal), gauss],
           "gens": []}
    for g in gens:
        out["gens"].append(g.get_state() if isinstance(g, torch.Generator) else json.dumps(g.bit_generator.state))
    return out


def set_rng_state(state: dict, gens: list) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if len(gens) != len(state["gens"]):
        raise ValueError(f"checkpoint holds {len(state['gens'])} random generators, the loop has {len(gens)}")
    for g, s in zip(gens, state["gens"]):
        if isinstance(g, torch.Generator):
            g.set_state(s)
        else:
            g.bit_generator.state = json.loads(s)


def _np_global_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


class EpochCheckpoint:
    """stages/<stage>/ckpt-<name>.pt, valid only for the stage key it was written under."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            blob = load_state(self.path)
        except Exception:  # a torn or foreign file is not a checkpoint: start the loop over
            return None
        return blob if isinstance(blob, dict) and blob.get("key") == self.key else None

    def save(self, state: dict) -> None:
        save_state(self.path, {"key": self.key, **state})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
