"""Two bench/generalization.py outputs side by side: INT8 UA per fold, paired.

    .venv/bin/python bench/compare_generalization.py BASE_OUT NEW_OUT [--corpora small,ravdess,varlen]

For each corpus that both folders hold (BASE_OUT/<name>/cv.json), and fold by fold (the same speakers: checked),
the onnx-int8 UA of each and their difference NEW - BASE in points; per corpus the mean difference, and over all
folds of all corpora the mean with a 95 % t interval (folds are the unit: their clips are not independent
within a fold). Run both with the same teachers (copy BASE_OUT before running NEW with --resume), so the
difference is the change's, not the teachers' retraining noise. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 11: 2.20,
       12: 2.18, 14: 2.14, 19: 2.09, 29: 2.05}  # two-sided 95 % t quantiles by degrees of freedom


def t95(df: int) -> float:
    """The quantile for df, or for the largest tabled df below it (a slightly wider interval)."""
    if df < 1:
        return float("nan")
    return T95.get(df) or T95[max(k for k in T95 if k <= df)]


def folds(out: Path, corpus: str) -> dict[int, tuple[list[str], float]]:
    cv = json.loads((out / corpus / "cv.json").read_text())
    return {f["fold"]: (sorted(f["test"]["speakers"]), f["artifacts"]["onnx-int8"]["ua"]) for f in cv["per_fold"]
            if f.get("artifacts", {}).get("onnx-int8", {}).get("ua") is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--corpora", default="small,ravdess,varlen")
    args = ap.parse_args()
    rows, diffs = {}, []
    for c in args.corpora.split(","):
        if not ((args.base / c / "cv.json").is_file() and (args.new / c / "cv.json").is_file()):
            print(f"{c}: not in both folders, skipped", file=sys.stderr)
            continue
        a, b = folds(args.base, c), folds(args.new, c)
        common = sorted(set(a) & set(b))
        for k in common:
            if a[k][0] != b[k][0]:
                sys.exit(f"error: {c} fold {k}: the two runs tested other speakers")
        d = [100 * (b[k][1] - a[k][1]) for k in common]
        diffs += d
        rows[c] = {"folds": common, "base_ua": [round(a[k][1], 4) for k in common],
                   "new_ua": [round(b[k][1], 4) for k in common], "diff_pt": [round(x, 2) for x in d],
                   "mean_diff_pt": round(statistics.fmean(d), 3) if d else None}
        print(f"{c:8s} INT8 UA % base {' / '.join(f'{100 * a[k][1]:.1f}' for k in common)}   new "
              f"{' / '.join(f'{100 * b[k][1]:.1f}' for k in common)}   diff {rows[c]['mean_diff_pt']:+.2f} pt")
    if not diffs:
        sys.exit("error: no corpus in both folders")
    mean = statistics.fmean(diffs)
    half = t95(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    print(f"all {len(diffs)} folds: new - base {mean:+.2f} pt, 95 % t interval [{mean - half:+.2f}, {mean + half:+.2f}]")
    print(json.dumps({"corpora": rows, "folds": len(diffs), "mean_diff_pt": round(mean, 3),
                      "ci95_pt": [round(mean - half, 3), round(mean + half, 3)]}))


if __name__ == "__main__":
    main()
