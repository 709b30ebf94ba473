"""Minority-class oversampling (issue 16, part 4): none vs SMOTE vs the WaveGAN, on held-out speakers.

    .venv/bin/python bench/generative.py [--corpus /work/corpora/varlen] [--minority happy] [--keep 2]
        [--recipe recipes/demo.yaml] [--gan-seconds 120] [--out runs/generative] [--arms none,smote,wavegan]
        [--own-teachers] [--set KEY=VALUE ...]

1. Corpus: CORPUS/manifest.csv (a bench/dev_corpus.py corpus, bench/DEV_CORPORA.md) made imbalanced: on the
   TRAIN speakers of the recipe's speaker split (edgeser.data.manifest.speaker_split with the recipe's
   data.seed, val_speakers, test_speakers; it depends on the speakers only, so dropping clips keeps it), only
   the first --keep clips of class --minority per speaker are kept. Validation and test speakers keep every
   clip. Written to CORPUS/manifest-<minority>-<keep>.csv (rows stay inside the corpus folder).
2. Three runs of `edgeser compress --resume` with the base recipe pointed at it, short epochs (SHORT below;
   yours win with --set), exporting only onnx-fp32 and onnx-int8, robustness off:
   none; smote (data.augment.smote: SMOTE in the student's log-mel space, distill and prune);
   wavegan (data.augment.generative.enabled, max_seconds = --gan-seconds). A gate failing (exit 1) is a result.
   The arms after `none` distil from none's teacher (teacher.checkpoint = OUT/none/stages/teacher/model.pt,
   trained on the imbalanced real clips), so they differ only in the student's training set and the teacher
   is trained once; --own-teachers trains one per arm instead (the WaveGAN arm's then also sees the
   generated clips, as the pipeline does without a teacher.checkpoint).
3. From each run's stages/verify/metrics.json: UA of onnx-fp32 and onnx-int8 with the run's 95 % bootstrap
   interval (ua_ci), and the minority class's recall with a 95 % percentile bootstrap over that class's test
   clips (from the confusion matrix, 2000 resamples, seed 0); from stages/data/metrics.json the WaveGAN's clips,
   steps, training seconds and whether the time bound stopped it.

Prints a table and, as the LAST line, one JSON object. Exit 0 when every arm produced verify metrics, 1 when
an arm failed before that, 2 bad input.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeser.data.manifest import read_manifest, speaker_split
from edgeser.recipe import RecipeError, load_recipe

SHORT = ["teacher.epochs=6", "teacher.min_steps=0", "distill.epochs=10", "distill.min_kd_rows=0",
         "distill.aug_views=1", "prune.epochs=2", "qat.epochs=1", "export.formats=[onnx-fp32,onnx-int8]",
         "verify.gate_artifacts=[onnx-int8]", "verify.robustness=false", "verify.latency_runs=5"]
ARMS = {"none": [], "smote": ["data.augment.smote=true"], "wavegan": ["data.augment.generative.enabled=true"]}


def imbalanced_manifest(corpus: Path, recipe, minority: str, keep: int) -> tuple[Path, dict]:
    """Write CORPUS/manifest-<minority>-<keep>.csv; return it and the train split's class counts."""
    src = corpus / "manifest.csv"
    d = recipe.data
    items = read_manifest(src)
    if minority not in {it.label for it in items}:
        raise RecipeError(f"--minority {minority!r}: no such label in {src}")
    train = {it.speaker for it in speaker_split(items, d.val_speakers, d.test_speakers, d.seed)["train"]}
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept, seen, counts = [], {}, {}
    for r in rows:
        if r["speaker"] in train and r["label"] == minority:
            seen[r["speaker"]] = seen.get(r["speaker"], 0) + 1
            if seen[r["speaker"]] > keep:
                continue
        kept.append(r)
        if r["speaker"] in train:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
    out = corpus / f"manifest-{minority}-{keep}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(kept)
    return out, dict(sorted(counts.items()))


