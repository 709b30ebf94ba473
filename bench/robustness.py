"""Level, length, noise and band robustness of every runnable artifact of a finished run.

    .venv/bin/python bench/robustness.py [--run runs/demo] [--data MANIFEST.csv [--root DIR]]

Without --data: the run's own held-out split (as `edgeser verify` builds it). With --data: every row of that
manifest (another corpus, e.g. one made by bench/dev_corpus.py), mapped to the run's classes by name; rows with
other labels are skipped. Whole utterances are a case of their own when the clips' lengths vary.

For each artifact and case (edgeser/robustness.py): agreement with the FP32 student (stages/prune) on the same
perturbed input, agreement with the artifact's own decisions at 0 dB (gain cases), and UA. Agreements carry a
95 % Wilson interval over clips. Prints a table per artifact, then ONE JSON line with, per artifact,
min_gain_agreement and min_length_agreement (the figures the verify gate uses), and UA at 0 and -30 dB.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeser.data.audio import BadAudio, fix_length, load_audio  # noqa: E402
from edgeser.data.manifest import read_manifest  # noqa: E402
from edgeser.recipe import validate  # noqa: E402
from edgeser.robustness import Suite  # noqa: E402
from edgeser.formats import load_runner  # noqa: E402
from edgeser.runtimes import torch_runner  # noqa: E402
from edgeser.models.io import load_student  # noqa: E402


def wilson(p: float, n: int, z: float = 1.96) -> list[float]:
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(float(c - h), 4), round(float(c + h), 4)]


def held_out(run: Path, recipe):
    from edgeser.data.dataset import load_corpus

    from edgeser.run_manifest import run_path

    data = json.loads((run / "stages/data/metrics.json").read_text())
    manifest = run_path(run, data["manifest"])
    test = load_corpus(manifest, recipe.data).splits["test"]
    return test.x.numpy(), test.y.numpy(), test.full, data["classes"], f"{run.name} held-out split"


def other_corpus(path: Path, root: Path | None, recipe, classes: list[str]):
    items = read_manifest(path, allow_outside_root=root is not None, root=root)
    n = int(recipe.data.clip_seconds * recipe.data.sample_rate)
    xs, ys, full, skipped = [], [], [], 0
    for it in items:
        label = recipe.data.label_map.get(it.label, it.label)
        if label not in classes:
            skipped += 1
            continue
        try:
            w = load_audio(it.path, recipe.data.sample_rate)
        except (BadAudio, FileNotFoundError):
            skipped += 1
            continue
        xs.append(fix_length(w, n))
        ys.append(classes.index(label))
        full.append(w)
    print(f"{path}: {len(xs)} clips scored, {skipped} skipped (other labels or bad audio)", file=sys.stderr)
    variable = any(len(w) != n for w in full)
    return np.stack(xs), np.array(ys), full if variable else None, classes, str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs/demo")
    ap.add_argument("--data", type=Path, help="score every row of this manifest instead of the held-out split")
    ap.add_argument("--root", type=Path, help="corpus root for --data rows outside the manifest's folder")
    args = ap.parse_args()
    run = args.run
    if not (run / "manifest.json").is_file():
        print(f"{run}: not a finished run folder (run `make demo` first)", file=sys.stderr)
        return 2
    recipe = validate(json.loads((run / "recipe.json").read_text()))
    classes = json.loads((run / "stages/data/metrics.json").read_text())["classes"]
    if args.data:
        x, y, full, classes, corpus = other_corpus(args.data, args.root, recipe, classes)
    else:
        x, y, full, classes, corpus = held_out(run, recipe)
    t0 = time.perf_counter()
    fp32, _ = load_student(run / "stages/prune/model.pt")
    suite = Suite.build(x, y, classes, torch_runner(fp32), sr=recipe.data.sample_rate, full=full, seed=0)
    records = json.loads((run / "stages/export/metrics.json").read_text())["artifacts"]
    result = {"corpus": corpus, "n": int(len(y)), "artifacts": {}}
    for rec in records:
        if rec["status"] != "exported" or rec["precision"] == "fp32":
            continue
        try:
            runner = load_runner(rec["format"], run / rec["path"])
        except Exception as e:  # a runtime missing here (CoreML, TensorRT) is reported, not fatal
            print(f"{rec['name']}: skipped, cannot run here: {type(e).__name__}: {e}")
            continue
        r = suite.measure(runner)
        rows = {c["case"]: c for c in r["cases"]}
        print(f"\n## {rec['name']}  ({corpus}, {len(y)} clips; agreement vs the FP32 student)")
        print(f"{'case':<28} {'agree FP32 %':>13} {'95% CI':>15} {'agree own 0 dB %':>17} {'UA %':>6}  gated")
        for c in r["cases"]:
            lo, hi = wilson(c["agree_ref"], len(y))
            own = "" if c["agree_self"] is None else f"{100 * c['agree_self']:.1f}"
            print(f"{c['case']:<28} {100 * c['agree_ref']:>13.1f} {f'[{100 * lo:.1f}, {100 * hi:.1f}]':>15} "
                  f"{own:>17} {100 * c['ua']:>6.1f}  {'yes' if c['gated'] else 'no'}")
        result["artifacts"][rec["name"]] = {
            "min_gain_agreement": round(r["min_gain_agreement"], 4),
            "min_gain_agreement_ci": wilson(r["min_gain_agreement"], len(y)),
            "min_length_agreement": round(r["min_length_agreement"], 4),
            "min_length_agreement_ci": wilson(r["min_length_agreement"], len(y)),
            "ua_0db": round(rows["gain +0 dB"]["ua"], 4), "ua_minus30db": round(rows["gain -30 dB"]["ua"], 4),
            "ua_minus40db": round(rows["gain -40 dB"]["ua"], 4),
            "min_noise_agreement": round(min(c["agree_ref"] for c in r["cases"] if c["kind"] == "noise"), 4)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
