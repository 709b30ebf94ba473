"""Manifest CSV (path,label,speaker[,session,split]) and speaker-independent splits."""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeser.data.votes import FORMAT as VOTES_FORMAT
from edgeser.data.votes import parse_votes
from edgeser.errors import InputError

REQUIRED = ("path", "label", "speaker")


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    speaker: str
    session: str = ""
    votes: tuple[tuple[str, float], ...] = ()  # annotator votes (the optional `votes` column; data/votes.py)


def corpus_roots(manifest: Path, root: Path | None = None) -> list[Path]:
    """Where a manifest's rows may point: its own folder, and the recipe's data.root when given."""
    roots = [Path(manifest).parent.resolve()]
    if root is not None:
        roots.append(Path(root).resolve())
    return roots


def _resolve(p: Path) -> Path:
    try:
        return p.resolve()  # `..` and symlinks
    except (OSError, RuntimeError):  # a symlink loop: judge the path as written
        return Path(os.path.abspath(p))


def read_manifest(path: Path, allow_outside_root: bool = False, root: Path | None = None) -> list[Item]:
    """Rows as Items; relative paths resolve against the manifest's folder. Unless `allow_outside_root`, a row
    whose path (after `..` and symlinks) leaves the corpus root (see corpus_roots) is a InputError naming the
    manifest, the row's line number and the path: a manifest cannot read /etc/passwd or ../../secrets.wav.
    An optional `votes` column holds each row's annotator votes (edgeser/data/votes.py); a malformed cell is a
    InputError naming the manifest and the row."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: manifest lacks column(s) {', '.join(missing)} (need path,label,speaker)")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read manifest: {e}") from None
    if not rows:
        raise InputError(f"{path}: manifest has no rows")
    roots = None if allow_outside_root else corpus_roots(path, root)
    items, outside = [], []
    for i, r in enumerate(rows, start=2):
        if not r["path"] or not r["label"] or not r["speaker"]:
            raise InputError(f"{path}:{i}: empty path, label or speaker")
        p = Path(r["path"])
        p = p if p.is_absolute() else path.parent / p
        if roots is not None:
            real = _resolve(p)
            if not any(real.is_relative_to(root) for root in roots):
                outside.append((i, r["path"], real))
        try:
            votes = tuple(parse_votes(r.get("votes")).items())
        except ValueError as e:
            raise InputError(f"{path}:{i}: votes {r.get('votes')!r}: {e} (expected {VOTES_FORMAT})") from None
        items.append(Item(p, r["label"].strip(), r["speaker"].strip(), (r.get("session") or "").strip(), votes))
    if outside:
        i, raw, real = outside[0]
        more = f" (and {len(outside) - 1} more row(s))" if len(outside) > 1 else ""
        where = " or ".join(str(r) for r in roots)
        raise InputError(f"{path}:{i}: path {raw!r} resolves to {real}, outside the corpus root {where}{more}; "
                          "set data.root to the corpus folder, or data.allow_outside_root: true if you trust this "
                          "manifest")
    return items


def speaker_folds(items: list[Item], n_folds: int, seed: int) -> list[list[str]]:
    """Speakers dealt into `n_folds` groups (`edgeser cv`, data.fold_of), deterministic from `seed`: in a
    seeded random order, most clips first, each speaker joins the group with the fewest clips so far (then the
    fewest speakers, then the lowest index), so groups are balanced by clip count. Each group sorted."""
    clips = Counter(it.speaker for it in items)
    if n_folds > len(clips):
        raise InputError(f"data.fold_of: {n_folds} folds but only {len(clips)} speakers (each fold's test set is "
                          "at least one speaker)")
    speakers = sorted(clips)
    order = [speakers[i] for i in np.random.default_rng([seed, n_folds]).permutation(len(speakers))]
    order.sort(key=lambda s: -clips[s])  # stable: speakers with equal counts keep the seeded order
    groups: list[list[str]] = [[] for _ in range(n_folds)]
    sizes = [0] * n_folds
    for spk in order:
        i = min(range(n_folds), key=lambda g: (sizes[g], len(groups[g]), g))
        groups[i].append(spk)
        sizes[i] += clips[spk]
    return [sorted(g) for g in groups]


def speaker_split(items: list[Item], val_frac: float, test_frac: float, seed: int,
                  fold: str | None = None, fold_of: tuple[int, int] | None = None) -> dict[str, list[Item]]:
    """Split by speaker: no speaker appears in two splits. At least one speaker per split.

    With `fold`, the test split is that session (leave-one-session-out, e.g. IEMOCAP) and the validation
    speakers are drawn from the other sessions. With `fold_of` = (k, N), the test split is the k-th of N speaker
    groups (speaker_folds) and the validation speakers are drawn from the other groups.
    """
    speakers = sorted({it.speaker for it in items})
    if len(speakers) < 3:
        raise InputError(f"data: need at least 3 speakers for speaker-independent splits, found {len(speakers)}")
    rng = np.random.default_rng(seed)
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    if fold is not None or fold_of is not None:
        if fold_of is not None:
            test = set(speaker_folds(items, fold_of[1], seed)[fold_of[0] - 1])
            field, what = "data.fold_of", "fold"
        else:
            sessions = sorted({it.session for it in items if it.session})
            if fold not in sessions:
                raise InputError(f"data.fold: session {fold!r} not in the manifest (sessions: "
                                  f"{', '.join(sessions) or 'none'})")
            test = {it.speaker for it in items if it.session == fold}
            field, what = "data.fold", "session"
        rest = [s for s in order if s not in test]
        n_val = max(1, round(val_frac * len(rest)))
        if n_val >= len(rest):
            raise InputError(f"{field}: too few speakers outside the test {what} for validation and training "
                              f"({len(rest)}; need at least 2)")
        val = set(rest[:n_val])
        split = {"train": [], "val": [], "test": []}
        for it in items:
            split["test" if it.speaker in test else "val" if it.speaker in val else "train"].append(it)
        return split
    n_test = max(1, round(test_frac * len(speakers)))
    n_val = max(1, round(val_frac * len(speakers)))
    if n_test + n_val >= len(speakers):
        n_test, n_val = 1, 1
    test, val = set(order[:n_test]), set(order[n_test : n_test + n_val])
    split = {"train": [], "val": [], "test": []}
    for it in items:
        split["test" if it.speaker in test else "val" if it.speaker in val else "train"].append(it)
    return split
