"""Bootstrap confidence intervals (edgeser/metrics.py): UA/WA intervals over clips, paired UA-drop intervals."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgeser.metrics import bootstrap_ci, classification_metrics, paired_drop_ci, paired_median_ratio_ci

CLASSES = ["neutral", "happy", "sad", "angry"]


def _preds(n: int, acc: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n clips, balanced labels, each prediction right with probability `acc` (else a random other class)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    wrong = (y + rng.integers(1, len(CLASSES), n)) % len(CLASSES)
    return y, np.where(rng.random(n) < acc, y, wrong)


def _width(iv) -> float:
    return iv[1] - iv[0]


def test_interval_contains_the_point_estimate():
    for n, acc in [(40, 0.5), (160, 0.8), (1000, 0.6)]:
        y, p = _preds(n, acc, seed=n)
        m = classification_metrics(y, p, CLASSES)
        ci = bootstrap_ci(y, p, CLASSES)
        assert ci["ua"][0] < m["ua"] < ci["ua"][1], (n, m["ua"], ci)
        assert ci["wa"][0] < m["wa"] < ci["wa"][1], (n, m["wa"], ci)
        assert 0 <= ci["ua"][0] and ci["ua"][1] <= 1
        # the 95 % interval of a proportion is about ±1.96 sqrt(p(1-p)/n)
        expect = 2 * 1.96 * np.sqrt(m["wa"] * (1 - m["wa"]) / n)
        assert 0.75 * expect < _width(ci["wa"]) < 1.25 * expect, (n, _width(ci["wa"]), expect)


def test_interval_narrows_as_one_over_sqrt_n():
    """4x the clips (the same clips four times, so the same UA) -> half the width."""
    y, p = _preds(200, 0.7)
    small = bootstrap_ci(y, p, CLASSES)
    big = bootstrap_ci(np.tile(y, 4), np.tile(p, 4), CLASSES)
    for k in ("ua", "wa"):
        ratio = _width(big[k]) / _width(small[k])
        assert 0.4 < ratio < 0.6, (k, ratio)


def test_perfect_and_constant_predictions():
    y = np.arange(100) % 4
    assert bootstrap_ci(y, y, CLASSES) == {"ua": [1.0, 1.0], "wa": [1.0, 1.0]}
    ci = bootstrap_ci(y, np.zeros_like(y), CLASSES)  # always "neutral": UA is exactly chance in every resample
    assert ci["ua"] == pytest.approx([0.25, 0.25])


def test_seeded_and_fast():
    y, p = _preds(2000, 0.6)
    t = time.perf_counter()
    a = bootstrap_ci(y, p, CLASSES, n_boot=1000, seed=3)
    assert time.perf_counter() - t < 2.0  # vectorised: no Python loop over resamples
    assert a == bootstrap_ci(y, p, CLASSES, n_boot=1000, seed=3)
    assert a != bootstrap_ci(y, p, CLASSES, n_boot=1000, seed=4)


def test_paired_drop_of_identical_predictions_is_exactly_zero():
    y, p = _preds(160, 0.7)
    d = paired_drop_ci(y, p, p.copy(), CLASSES)
    assert d == {"drop_pt": 0.0, "ci_pt": [0.0, 0.0]}


def test_paired_drop_point_and_interval():
    y, ref = _preds(400, 0.8, seed=1)
    # the compressed model = the reference with 20 of its right answers turned wrong
    pred = ref.copy()
    right = np.flatnonzero(ref == y)[:20]
    pred[right] = (y[right] + 1) % 4
    d = paired_drop_ci(y, ref, pred, CLASSES)
    expect = (classification_metrics(y, ref, CLASSES)["ua"] - classification_metrics(y, pred, CLASSES)["ua"]) * 100
    assert d["drop_pt"] == pytest.approx(expect) and d["drop_pt"] > 0
    lo, hi = d["ci_pt"]
    assert 0 <= lo < d["drop_pt"] < hi  # pred is never right where ref is wrong: no resample shows a gain
    # pairing: the drop's interval is narrower than one model's own UA interval (measured 0.57x); resampling
    # the two models on different clips would make it about sqrt(2) times wider than that instead
    own = _width(bootstrap_ci(y, ref, CLASSES)["ua"]) * 100
    assert hi - lo < 0.75 * own, (hi - lo, own)
    # sign: a model better than the reference has a negative drop
    assert paired_drop_ci(y, pred, ref, CLASSES)["drop_pt"] == pytest.approx(-expect)


def test_paired_drop_rejects_mismatched_lengths():
    y, p = _preds(10, 0.5)
    with pytest.raises(ValueError, match="same"):
        paired_drop_ci(y, p, p[:5], CLASSES)


def test_paired_median_ratio_ci_cancels_what_the_pairs_share():
    rng = np.random.default_rng(3)
    spell = rng.lognormal(0.0, 0.5, 400)  # each round's machine speed, shared by both models
    den = 0.3 * spell * rng.lognormal(0.0, 0.02, 400)
    num = 2.0 * den
    lo, hi = paired_median_ratio_ci(num, den)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)  # exactly 2x in every round
    # unpaired (the numerator's rounds shuffled), the shared spells no longer cancel: a much wider interval
    lo_u, hi_u = paired_median_ratio_ci(rng.permutation(num), den)
    assert hi_u - lo_u > 0.1 and lo_u < 2.0 < hi_u
    with pytest.raises(ValueError, match="same non-zero number"):
        paired_median_ratio_ci(num, den[:-1])
