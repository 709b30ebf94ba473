"""Turn a manifest into in-memory tensors, split by speaker, with bad files skipped and counted."""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from edgeser.data.audio import BadAudio, fix_length, load_audio
from edgeser.data.manifest import Item, read_manifest, speaker_split
from edgeser.recipe import Data, RecipeError


@dataclass
class Split:
    x: torch.Tensor  # (N, samples) float32 in [-1, 1]
    y: torch.Tensor  # (N,) int64
    speakers: list[str]


@dataclass
class Corpus:
    classes: list[str]
    splits: dict[str, Split]
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        return {
            "classes": self.classes,
            "sizes": {k: int(len(v.y)) for k, v in self.splits.items()},
            "speakers": {k: sorted(set(v.speakers)) for k, v in self.splits.items()},
            "skipped": dict(self.skipped),
        }


def load_corpus(manifest_path, cfg: Data, on_file=None) -> Corpus:
    items = [dataclasses.replace(it, label=cfg.label_map.get(it.label, it.label))
             for it in read_manifest(manifest_path, allow_outside_root=cfg.allow_outside_root, root=cfg.root)]
    classes = cfg.classes or sorted({it.label for it in items})
    unknown = set(cfg.classes or []) - {it.label for it in items}
    if unknown:
        raise RecipeError(f"data.classes: {sorted(unknown)} not found in {manifest_path}")
    items = [it for it in items if it.label in classes]
    if len(classes) < 2:
        raise RecipeError("data.classes: need at least 2 classes")
    n = int(cfg.clip_seconds * cfg.sample_rate)
    parts = speaker_split(items, cfg.val_speakers, cfg.test_speakers, cfg.seed, cfg.fold)
    skipped: Counter = Counter()
    splits = {}
    done = 0
    for name, its in parts.items():
        xs, ys, spk = [], [], []
        for it in its:
            try:
                xs.append(fix_length(load_audio(it.path, cfg.sample_rate), n))
                ys.append(classes.index(it.label))
                spk.append(it.speaker)
            except BadAudio as e:
                skipped[e.reason] += 1  # a fixed phrase, not this file's details: counts add up by reason
            except FileNotFoundError:
                skipped["missing file"] += 1
            done += 1
            if on_file:
                on_file(done, len(items))
        if not xs:
            raise RecipeError(f"data: the {name} split has no usable audio")
        splits[name] = Split(torch.from_numpy(np.stack(xs)), torch.tensor(ys), spk)
    return Corpus(classes, splits, skipped)
