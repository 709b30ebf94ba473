"""Grow the train split's minority classes with WaveGAN clips (data.augment.generative; edgeser/data/wavegan.py).

The generator trains on the train split only; its clips are appended to that split (speaker "generated"),
val and test are never touched. The trained generator and its clips are cached under cache_dir in a folder
named by a key of the train split's content (store keys or tensor bytes, labels), the clip length, the
classes, the settings and the seed, so a re-run (`--resume`, or the data stage, which always runs) reads them
instead of training again. The folder is written whole, then renamed into place; only the newest key is kept.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from edgeser.fileio import atomic_path, load_state, save_state, write_json

VERSION = 1  # of the generator and its training: a change here retrains every cache
FILES = ("generator.pt", "clips.pt", "info.json")


def minority_counts(y: torch.Tensor, n_classes: int, target) -> dict[int, int]:
    """Clips to generate per class: up to `target` x the majority count (target "balance" = 1), none for a class
    already there. A class without any train clip gets none (the generator has nothing of it to learn)."""
    counts = torch.bincount(y.long(), minlength=n_classes)
    ratio = 1.0 if target == "balance" else float(target)
    goal = round(ratio * int(counts.max()))
    return {c: goal - int(n) for c, n in enumerate(counts.tolist()) if 0 < n < goal}


def cache_key(train, classes: list[str], clip_samples: int, cfg, seed: int) -> str:
    from edgeser.data.rows import rows_digest

    settings = cfg.model_dump(mode="json", exclude={"enabled"})
    text = json.dumps({"rows": rows_digest(train.x), "y": hashlib.sha256(train.y.numpy().tobytes()).hexdigest(),
                       "classes": classes, "samples": clip_samples, "settings": settings, "seed": seed,
                       "version": VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read(folder: Path):
    """(x, y, info) from a cache folder, or None when it is missing or unreadable."""
    if not all((folder / f).is_file() for f in FILES):
        return None
    try:
        clips = load_state(folder / "clips.pt")
        info = json.loads((folder / "info.json").read_text())
        return clips["x"], clips["y"], info
    except (OSError, RuntimeError, KeyError, ValueError):
        return None


def _build(train, classes, clip_samples, cfg, seed, folder: Path, progress) -> None:
    from edgeser.data.wavegan import synthesize, train_wavegan

    counts = minority_counts(train.y, len(classes), cfg.target)
    generator, info = train_wavegan(train.x, train.y, len(classes), cfg, seed, progress=progress)
    x, y = synthesize(generator, counts, clip_samples, seed + 2)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_state(tmp / "generator.pt", {"config": generator.config(), "state": generator.state_dict()})
        save_state(tmp / "clips.pt", {"x": x, "y": y})
        write_json(tmp / "info.json", info)
    for old in folder.parent.iterdir():  # earlier keys: their settings or train split are gone
        if old.is_dir() and old != folder and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def grow_minority(corpus, cfg, clip_samples: int, seed: int, cache_dir: Path, progress=None):
    """(corpus with WaveGAN clips appended to its train split, info) for data.augment.generative `cfg`;
    (corpus, {"enabled": False}) when it is off. info: clips generated per class, the train split's class
    counts before and after, the training's seconds and steps, whether max_seconds stopped it, and whether
    this call read the cache (cached) or trained."""
    from edgeser import distributed as dist
    from edgeser.data.dataset import append_rows

    if not cfg.enabled:
        return corpus, {"enabled": False}
    train, classes = corpus.splits["train"], corpus.classes
    if train.x.shape[1] != clip_samples:
        raise ValueError(f"grow_minority: train clips are {train.x.shape[1]} samples, clip_samples {clip_samples}")
    before = torch.bincount(train.y.long(), minlength=len(classes)).tolist()
    counts = minority_counts(train.y, len(classes), cfg.target)
    out = {"enabled": True, "before": dict(zip(classes, before)),
           "no_train_clips": [classes[c] for c, n in enumerate(before) if n == 0]}
    if not counts:
        return corpus, out | {"generated": {}, "after": out["before"], "trained": False,
                              "reason": "no class below the target"}
    folder = Path(cache_dir) / cache_key(train, classes, clip_samples, cfg, seed)
    cached = _read(folder) is not None
    if not cached:  # under torchrun rank 0 trains and writes; the others wait, then read the same folder
        dist.on_main(lambda: _build(train, classes, clip_samples, cfg, seed, folder,
                                    progress if dist.is_main() else None))
    got = _read(folder)
    if got is None:
        raise RuntimeError(f"the WaveGAN cache {folder} was written but cannot be read")
    x, y, info = got
    grown = append_rows(train, x, y, speaker="generated")
    after = torch.bincount(grown.y.long(), minlength=len(classes)).tolist()
    out |= {"generated": {classes[c]: int((y == c).sum()) for c in sorted(counts)}, "after": dict(zip(classes, after)),
            "trained": not cached, "cached": cached, "cache_key": folder.name, "train_seconds": info["seconds"],
            "steps": info["steps"], "time_bound_hit": info["time_bound_hit"], "max_seconds": info["max_seconds"],
            "training": info}
    return replace(corpus, splits={**corpus.splits, "train": grown}), out
