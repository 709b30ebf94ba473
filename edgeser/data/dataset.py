"""Turn a manifest into in-memory tensors, split by speaker, with bad files skipped and counted."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from edgeser.data.audio import BadAudio, fix_length, load_audio
from edgeser.data.manifest import read_manifest, speaker_split
from edgeser.data.votes import distribution, relabel
from edgeser.errors import InputError
from edgeser.recipe import Data


@dataclass
class Split:
    x: torch.Tensor  # (N, samples) float32 in [-1, 1]
    y: torch.Tensor  # (N,) int64
    speakers: list[str]
    # whole utterances (each its own length) when the corpus has variable lengths: val and test are scored on
    # these, so figures compare with published per-utterance results; training uses x (clip_seconds crops), or
    # (data.train_crops: random, when some utterance is longer than a clip) random crops of these (random_crops)
    full: list[np.ndarray] | None = None
    # data.labels: soft: (N, classes) float32, each row's annotator-vote distribution (one-hot without votes);
    # training learns it, evaluation scores y (the majority label). None: train on y.
    target: torch.Tensor | None = None


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


def random_crops(full: list[np.ndarray], idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(len(idx), n): for each row a random n-sample crop of its utterance (data.train_crops: random); an
    utterance of at most n samples is zero-padded as fix_length does."""
    out = torch.zeros(len(idx), n)
    for j, i in enumerate(idx.tolist()):
        w = full[i]
        start = int(torch.randint(0, len(w) - n + 1, (), generator=gen)) if len(w) > n else 0
        seg = torch.from_numpy(np.ascontiguousarray(w[start : start + n]))
        out[j, : len(seg)] = seg
    return out


def load_corpus(manifest_path, cfg: Data, on_file=None) -> Corpus:
    # labels through data.label_map; a row with votes takes their majority (edgeser/data/votes.py)
    items = [relabel(it, cfg.label_map, cfg.classes or ())
             for it in read_manifest(manifest_path, allow_outside_root=cfg.allow_outside_root, root=cfg.root)]
    classes = cfg.classes or sorted({it.label for it in items})
    unknown = set(cfg.classes or []) - {it.label for it in items}
    if unknown:
        raise InputError(f"data.classes: {sorted(unknown)} not found in {manifest_path}")
    items = [it for it in items if it.label in classes]
    if len(classes) < 2:
        raise InputError("data.classes: need at least 2 classes")
    soft = cfg.labels == "soft"
    if soft and not any(it.votes for it in items):
        raise InputError(f"data.labels: soft needs annotator votes, and no row of {manifest_path} (in "
                          f"data.classes) has any (a `votes` column, e.g. from `edgeser data import iemocap`)")
    n = int(cfg.clip_seconds * cfg.sample_rate)
    parts = speaker_split(items, cfg.val_speakers, cfg.test_speakers, cfg.seed, cfg.fold, cfg.fold_of)
    skipped: Counter = Counter()
    splits = {}
    done = 0
    for name, its in parts.items():
        xs, ys, spk, raw, ts = [], [], [], [], []
        for it in its:
            try:
                wav = load_audio(it.path, cfg.sample_rate)
                xs.append(fix_length(wav, n))
                raw.append(wav if name != "train" or cfg.train_crops == "random" else None)
                ys.append(classes.index(it.label))
                ts.append(distribution(dict(it.votes), classes, it.label))
                spk.append(it.speaker)
            except BadAudio as e:
                skipped[e.reason] += 1  # a fixed phrase, not this file's details: counts add up by reason
            except FileNotFoundError:
                skipped["missing file"] += 1
            done += 1
            if on_file:
                on_file(done, len(items))
        if not xs:
            raise InputError(f"data: the {name} split has no usable audio")
        # train keeps its utterances only for random crops: when one is longer than a clip
        variable = (any(len(w) > n for w in raw) if name == "train" and cfg.train_crops == "random"
                    else name != "train" and any(len(w) != n for w in raw))
        splits[name] = Split(torch.from_numpy(np.stack(xs)), torch.tensor(ys), spk, raw if variable else None,
                             target=torch.tensor(ts, dtype=torch.float32) if soft else None)
    return Corpus(classes, splits, skipped)


def load_eval_set(manifest_path, cfg: Data, classes: list[str] | None, on_file=None) -> tuple[Split, Counter]:
    """EVERY row of a manifest as one evaluation split, in the trained model's class order (`edgeser verify
    --data`): no speaker split, no re-ordering of classes. Labels go through data.label_map, and a row with
    votes is scored on their majority (as in load_corpus); a row whose label is not one of `classes`, and bad or
    missing audio, is skipped and counted by reason. Like load_corpus's test
    split, it keeps whole utterances (Split.full) when lengths vary. Returns (split, skipped)."""
    items = read_manifest(manifest_path, allow_outside_root=cfg.allow_outside_root, root=cfg.root)
    if not classes:
        raise InputError(f"{manifest_path}: the run records no class names (stages/data/metrics.json 'classes')")
    n = int(cfg.clip_seconds * cfg.sample_rate)
    skipped: Counter = Counter()
    xs, ys, spk, raw = [], [], [], []
    for i, it in enumerate(items, start=1):
        label = relabel(it, cfg.label_map, classes).label
        if label not in classes:
            skipped["label not in the run's classes"] += 1
        else:
            try:
                wav = load_audio(it.path, cfg.sample_rate)
                xs.append(fix_length(wav, n))
                raw.append(wav)
                ys.append(classes.index(label))
                spk.append(it.speaker)
            except BadAudio as e:
                skipped[e.reason] += 1
            except FileNotFoundError:
                skipped["missing file"] += 1
        if on_file:
            on_file(i, len(items))
    if not xs:
        why = ", ".join(f"{v} {k}" for k, v in sorted(skipped.items()))
        raise InputError(f"{manifest_path}: no usable clip among {len(items)} row(s) ({why}; classes: "
                          f"{', '.join(classes)})")
    full = raw if any(len(w) != n for w in raw) else None  # whole utterances, as load_corpus keeps for test
    return Split(x=torch.from_numpy(np.stack(xs)), y=torch.tensor(ys), speakers=spk, full=full), skipped
