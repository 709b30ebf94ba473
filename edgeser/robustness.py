"""The robustness suite of `verify`: the held-out clips played the way users play them, not as the corpus has them.

Cases (each a function of the held-out waveforms, made a chunk of clips at a time when run):
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
    # (N, samples) float32; a list (or rows.Utterances) of whole utterances of different lengths; or a Perturbed
    # set, made a chunk of clips at a time when it is run (the held-out set need not fit in memory)
    audio: object


CHUNK = 256  # held-out clips perturbed and run at a time


def _as_array(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x, np.float32)


class Perturbed:
    """fn(clips, rows) of the held-out clips `x` (an array, a tensor or rows.Clips), made CHUNK clips at a time
    when run (run_audio); `rows` are the clips' indices in x, so a clip's noise is the same in any subset."""

    def __init__(self, x, fn, rows: np.ndarray | None = None):
        self.x, self.fn = x, fn
        self.rows = np.arange(len(x)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> "Perturbed":
        return Perturbed(self.x, self.fn, self.rows[np.asarray(idx)])

    def numpy(self) -> np.ndarray:
        """Every clip at once (tests, small sets)."""
        return np.concatenate(list(self.chunks()))

    def make(self, clips: np.ndarray, rows: np.ndarray, memo: dict) -> np.ndarray:
        """This case of `clips` (the rows `rows` of x); memo: what the cases of one chunk share (its noises)."""
        return np.ascontiguousarray(self.fn(clips, rows, memo), dtype=np.float32)

    def chunks(self):
        for a in range(0, len(self.rows), CHUNK):
            rows = self.rows[a : a + CHUNK]
            yield self.make(_as_array(self.x[rows]), rows, {})


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True)) + 1e-12


def _at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    return np.clip(x + noise * (_rms(x) / _rms(noise)) * 10 ** (-snr_db / 20), -1, 1).astype(np.float32)


def babble(x, rows: np.ndarray, seed: int, talkers: int = 4) -> np.ndarray:
    """Each clip's babble: `talkers` other held-out clips of x, circularly shifted and summed (clip i's from a
    generator seeded by (seed, i)). The other clips of a chunk are read once each."""
    n, width = len(x), x.shape[1]
    picks = []
    for i in rows:
        rng = np.random.default_rng([seed, 2, int(i)])
        picks.append(((int(i) + rng.integers(1, max(2, n), talkers)) % n, rng.integers(0, width, talkers)))
    need = np.unique(np.concatenate([o for o, _ in picks]))
    clips = dict(zip(need.tolist(), _as_array(x[need])))
    out = np.zeros((len(rows), width), dtype=np.float64)
    for j, (others, shifts) in enumerate(picks):
        for o, shift in zip(others.tolist(), shifts.tolist()):
            out[j] += np.roll(clips[o], shift)
    return out.astype(np.float32)


def white(rows: np.ndarray, width: int, seed: int) -> np.ndarray:
    """Clip i's white noise from a generator seeded by (seed, i)."""
    return np.stack([np.random.default_rng([seed, 1, int(i)]).standard_normal(width) for i in rows]).astype(np.float32)


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


def cases(x, sr: int, full=None, seed: int = 0) -> list[Case]:
    """The suite's cases of the held-out clips x ((N, samples): an array, a tensor or rows.Clips), each made
    when it runs (Perturbed); `full`: their whole utterances, when lengths vary."""
    width = x.shape[1]

    def case(name, kind, value, gated, fn):
        return Case(name, kind, value, gated, Perturbed(x, fn))

    out = [case(f"gain {g:+d} dB", "gain", g, True,
                lambda c, r, m, g=g: np.clip(c * 10 ** (g / 20), -1, 1)) for g in GAINS_DB]
    noises = {"white": lambda r: white(r, width, seed), "babble": lambda r: babble(x, r, seed)}
    for kind, noise in noises.items():  # a chunk's noise is made once for its SNRs (memo)
        out += [case(f"{kind} noise SNR {s} dB", "noise", f"{kind} {s} dB", False,
                     lambda c, r, m, s=s, kind=kind: _at_snr(c, m[kind] if kind in m else m.setdefault(
                         kind, noises[kind](r)), s)) for s in SNRS_DB]
    out.append(case(f"DC offset {DC_OFFSET:g}", "dc", DC_OFFSET, False, lambda c, r, m: np.clip(c + DC_OFFSET, -1, 1)))
    out.append(case("telephone band 300-3400 Hz", "band", "300-3400 Hz", False, lambda c, r, m: telephone(c, sr)))
    out += [case(f"length {f:g}x", "length", f, True, lambda c, r, m, f=f: with_length(c, f)) for f in LENGTHS]
    if full is not None:
        out.append(Case("whole utterances", "length", "whole", True, full))
    return out


def run_audio(runner, audio) -> np.ndarray:
    """Logits of held-out audio: a (N, samples) array of clips; clips read a chunk at a time (a tensor,
    rows.Clips, or a Perturbed case); or whole utterances of different lengths (a list, rows.Utterances)."""
    if isinstance(audio, np.ndarray):
        return runner(audio)
    if isinstance(audio, Perturbed):
        return np.concatenate([runner(c) for c in audio.chunks()])
    if hasattr(audio, "shape"):  # rows of equal length
        return np.concatenate([runner(_as_array(audio[a : a + CHUNK])) for a in range(0, len(audio), CHUNK)])
    return runner.run_each(audio)


def run_cases(runner, cases: list[Case], idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every case's logits (on the clips idx of each, or all). The Perturbed cases run chunk by chunk: each chunk
    of held-out clips is read once, and its noises made once, for all of them."""
    made = [c for c in cases if isinstance(c.audio, Perturbed)]
    if len({id(c.audio.x) for c in made}) > 1:
        raise ValueError("run_cases: the perturbed cases must be of the same held-out clips")
    parts: dict[str, list] = {c.name: [] for c in made}
    if made:
        first = made[0].audio if idx is None else made[0].audio[idx]
        for a in range(0, len(first), CHUNK):
            rows = first.rows[a : a + CHUNK]
            clips, memo = _as_array(first.x[rows]), {}
            for c in made:
                parts[c.name].append(runner(c.audio.make(clips, rows, memo)))
    out = {name: np.concatenate(p) for name, p in parts.items()}
    for c in cases:
        if c.name not in out:
            audio = c.audio if idx is None else (c.audio[idx] if isinstance(c.audio, np.ndarray)
                                                 else [c.audio[i] for i in idx])
            out[c.name] = run_audio(runner, audio)
    return out


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
        suite = cls(np.asarray(y), list(classes), cases(x, sr, full, seed))
        suite.ref_pred = {k: v.argmax(1) for k, v in run_cases(ref_runner, suite.cases).items()}
        return suite

    def measure(self, runner: Callable, on_case=None, max_clips: int | None = None, gated_only: bool = False) -> dict:
        """A runtime too slow for the whole suite (a simulator) runs only the gated cases (gated_only), and with
        max_clips on a fixed subset of that many clips, every class alike; the result says so ("subset")."""
        preds = {}
        rows = []
        idx = self.subset(max_clips) if max_clips and max_clips < len(self.y) else None
        static = bool(getattr(runner, "fixed_samples", None))
        # a simulator runs only the gated cases; a static window's lengths are the runtime's (not gated)
        chosen = [c for c in self.cases if not (gated_only and (not c.gated or (static and c.kind == "length")))]
        logits = run_cases(runner, chosen, idx)
        for c in chosen:
            p = preds[c.name] = logits[c.name].argmax(1)
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