def recall_ci(confusion: list[list[int]], c: int, n_boot: int = 2000, seed: int = 0) -> tuple[float, list[float]]:
    """Recall of class c and its 95 % percentile bootstrap over c's clips (row c of the confusion matrix)."""
    row = np.asarray(confusion[c])
    hits = np.repeat([1, 0], [row[c], row.sum() - row[c]])
    boot = np.random.default_rng(seed).choice(hits, (n_boot, len(hits))).mean(1)
    return float(hits.mean()), [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def run_arm(name: str, args, manifest: Path) -> dict:
    out = Path(args.out) / name
    teacher = Path(args.out) / "none/stages/teacher/model.pt"
    shared = [] if name == "none" or args.own_teachers else [f"teacher.checkpoint={teacher}"]
    if shared and not teacher.is_file():
        return {"arm": name, "exit": None, "wall_s": 0.0, "error": f"no shared teacher {teacher} (run arm none)"}
    sets = [f"data.manifest={manifest}", f"name=generative-{name}", *SHORT, *ARMS[name],
            f"data.augment.generative.max_seconds={args.gan_seconds}", *shared, *args.set]
    cmd = [sys.executable, "-m", "edgeser", "compress", "--recipe", args.recipe, "--out", str(out), "--resume",
           "--no-progress"] + [a for s in sets for a in ("--set", s)]
    t = time.perf_counter()
    rc = subprocess.run(cmd, check=False, stdout=sys.stderr).returncode
    wall = time.perf_counter() - t
    verify = out / "stages/verify/metrics.json"
    if rc not in (0, 1) or not verify.is_file():
        return {"arm": name, "exit": rc, "wall_s": round(wall, 1), "error": "no verify metrics"}
    v, data = json.loads(verify.read_text()), json.loads((out / "stages/data/metrics.json").read_text())
    c = data["classes"].index(args.minority)
    res = {"arm": name, "exit": rc, "wall_s": round(wall, 1), "train_sizes": data["sizes"]["train"],
           "test_clips": data["sizes"]["test"], "teacher_ua": v["teacher"]["ua"]}
    for a in v["artifacts"]:
        if a["name"] in ("onnx-fp32", "onnx-int8") and "ua" in a:
            rec, rec_ci = recall_ci(a["confusion"], c)
            res[a["name"]] = {"ua": a["ua"], "ua_ci": a["ua_ci"], "minority_recall": rec,
                              "minority_recall_ci": rec_ci, "per_class_recall": a["per_class_recall"]}
    g = data.get("generative") or {}
    if g.get("enabled"):
        res["wavegan"] = {k: g.get(k) for k in ("generated", "steps", "train_seconds", "time_bound_hit", "cached")}
    return res


def pct(x) -> str:
    return f"{100 * x:5.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="/work/corpora/varlen")
    ap.add_argument("--minority", default="happy")
    ap.add_argument("--keep", type=int, default=2, help="minority clips kept per train speaker")
    ap.add_argument("--recipe", default=str(ROOT / "recipes/demo.yaml"))
    ap.add_argument("--gan-seconds", type=float, default=120.0)
    ap.add_argument("--out", default=str(ROOT / "runs/generative"))
    ap.add_argument("--arms", default="none,smote,wavegan")
    ap.add_argument("--own-teachers", action="store_true", help="train a teacher per arm (default: none's)")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    corpus = Path(args.corpus)
    try:
        if not (corpus / "manifest.csv").is_file():
            raise RecipeError(f"--corpus: {corpus}/manifest.csv not found (bench/DEV_CORPORA.md makes one)")
        if args.keep < 1:
            raise RecipeError("--keep: at least 1 clip per train speaker")
        arms = args.arms.split(",")
        if not set(arms) <= set(ARMS):
            raise RecipeError(f"--arms: choose from {', '.join(ARMS)}")
        recipe = load_recipe(args.recipe, [f"data.manifest={corpus / 'manifest.csv'}", *args.set])
        manifest, counts = imbalanced_manifest(corpus, recipe, args.minority, args.keep)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"corpus {corpus} -> {manifest.name}: train clips per class {counts}")
    t = time.perf_counter()
    results = [run_arm(a, args, manifest) for a in arms]
    print(f"\n{'arm':8} {'exit':>4} {'train':>5} {'UA fp32 [95% CI]':>22} {'UA int8 [95% CI]':>22} "
          f"{args.minority + ' recall int8 [95% CI]':>28} {'wall s':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['arm']:8} {r['exit']:>4} {r['error']}")
            continue
        f, i = r.get("onnx-fp32", {}), r.get("onnx-int8", {})
        cell = (lambda m, k: f"{pct(m[k])} [{pct(m[k + '_ci'][0])}, {pct(m[k + '_ci'][1])}]" if m else "-")
        print(f"{r['arm']:8} {r['exit']:>4} {r['train_sizes']:>5} {cell(f, 'ua'):>22} {cell(i, 'ua'):>22} "
              f"{cell(i, 'minority_recall'):>28} {r['wall_s']:>7}")
        if "wavegan" in r:
            w = r["wavegan"]
            print(f"{'':8} WaveGAN: {w['generated']} clips, {w['steps']} steps in {w['train_seconds']} s "
                  f"(time bound hit: {w['time_bound_hit']}, cached: {w['cached']})")
    total = round(time.perf_counter() - t, 1)
    print(f"total {total} s; teacher UA per arm: {[round(r.get('teacher_ua', float('nan')), 4) for r in results]}")
    print(json.dumps({"corpus": str(corpus), "manifest": manifest.name, "train_counts": counts,
                      "minority": args.minority, "arms": results, "total_s": total}))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
