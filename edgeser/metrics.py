"""WA, UA, macro-F1, per-class recall and the confusion matrix."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm).astype(float)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "wa": float(tp.sum() / max(1, cm.sum())),
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": {c: float(r) for c, r in zip(classes, recall)},
        "confusion": cm.tolist(),
        "n": int(cm.sum()),
    }


def _boot_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) clip indices drawn with replacement: one row per bootstrap resample."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _boot_ua_wa(y: np.ndarray, correct: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """UA and WA of every resample, given the resampled labels and correctness, both (n_boot, n).
    UA averages recall over the classes present in that resample, as classification_metrics does."""
    b = y.shape[0]
    flat = (np.arange(b)[:, None] * k + y).ravel()
    support = np.bincount(flat, minlength=b * k).reshape(b, k)
    tp = np.bincount(flat, weights=correct.ravel().astype(float), minlength=b * k).reshape(b, k)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros((b, k)), where=present)
    ua = recall.sum(1) / np.maximum(present.sum(1), 1)
    return ua, correct.mean(1)


def _interval(samples: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_ci(y_true, y_pred, classes: list[str], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile-bootstrap confidence intervals of UA and WA over clips: {"ua": [lo, hi], "wa": [lo, hi]},
    fractions. Clips are resampled with replacement n_boot times (vectorised; a fixed seed, so a run is
    reproducible byte for byte)."""
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("bootstrap_ci: no clips")
    idx = _boot_idx(len(y), n_boot, seed)
    ua, wa = _boot_ua_wa(y[idx], p[idx] == y[idx], len(classes))
    return {"ua": _interval(ua, level), "wa": _interval(wa, level)}


def paired_median_ratio_ci(num, den, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile-bootstrap interval of median(num) / median(den) for paired samples (e.g. latencies of two models
    timed in the same interleaved rounds): each resample draws ONE set of indices for both, so what a round shares
    (a slow spell of the machine) cancels."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired_median_ratio_ci: need the same non-zero number of samples ({len(a)}, {len(b)})")
    idx = _boot_idx(len(a), n_boot, seed)
    return _interval(np.median(a[idx], axis=1) / np.median(b[idx], axis=1), level)


def paired_drop_ci(y_true, pred_ref, pred, classes: list[str], n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """UA drop of `pred` against the reference `pred_ref` on the same clips, in percentage points
    ((UA_ref - UA) * 100, positive = worse than the reference), with a paired percentile-bootstrap interval:
    each resample draws ONE set of clip indices and scores both models on it, so what the two share (which
    clips are hard) cancels. {"drop_pt": float, "ci_pt": [lo, hi]}."""
    y = np.asarray(y_true, dtype=np.int64)
    r, p = np.asarray(pred_ref, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if not (len(y) == len(r) == len(p)) or len(y) == 0:
        raise ValueError(f"paired_drop_ci: need the same non-zero number of clips ({len(y)}, {len(r)}, {len(p)})")
    k = len(classes)
    point = (classification_metrics(y, r, classes)["ua"] - classification_metrics(y, p, classes)["ua"]) * 100
    idx = _boot_idx(len(y), n_boot, seed)
    yb = y[idx]
    ua_ref, _ = _boot_ua_wa(yb, r[idx] == yb, k)
    ua, _ = _boot_ua_wa(yb, p[idx] == yb, k)
    return {"drop_pt": float(point), "ci_pt": _interval((ua_ref - ua) * 100, level)}
