"""Turn a manifest into splits by speaker, with bad files skipped and counted: read a batch at a time from the
on-disk store (edgeser/data/store.py, the pipeline), or held in memory (no store: tests, small tools)."""
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
    x: torch.Tensor  # (N, samples) float32 in [-1, 1]; or rows.Clips / rows.Stack, read a batch at a time
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


def utterance_lengths(full) -> np.ndarray:
    """Lengths of whole utterances (Utterances keeps them; a list of arrays is measured)."""
    return full.lengths if hasattr(full, "lengths") else np.array([len(w) for w in full], dtype=np.int64)


def crop_starts(lengths: np.ndarray, idx: torch.Tensor, n: int, gen: torch.Generator) -> list[int]:
    """For each row of idx, where its random n-sample crop starts (0 for an utterance of at most n samples: no
    draw). Drawn before the audio is read, so a batch can be read elsewhere (a DataLoader worker)."""
    out = []
    for i in idx.tolist():
        m = int(lengths[i])
        out.append(int(torch.randint(0, m - n + 1, (), generator=gen)) if m > n else 0)
    return out


def read_crops(full, idx, starts, n: int) -> torch.Tensor:
    """(len(idx), n): the crops at `starts`; an utterance of at most n samples is zero-padded as fix_length."""
    out = torch.zeros(len(idx), n)
    for j, (i, start) in enumerate(zip(idx.tolist(), starts)):
        seg = torch.from_numpy(np.ascontiguousarray(full[i][start : start + n]))
        out[j, : len(seg)] = seg
    return out


def random_crops(full, idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(len(idx), n): for each row a random n-sample crop of its utterance (data.train_crops: random); an
    utterance of at most n samples is zero-padded as fix_length does."""
    return read_crops(full, idx, crop_starts(utterance_lengths(full), idx, n, gen), n)


def append_rows(split: Split, x: torch.Tensor, y: torch.Tensor, speaker: str = "generated") -> Split:
    """`split` with clips x (M, samples) of labels y appended (e.g. generated minority-class clips); their
    speaker is `speaker`, their vote distribution (data.labels: soft) one-hot. Where the split keeps whole
    utterances, the new clips are utterances of clip length."""
    from edgeser.data.rows import Extended, Stack

    if x.dim() != 2 or x.shape[1] != split.x.shape[1] or len(x) != len(y):
        raise ValueError(f"append_rows: clips (M, {split.x.shape[1]}) and M labels expected, got {tuple(x.shape)} "
                         f"and {len(y)}")
    xs = torch.cat([split.x, x]) if isinstance(split.x, torch.Tensor) else Stack([split.x, x])
    full = None
    if split.full is not None:
        more = [w.numpy() for w in x]
        full = list(split.full) + more if isinstance(split.full, list) else Extended(split.full, more)
    target = None
    if split.target is not None:
        target = torch.cat([split.target, torch.nn.functional.one_hot(y.long(), split.target.shape[1]).float()])
    return Split(xs, torch.cat([split.y, y.to(split.y.dtype)]), list(split.speakers) + [speaker] * len(y), full,
                 target)


class MemoryStore:
    """AudioStore's interface in memory: load_corpus without a store folder (tests, `edgeser verify`)."""

    def __init__(self, sample_rate: int):
        self.sample_rate, self.audio, self.decoded = sample_rate, {}, 0

    def put(self, path) -> tuple[str, int]:
        key = str(path)
        if key not in self.audio:
            self.audio[key] = load_audio(path, self.sample_rate)
            self.decoded += 1
        return key, len(self.audio[key])

    def read(self, key: str) -> np.ndarray:
        return self.audio[key]

    def save(self) -> None:
        pass


def load_corpus(manifest_path, cfg: Data, on_file=None, store=None) -> Corpus:
    """The corpus of a manifest, split by speaker. With `store` (data/store.py AudioStore) the audio is decoded
    into it once and the splits read it a batch at a time (Split.x: rows.Clips, Split.full: rows.Utterances);
    without one it is decoded into memory and the splits hold tensors and arrays."""
    from edgeser.data.rows import Clips, Utterances

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
    lazy = store is not None
    store = store if lazy else MemoryStore(cfg.sample_rate)
    parts = speaker_split(items, cfg.val_speakers, cfg.test_speakers, cfg.seed, cfg.fold, cfg.fold_of)
    skipped: Counter = Counter()
    splits = {}
    done = 0
    for name, its in parts.items():
        keys, lengths, ys, spk, ts = [], [], [], [], []
        for it in its:
            try:
                key, length = store.put(it.path)
                keys.append(key)
                lengths.append(length)
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
        if not keys:
            raise InputError(f"data: the {name} split has no usable audio")
        # train keeps its utterances only for random crops: when one is longer than a clip
        variable = (any(m > n for m in lengths) if name == "train" and cfg.train_crops == "random"
                    else name != "train" and any(m != n for m in lengths))
        utt = Utterances(store, keys, lengths)
        x, full = Clips(utt, n), (utt if variable else None)
        if not lazy:
            x, full = x[:], (list(full) if variable else None)
        splits[name] = Split(x, torch.tensor(ys), spk, full,
                             target=torch.tensor(ts, dtype=torch.float32) if soft else None)
    store.save()
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
