"""Soft labels against majority labels (issue 13, point 4), cross-validated on a dev corpus with simulated votes.

    .venv/bin/python bench/soft_labels.py [--corpus /work/corpora/ravdess] [--recipe recipes/demo.yaml]
        [--folds 3] [--jobs 2] [--set KEY=VALUE ...] [--out runs/soft-labels]

The corpus is a bench/dev_corpus.py folder; its manifest-votes.csv (simulated raters, `dev_corpus.py --votes
DIR`; written here when missing) carries a `votes` column. `edgeser cv` runs twice on it with the same speaker
folds, once with `data.labels=majority` and once with `data.labels=soft`; both are scored against the vote
majority (edgeser/data/votes.py's tie rule), so they are scored on the same labels. Only onnx-int8 is exported,
and the robustness suite is off (`verify.robustness=false`): this compares training targets, not runtimes.

Printed: per fold and mean ± std over folds, the teacher's and the INT8 student's UA for each mode, and the
paired difference soft − majority (points) with a 95 % t interval over folds (t(0.975, folds − 1) · sd / √folds).
The last line is one JSON object. Exit 0 measured, 1 a cv run failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import dev_corpus as dc  # noqa: E402

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run_cv(a, mode: str, manifest: Path) -> dict:
    out = a.out / mode
    cmd = [sys.executable, "-m", "edgeser", "cv", "-r", str(a.recipe), "--set", f"data.manifest={manifest}",
           "--set", f"data.labels={mode}", "--set", "export.formats=[onnx-int8]", "--set", "verify.robustness=false",
           "--set", f"name=soft-labels-{mode}", *[x for s in a.sets for x in ("--set", s)],
           "--folds", str(a.folds), "--jobs", str(a.jobs), "--out", str(out), "--resume", "--no-progress"]
    print(f"[soft_labels] {mode}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, stdout=sys.stderr)
    if r.returncode == 2:
        raise SystemExit(2)
    if r.returncode not in (0, 1) or not (out / "cv.json").is_file():
        raise RuntimeError(f"{mode}: edgeser cv failed (exit {r.returncode})")
    return json.loads((out / "cv.json").read_text())


def per_fold(cv: dict, what: str) -> list[float | None]:
    if what == "teacher":
        return [p["teacher"].get("ua") for p in cv["per_fold"]]
    return [p["artifacts"].get("onnx-int8", {}).get("ua") for p in cv["per_fold"]]


def paired(a: list, b: list) -> dict:
    d = [100 * (y - x) for x, y in zip(a, b) if x is not None and y is not None]
    if len(d) < 2:
        return {"mean_pt": d[0] if d else None, "ci95_pt": None, "n": len(d)}
    m, sd = statistics.fmean(d), statistics.stdev(d)
    h = T975.get(len(d) - 1, 1.96) * sd / math.sqrt(len(d))
    return {"mean_pt": m, "ci95_pt": [m - h, m + h], "n": len(d), "per_fold_pt": d}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpora/ravdess"), metavar="DIR")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes/demo.yaml", metavar="YAML")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("runs/soft-labels"), metavar="DIR")
    a = ap.parse_args(argv)
    if not (a.corpus / "speakers.json").is_file():
        print(f"error: --corpus: {a.corpus} is not a bench/dev_corpus.py corpus (no speakers.json)", file=sys.stderr)
        return 2
    if a.folds < 2 or a.jobs < 1:
        print("error: --folds needs at least 2 and --jobs at least 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    manifest = (a.corpus / "manifest-votes.csv").resolve()
    if not manifest.is_file():
        print(f"[soft_labels] writing {manifest}: {json.dumps(dc.write_votes(a.corpus))}", file=sys.stderr)
    try:
        cvs = {mode: run_cv(a, mode, manifest) for mode in ("majority", "soft")}
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = {"bench": "soft_labels", "corpus": str(a.corpus), "folds": a.folds, "recipe": str(a.recipe),
              "sets": a.sets}
    print(f"soft vs majority labels on {a.corpus.name} ({a.folds} speaker folds; UA %, scored on the vote majority)")
    print(f"{'model':<10} {'mode':<9} {'per fold':<26} mean ± std")
    for what in ("teacher", "int8"):
        figs = {}
        for mode, cv in cvs.items():
            uas = per_fold(cv, what)
            vals = [u for u in uas if u is not None]
            m, s = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
            figs[mode] = {"ua_per_fold": uas, "ua_mean": m, "ua_std": s}
            folds = " ".join("—" if u is None else f"{100 * u:.1f}" for u in uas)
            print(f"{what:<10} {mode:<9} {folds:<26} {100 * m:.1f} ± {100 * s:.1f}")
        figs["soft_minus_majority"] = p = paired(figs["majority"]["ua_per_fold"], figs["soft"]["ua_per_fold"])
        ci = "" if p["ci95_pt"] is None else f" [{p['ci95_pt'][0]:+.1f}, {p['ci95_pt'][1]:+.1f}]"
        print(f"{what:<10} soft − majority: {p['mean_pt']:+.1f} pt{ci} (95 % t interval over folds)")
        result[what] = figs
    wall = time.perf_counter() - t0
    print(f"wall time: {wall:.0f} s")
    print(json.dumps(result | {"wall_s": round(wall, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
