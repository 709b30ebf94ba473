"""bench/dev_corpus.py's simulated raters (the votes behind bench/soft_labels.py): each clip gets RATERS votes
that parse as a manifest votes cell, and a weakly expressed emotion is misheard more often than a strong one."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import dev_corpus as dc  # noqa: E402

from edgeser.data.votes import majority, parse_votes  # noqa: E402


def _hit_rate(lab, k, n=400):
    rng = np.random.default_rng(0)
    votes = [dc.clip_votes(lab, k, rng) for _ in range(n)]
    for v in votes:
        assert abs(sum(v.values()) - dc.RATERS) < 1e-9 and set(v) <= set(dc.CLASSES)
        assert parse_votes(";".join(f"{c}:{round(x, 4):g}" for c, x in v.items())) is not None
    return np.mean([v.get(lab, 0) / dc.RATERS for v in votes]), votes


def test_weak_emotions_are_misheard_more_and_mostly_as_neutral():
    weak, votes = _hit_rate("happy", 0.2)
    strong, _ = _hit_rate("happy", 1.5)
    assert strong > weak + 0.25  # 0.88 against 0.51 in the model: the rater hears expressiveness
    wrong = {c: sum(v.get(c, 0) for v in votes) for c in ("neutral", "sad", "angry")}
    assert wrong["neutral"] > wrong["angry"] > wrong["sad"]  # weak happy: heard as neutral, then as angry
    # majority with the clip's own label breaking ties is still mostly the intended emotion when strong
    rng = np.random.default_rng(1)
    maj = [majority(dc.clip_votes("angry", 1.5, rng), "angry", list(dc.CLASSES)) for _ in range(200)]
    assert np.mean([m == "angry" for m in maj]) > 0.9
