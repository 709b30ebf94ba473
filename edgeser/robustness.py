"""The robustness suite of `verify`: the held-out clips played the way users play them, not as the corpus has them.

Cases (each a function of the held-out waveforms):
    gain      -40, -30, -20, -10, 0 and +6 dB (clipped at full scale)           gated
    noise     white and babble noise at SNR 20, 10 and 5 dB                      reported, not gated
    dc        a DC offset of 0.05 full scale                                     reported
    band      telephone band, 300-3400 Hz (4th-order Butterworth)               reported
    length    0.5x, 1x and 3x clip_seconds, and whole utterances where the      gated
              corpus has them

For every artifact and case: agreement with the FP32 student on the same perturbed input (agree_ref), UA, and
for gains the agreement with the artifact's own decisions at 0 dB (agree_self). Noise, DC and band cases change
FP32's own decisions, so they are reported but not gated (issue 11, point 4). The gate: the worst gain case
(both agreements) and the worst length case (agree_ref) reach verify.min_robust_agreement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeser.metrics import classification_metrics

GAINS_DB = (-40, -30, -20, -10, 0, 6)
SNRS_DB = (20, 10, 5)
LENGTHS = (0.5, 1.0, 3.0)
DC_OFFSET = 0.05


@dataclass
class Case:
    name: str
    kind: str  # gain | noise | dc | band | length
    value: object
    gated: bool
    audio: np.ndarray | list  # (N, samples) float32, or a list of whole utterances of different lengths


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True)) + 1e-12


def _at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    return np.clip(x + noise * (_rms(x) / _rms(noise)) * 10 ** (-snr_db / 20), -1, 1).astype(np.float32)


def babble(x: np.ndarray, rng: np.random.Generator, talkers: int = 4) -> np.ndarray:
    """Each clip's babble: `talkers` other held-out clips, circularly shifted and summed."""
    n = len(x)
    out = np.zeros_like(x, dtype=np.float64)
    for _ in range(talkers):
        others = (np.arange(n) + rng.integers(1, max(2, n))) % n
        out += np.roll(x[others], int(rng.integers(0, x.shape[1])), axis=1)
    return out.astype(np.float32)


def telephone(x: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [300, 3400], btype="bandpass", fs=sr, output="sos")
    return sosfiltfilt(sos, x, axis=-1).astype(np.float32)


