"""Epoch checkpoints of a training loop (train.fit): model, optimiser, scheduler and every random generator,
so a loop killed after epoch k continues at k + 1 and ends with the weights an uninterrupted loop gives."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from edgeser.fileio import load_state, save_state

class Stochastic:
    """A callable (an augmentation, a loss) that names the random generators it draws from, so a training loop
    saves and restores exactly those in its checkpoint (train.fit, via generators())."""

    def __init__(self, fn, generators):
        self.fn, self.generators = fn, list(generators)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def generators(*objs) -> list:
    """The generators these callables declare (Stochastic.generators), in order; None and plain callables
    declare none."""
    return [g for o in objs if o is not None for g in getattr(o, "generators", ())]


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
