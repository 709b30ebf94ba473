"""Annotator votes: the manifest's `votes` column, the majority label under a fixed tie rule, and the vote
distribution a `data.labels: soft` run trains against.

The column holds `label:count;label:count`, e.g. `neutral:2;angry:0.5;frustrated:0.5`: labels as in the
`label` column, counts non-negative decimal numbers (a fraction when an evaluator gave several labels: each of
an evaluator's k labels counts 1/k), at least one above 0, each label once. An empty cell (or no column) means
no votes: the row trains on its `label` alone.

Majority rule (MAJORITY_RULE): the label with the most votes (counts within TIE_TOL are equal); a tie that
includes the row's own `label` (the corpus's consensus, or CREMA-D's intended emotion) goes to it; any other
tie goes to the tied label listed first in data.classes, then to the alphabetically first.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

TIE_TOL = 1e-3  # counts are written to 4 decimals: 1/3 + 1/3 (0.6666) ties 2/3 (0.6667)
FORMAT = "label:count;label:count, e.g. neutral:2;angry:0.5"
MAJORITY_RULE = ("most votes; a tie that includes the row's label goes to it, any other tie to the tied class "
                 "listed first in data.classes")
_LABEL = re.compile(r"[^\s:;,][^:;,]*")


def parse_votes(text: str | None) -> dict[str, float]:
    """The votes of one manifest cell ({} for an empty one); ValueError saying what is wrong."""
    votes: dict[str, float] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        label, sep, count = (s.strip() for s in part.partition(":"))
        if not sep or not _LABEL.fullmatch(label):
            raise ValueError(f"{part.strip()!r} is not label:count")
        try:
            n = float(count)
        except ValueError:
            raise ValueError(f"{label}: count {count!r} is not a number") from None
        if not math.isfinite(n) or n < 0:
            raise ValueError(f"{label}: count {count!r} must be a finite number >= 0")
        if label in votes:
            raise ValueError(f"{label} appears twice")
        votes[label] = n
    if votes and not sum(votes.values()) > 0:
        raise ValueError("every count is 0")
    return votes


def format_votes(votes: Mapping[str, float], order: Iterable[str] = ()) -> str:
    """The cell for `votes`: labels in `order` first (then alphabetical), counts to 4 decimals, zeros left out."""
    rank = {lab: i for i, lab in enumerate(order)}
    keys = sorted((k for k, v in votes.items() if round(v, 4) > 0), key=lambda k: (rank.get(k, len(rank)), k))
    return ";".join(f"{k}:{round(votes[k], 4):g}" for k in keys)


def remap(votes: Mapping[str, float], mapping: Mapping[str, str], keep: Iterable[str] | None = None) -> dict:
    """Votes with labels renamed by `mapping` (counts of labels that merge are added); with `keep`, only the
    votes for those labels (the rest are dropped from the distribution)."""
    keep = None if keep is None else set(keep)
    out: dict[str, float] = {}
    for label, n in votes.items():
        label = mapping.get(label, label)
        if keep is None or label in keep:
            out[label] = out.get(label, 0.0) + n
    return out


def majority(votes: Mapping[str, float], label: str, order: Iterable[str] = ()) -> str:
    """The majority label of `votes` under MAJORITY_RULE (`label`: the row's own label; `order`: data.classes);
    `label` itself when there are no votes."""
    if not votes:
        return label
    top = max(votes.values())
    tied = [k for k, v in votes.items() if v >= top - TIE_TOL]
    if label in tied:
        return label
    rank = {c: i for i, c in enumerate(order)}
    return min(tied, key=lambda k: (rank.get(k, len(rank)), k))


def distribution(votes: Mapping[str, float], classes: list[str], label: str) -> list[float]:
    """The votes as a probability distribution over `classes` (votes for other labels dropped); one-hot on
    `label` when no vote is for one of `classes`."""
    counts = [float(votes.get(c, 0.0)) for c in classes]
    total = sum(counts)
    if total <= 0:
        return [float(c == label) for c in classes]
    return [c / total for c in counts]


def relabel(item, label_map: Mapping[str, str], order: Iterable[str] = ()):
    """A manifest Item with data.label_map applied to its label and its votes, and its label the majority of
    its votes (MAJORITY_RULE; `order`: data.classes). Items without votes keep their (mapped) label."""
    import dataclasses

    votes = remap(dict(item.votes), label_map)
    label = label_map.get(item.label, item.label)
    return dataclasses.replace(item, label=majority(votes, label, order), votes=tuple(votes.items()))