def with_length(x: np.ndarray, factor: float) -> np.ndarray:
    """Shorter: the centre crop. Longer: the clip played `factor` times back to back (the corpus's clips are
    clip_seconds long; whole utterances are their own case)."""
    n = x.shape[1]
    m = int(round(n * factor))
    if m <= n:
        s = (n - m) // 2
        return np.ascontiguousarray(x[:, s : s + m])
    return np.tile(x, (1, -(-m // n)))[:, :m]


def cases(x: np.ndarray, sr: int, full: list | None = None, seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    out = [Case(f"gain {g:+d} dB", "gain", g, True, np.clip(x * 10 ** (g / 20), -1, 1).astype(np.float32))
           for g in GAINS_DB]
    white = rng.standard_normal(x.shape).astype(np.float32)
    bab = babble(x, rng)
    for kind, noise in (("white", white), ("babble", bab)):
        out += [Case(f"{kind} noise SNR {s} dB", "noise", f"{kind} {s} dB", False, _at_snr(x, noise, s))
                for s in SNRS_DB]
    out.append(Case(f"DC offset {DC_OFFSET:g}", "dc", DC_OFFSET, False, np.clip(x + DC_OFFSET, -1, 1)))
    out.append(Case("telephone band 300-3400 Hz", "band", "300-3400 Hz", False, telephone(x, sr)))
    out += [Case(f"length {f:g}x", "length", f, True, with_length(x, f)) for f in LENGTHS]
    if full is not None:
        out.append(Case("whole utterances", "length", "whole", True, [w.astype(np.float32) for w in full]))
    return out


def run_audio(runner, audio) -> np.ndarray:
    """Logits of a (N, samples) array of clips, or of a list of whole utterances of different lengths."""
    return runner.run_each(audio) if isinstance(audio, list) else runner(audio)


@dataclass
class Suite:
    """The perturbed held-out set and the FP32 student's decisions on it, computed once for all artifacts."""
    y: np.ndarray
    classes: list[str]
    cases: list[Case]
    reference: str = "prune"
    ref_pred: dict = field(default_factory=dict)

    def subset(self, n: int) -> np.ndarray:
        return subset_indices(self.y, n)

    @classmethod
    def build(cls, x, y, classes, ref_runner, sr: int = 16000, full=None, seed: int = 0) -> "Suite":
        suite = cls(np.asarray(y), list(classes), cases(np.asarray(x, np.float32), sr, full, seed))
        suite.ref_pred = {c.name: run_audio(ref_runner, c.audio).argmax(1) for c in suite.cases}
        return suite

    def measure(self, runner: Callable, on_case=None, max_clips: int | None = None, gated_only: bool = False) -> dict:
        """A runtime too slow for the whole suite (a simulator) runs only the gated cases (gated_only), and with
        max_clips on a fixed subset of that many clips, every class alike; the result says so ("subset")."""
        preds = {}
        rows = []
        idx = self.subset(max_clips) if max_clips and max_clips < len(self.y) else None
        static = bool(getattr(runner, "fixed_samples", None))
        for c in self.cases:
            # a simulator runs only the gated cases; a static window's lengths are the runtime's (not gated)
            if gated_only and (not c.gated or (static and c.kind == "length")):
                continue
            audio = c.audio if idx is None else (
                [c.audio[i] for i in idx] if isinstance(c.audio, list) else c.audio[idx])
            p = preds[c.name] = run_audio(runner, audio).argmax(1)
            ref, y = (self.ref_pred[c.name], self.y) if idx is None else (self.ref_pred[c.name][idx], self.y[idx])
            if on_case:
                on_case(c.name)
            rows.append({"case": c.name, "kind": c.kind, "value": c.value, "gated": c.gated,
                         "agree_ref": float((p == ref).mean()),
                         "ua": classification_metrics(y, p, self.classes)["ua"]})
        if static:  # a static-length graph: the runner tiles and slides its
            for r in rows:                            # window, so lengths are the runtime's, not the model's
                if r["kind"] == "length":
                    r["gated"], r["note"] = False, "fixed window: tiled or slid by the runtime, not gated"
        at0 = preds["gain +0 dB"]
        for r in rows:
            r["agree_self"] = float((preds[r["case"]] == at0).mean()) if r["kind"] == "gain" else None
        gains = [r for r in rows if r["kind"] == "gain"]
        lengths = [r for r in rows if r["kind"] == "length"]
        out = {} if not gated_only else {"subset": f"{len(self.y) if idx is None else len(idx)} of {len(self.y)} "
                                                   "clips, gated cases only (a simulator: the whole suite would "
                                                   "take hours)"}
        return out | {"reference": self.reference, "n": int(len(self.y) if idx is None else len(idx)), "cases": rows,
                "min_gain_agreement": min(min(r["agree_ref"], r["agree_self"]) for r in gains),
                "min_length_agreement": min([r["agree_ref"] for r in lengths if r["gated"]] or [1.0])}


def resolving_clips(requested: int | None, gate: float) -> int | None:
    """A simulator subset large enough for the gate to allow 3 disagreeing clips: at least 3 / (1 - gate)
    (150 at 0.98). None stays None (every clip)."""
    if requested is None:
        return None
    return max(int(requested), math.ceil(3 / max(1e-9, 1 - gate) - 1e-9))


def subset_indices(y: np.ndarray, n: int) -> np.ndarray:
    """n clip indices, the classes in turn (the first clips of each class), sorted: deterministic."""
    by_class = [list(np.flatnonzero(y == c)) for c in np.unique(y)]
    out = []
    while len(out) < n and any(by_class):
        for lst in by_class:
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return np.array(sorted(out))


def robust_gate(name: str, robustness: dict, limit: float) -> dict:
    worst = min(robustness["min_gain_agreement"], robustness["min_length_agreement"])
    rows = robustness["cases"]
    gated = [r for r in rows if r["gated"]]
    bad = min(gated, key=lambda r: min(r["agree_ref"], r["agree_self"] if r["agree_self"] is not None else 1.0))
    return {"name": f"robust agreement [{name}]", "limit": limit, "value": round(worst, 4),
            "passed": worst >= limit, "worst_case": bad["case"]}
