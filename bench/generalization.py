"""Generalization (issue 13): the whole pipeline, cross-validated, on the espeak-ng development corpora.

    .venv/bin/python bench/generalization.py [--corpora /work/corpora] [--corpora-names small,ravdess,varlen]
        [--recipe recipes/demo.yaml] [--folds 3] [--set KEY=VALUE ...] [--out runs/generalization] [--quick]

For each corpus (bench/dev_corpus.py presets small, ravdess, varlen; see bench/DEV_CORPORA.md):

1. Corpus: CORPORA/<name> is reused when it is what `dev_corpus.py --preset <name> --seed <--corpus-seed>` makes:
   its speakers.json names that preset and seed, its speaker settings equal the ones the generator draws now,
   and manifest.csv has the preset's clip counts per speaker and class, every WAV present. Otherwise it is
   (re)built with dev_corpus.py --force (atomic: a temporary folder renamed at the end). dev_corpus.py records
   no version of its rendering code, so an edit to how clips are rendered (not to PRESETS or make_speakers)
   is NOT detected: delete the folder to rebuild it. A folder that is not a corpus is never replaced (exit 2).
2. Recipe: the base recipe (--recipe) with `--set data.manifest=CORPORA/<name>/manifest.csv` (which replaces its
   data.synth), data.classes = the corpus labels when the base recipe names other classes,
   name=<recipe name>-<corpus>, export.formats=[onnx-int8] (only the INT8 artifact is compared; this saves
   the export and verification of the others), then every --set of this script (so yours win). Everything
   else (clip_seconds: clips longer than it are centre-cropped; epochs; gates) is the base recipe's.
3. `edgeser cv --folds N --resume --out OUT/<name>` (the fold plan is checked for every corpus before anything
   runs, with the same function cv uses, edgeser.cv.plan_folds -> manifest.speaker_folds). A fold whose gate
   fails (cv exit 1) is a result, not an error: it is reported. A rerun continues where a run stopped.
4. Baseline on the SAME folds: dev_corpus.py's log-mel statistics (40 bands, mean + std over the whole clip,
   not cropped) and its L2 logistic regression, trained on every speaker outside the test fold (the
   pipeline's train + validation speakers), z-scored on them, UA on the test fold. The fold speakers come
   from plan_folds and are checked against the ones cv.json says each fold ran on.

Printed per corpus: baseline UA, teacher UA and INT8 (onnx-int8) UA as mean ± std over folds (sample std),
the drop teacher − INT8 (mean over folds, points), the step along teacher → distill → prune → qat → onnx-int8
with the largest mean UA loss (where the drop happens; "none" when no step loses), the folds and clips, the
gates, the INT8 artifact's robustness (issue 8's suite, gated cases, from each fold's report.json: its worst
agreement with the FP32 student, its worst agreement with its own 0 dB decisions outside +6 dB, and at +6 dB,
where clips clip), and the corpus's wall time. Then the total wall time, and as the LAST line one JSON object:
max_drop_pt (largest mean drop over the corpora), teacher_beats_baseline_all, and per corpus its figures (UA
as fractions 0..1 like cv.json, drops in points). cv's own output goes to stderr.

Exit codes: 0 every corpus measured; 1 a cv run or corpus build failed (the others are still measured and
reported); 2 bad input (the message names the option or file); 130 interrupted.

Default run: the three corpora (small 252 clips / 12 speakers, ravdess 1392 / 24, varlen 960 / 24), 3 speaker
folds each, 2 folds at a time (--jobs 2), recipes/demo.yaml's settings with the corpus-size scaling of the
defaults (teacher.min_steps, distill.min_kd_rows: small trains its teacher 75 epochs and distils on 15
augmented views). Measured: 1854 s (31 min) for the three corpora (small 381 s, ravdess 604 s, varlen 869 s)
on this 2-core machine with other training jobs beside it part of the time; the teacher (SoundNet-8 from
scratch, about 140 s per fold at one thread) is about half of it. A rerun with --resume reuses every stage
whose inputs did not change. To shorten it: --folds 2, --corpora-names small,varlen, or --set
teacher.min_steps=150.

--quick: a smoke check, not a measurement: 2 folds (unless --folds), teacher 1 epoch, distill 2, prune 1,
qat 1, into runs/generalization-quick (unless --out). `--quick --corpora-names small` took 7 min (425 s)
with another training job on the 2 cores; the gates fail at these epochs, which the table reports.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dev_corpus as dc  # noqa: E402

from edgeser.recipe import RecipeError, load_recipe, parse_overrides  # noqa: E402

INT8 = "onnx-int8"
STEPS = ("teacher", "distill", "prune", "qat", INT8)
BENCH_SETS = [f"export.formats=[{INT8}]"]
QUICK_SETS = ["teacher.epochs=1", "teacher.min_steps=0", "distill.epochs=2", "distill.min_kd_rows=0", "prune.epochs=1",
              "qat.epochs=1"]
RESERVED = ("data.manifest", "data.synth", "data.fold", "data.fold_of")  # set per corpus / per fold


class BadInput(Exception):
    """Exit 2; the message names the option or file."""


# ---------------------------------------------------------------------------------------------------- corpora
def corpus_problem(folder: Path, preset: str, seed: int) -> str | None:
    """None when `folder` holds what dev_corpus.py would make for (preset, seed), else why not."""
    if not folder.exists():
        return "missing"
    spk, man = folder / "speakers.json", folder / "manifest.csv"
    if not spk.is_file() or not man.is_file():
        return "no speakers.json / manifest.csv"
    try:
        meta = json.loads(spk.read_text())
    except (OSError, ValueError) as e:
        return f"speakers.json unreadable ({e})"
    if meta.get("preset") != preset or meta.get("seed") != seed:
        return f"built as preset {meta.get('preset')!r} seed {meta.get('seed')!r}, want {preset!r} seed {seed}"
    p = dc.PRESETS[preset]
    speakers = dc.make_speakers(p, seed)
    if meta.get("speakers") != json.loads(json.dumps([s.__dict__ for s in speakers])):
        return "its speaker settings differ from what dev_corpus.py draws now"
    try:
        with open(man, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        return f"manifest.csv unreadable ({e})"
    counts = Counter((r.get("speaker"), r.get("label")) for r in rows)
    want = Counter({(s.name, lab): n for s in speakers for lab, n in p.per_class.items()})
    if counts != want:
        return f"manifest.csv has other clip counts per speaker and class ({len(rows)} rows, want {sum(want.values())})"
    absent = [r["path"] for r in rows if not (folder / r["path"]).is_file()]
    if absent:
        return f"{len(absent)} WAVs missing (e.g. {absent[0]})"
    return None


def ensure_corpus(folder: Path, preset: str, seed: int) -> tuple[str, float]:
    """('reused' | 'built', seconds). BadInput when the folder must be rebuilt but is not a corpus, or when
    espeak-ng is missing; RuntimeError when the generator fails."""
    why = corpus_problem(folder, preset, seed)
    if why is None:
        return "reused", 0.0
    if folder.exists() and (not folder.is_dir() or (not (folder / "speakers.json").is_file()
                                                    and any(folder.iterdir()))):
        raise BadInput(f"--corpora: {folder} exists and is not a dev_corpus.py corpus (no speakers.json); "
                       "move it away or choose another --corpora")
    if shutil.which("espeak-ng") is None:
        raise BadInput(f"--corpora: {folder} needs building ({why}) and espeak-ng is not installed "
                       "(apt-get install -y espeak-ng)")
    print(f"[generalization] {folder}: {why}; building preset {preset} seed {seed}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "bench/dev_corpus.py"), "--out", str(folder), "--preset", preset,
           "--seed", str(seed)] + (["--force"] if folder.exists() else [])
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"dev_corpus.py --preset {preset} failed (exit {r.returncode})")
    why = corpus_problem(folder, preset, seed)
    if why is not None:
        raise RuntimeError(f"{folder}: rebuilt, but still {why}")
    return "built", time.perf_counter() - t


# ---------------------------------------------------------------------------------------------------- baseline
def baseline(items, classes: list[str], groups: list[list[str]]) -> dict:
    """dev_corpus.py's log-mel statistics + logistic regression on the given speaker folds (test = a group,
    train = every other speaker)."""
    t = time.perf_counter()
    fb = dc.mel_fb()
    X = np.stack([dc.logmel_stats(it.path, fb) for it in items])
    y = np.array([classes.index(it.label) for it in items])
    spk = np.array([it.speaker for it in items])
    uas = []
    for k, group in enumerate(groups, start=1):
        te = np.isin(spk, group)
        tr = ~te
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-8
        W = dc.fit_logreg((X[tr] - mu) / sd, y[tr], len(classes))
        A = np.hstack([(X[te] - mu) / sd, np.ones((int(te.sum()), 1))])
        uas.append(dc.unweighted_acc(y[te], np.argmax(A @ W, axis=1), len(classes)))
        print(f"[baseline] fold-{k}/{len(groups)}: {int(te.sum())} test clips, UA {100 * uas[-1]:.1f} %",
              file=sys.stderr, flush=True)
    return {"ua_per_fold": uas, "ua_mean": statistics.fmean(uas),
            "ua_std": statistics.stdev(uas) if len(uas) > 1 else None, "seconds": time.perf_counter() - t}


# ---------------------------------------------------------------------------------------------------- figures
def step_losses(cv: dict) -> dict[str, float | None]:
    """Mean over folds of the UA lost (points) into each step of teacher → distill → prune → qat → onnx-int8,
    over the folds where both ends were scored."""
    out = {}
    for a, b in zip(STEPS, STEPS[1:]):
        diffs = []
        for p in cv["per_fold"]:
            ua = {"teacher": p["teacher"].get("ua"), **{s: v.get("ua") for s, v in p["stages"].items()},
                  INT8: p["artifacts"].get(INT8, {}).get("ua")}
            if ua.get(a) is not None and ua.get(b) is not None:
                diffs.append(100 * (ua[a] - ua[b]))
        out[b] = statistics.fmean(diffs) if diffs else None
    return out


def corpus_figures(name: str, cv: dict, base: dict, clips: int, speakers: int, run: Path, seconds: float,
                   folds_match: bool) -> dict:
    art = cv["artifacts"].get(INT8, {})
    losses = step_losses(cv)
    worst = max(((s, v) for s, v in losses.items() if v is not None), key=lambda sv: sv[1], default=(None, None))
    stage, stage_pt = worst if worst[1] is not None and worst[1] > 0 else (None, worst[1])
    t = cv["teacher"]
    beats = None if t.get("ua_mean") is None else t["ua_mean"] > base["ua_mean"]
    return {"run": str(run), "clips": clips, "speakers": speakers, "folds": cv["folds"],
            "baseline_ua_mean": base["ua_mean"], "baseline_ua_std": base["ua_std"],
            "baseline_ua_per_fold": base["ua_per_fold"],
            "teacher_ua_mean": t.get("ua_mean"), "teacher_ua_std": t.get("ua_std"),
            "int8_ua_mean": art.get("ua_mean"), "int8_ua_std": art.get("ua_std"), "int8_folds": art.get("n", 0),
            "drop_pt_mean": art.get("drop_pt_mean"), "drop_pt_std": art.get("drop_pt_std"),
            "drop_stage": stage, "drop_stage_pt": stage_pt, "step_loss_pt": losses,
            "teacher_beats_baseline": beats, "gates_passed": cv["passed"],
            "failed_gates": cv.get("failed", []), "folds_match_cv": folds_match, "seconds": seconds}


def robustness_figures(run: Path, folds: int) -> dict:
    """From each fold's report.json, the INT8 artifact's robustness suite (edgeser/robustness.py) over its gated
    cases: the worst agreement with the FP32 student on the same input, the worst agreement with its own 0 dB
    decisions outside +6 dB (which clips), and that +6 dB case; mean and std over the folds, 0..1."""
    per: dict[str, list[float]] = {"int8_vs_fp32_worst": [], "self_worst_unclipped": [], "self_clipped_6db": []}
    for k in range(1, folds + 1):
        report = run / f"fold-{k}" / "report.json"
        if not report.is_file():
            continue
        arts = json.loads(report.read_text())["artifacts"]
        arts = arts if isinstance(arts, list) else list(arts.values())
        rob = next((a.get("robustness") for a in arts if a.get("name") == INT8), None)
        cases = [c for c in (rob or {}).get("cases", []) if c["gated"]]
        if not cases:
            continue
        per["int8_vs_fp32_worst"].append(min(c["agree_ref"] for c in cases))
        own = [c for c in cases if c["agree_self"] is not None]
        per["self_worst_unclipped"].append(min(c["agree_self"] for c in own if c["case"] != "gain +6 dB"))
        clipped = [c["agree_self"] for c in own if c["case"] == "gain +6 dB"]
        if clipped:
            per["self_clipped_6db"].append(clipped[0])
    return {k: {"mean": statistics.mean(v) if v else None, "std": statistics.stdev(v) if len(v) > 1 else None,
                "folds": len(v)} for k, v in per.items()}


def _ms(m, s, scale=100.0, unit="%") -> str:
    if m is None:
        return "—"
    return f"{scale * m:.1f}" + ("" if s is None else f" ± {scale * s:.1f}") + f" {unit}"


def print_corpus(name: str, f: dict) -> None:
    losses = ", ".join(f"{s} {'—' if v is None else f'{v:+.1f}'}" for s, v in f["step_loss_pt"].items())
    where = ("none (no step loses UA)" if f["drop_stage"] is None else
             f"{STEPS[STEPS.index(f['drop_stage']) - 1]} → {f['drop_stage']} ({f['drop_stage_pt']:.1f} pt)")
    gates = "pass in every fold" if f["gates_passed"] else "FAILED: " + "; ".join(
        f"{x['run']} ({', '.join(x['gates'])})" for x in f["failed_gates"])
    rows = [("baseline UA (logreg, log-mel stats)", _ms(f["baseline_ua_mean"], f["baseline_ua_std"])),
            ("teacher UA", _ms(f["teacher_ua_mean"], f["teacher_ua_std"])),
            (f"INT8 ({INT8}) UA", _ms(f["int8_ua_mean"], f["int8_ua_std"])),
            ("drop teacher − INT8", _ms(f["drop_pt_mean"], f["drop_pt_std"], 1.0, "pt")),
            ("where the drop happens", where),
            ("UA lost per step, pt", losses),
            ("folds / clips / speakers", f"{f['folds']} speaker folds / {f['clips']} / {f['speakers']}"),
            ("gates", gates),
            *[(label, _ms(f["robustness"][k]["mean"], f["robustness"][k]["std"], 100.0, "%"))
              for k, label in (("int8_vs_fp32_worst", "INT8 = FP32, worst gated case"),
                               ("self_worst_unclipped", "INT8 = its own 0 dB, worst but +6 dB"),
                               ("self_clipped_6db", "INT8 = its own 0 dB at +6 dB (clips)"))],
            ("run", f["run"]),
            ("wall time", f"{f['seconds']:.0f} s")]
    print(f"\n## {name} (mean ± std over folds)")
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if not f["folds_match_cv"]:
        print("WARNING: the baseline's folds (edgeser.cv.plan_folds) differ from the test speakers in cv.json")


def _round(x):
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", type=Path, default=Path("/work/corpora"), metavar="DIR",
                    help="corpus cache folder: DIR/<name> is reused or (re)built (default /work/corpora)")
    ap.add_argument("--corpora-names", default="small,ravdess,varlen", metavar="A,B",
                    help=f"comma-separated, from {', '.join(dc.PRESETS)} (default: all three)")
    ap.add_argument("--corpus-seed", type=int, default=0, help="dev_corpus.py --seed of the corpora (default 0)")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes/demo.yaml", metavar="YAML",
                    help="base recipe (default recipes/demo.yaml)")
    ap.add_argument("--folds", type=int, metavar="N", help="speaker folds per corpus (default 3; 2 with --quick)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override passed to every cv run (after the bench's own), e.g. distill.epochs=10")
    ap.add_argument("--out", type=Path, metavar="DIR",
                    help="cv runs go to DIR/<corpus> (default runs/generalization; runs/generalization-quick with "
                         "--quick)")
    ap.add_argument("--jobs", type=int, default=2, metavar="J",
                    help="folds run at once, each in its own process (edgeser cv --jobs; default 2: the students "
                         "train single-threaded, so one fold at a time leaves a core idle)")
    ap.add_argument("--quick", action="store_true", help="smoke check: 2 folds, 1-2 epochs per stage")
    return ap.parse_args(argv)


def plan(a) -> list[dict]:
    """Validate every option and every corpus's fold plan (corpora built if needed) before any cv runs."""
    from edgeser.cv import corpus_items, plan_folds

    names = [n.strip() for n in a.corpora_names.split(",") if n.strip()]
    bad = [n for n in names if n not in dc.PRESETS]
    if not names or bad:
        raise BadInput(f"--corpora-names: {', '.join(bad) or '(empty)'} not among {', '.join(dc.PRESETS)}")
    if len(set(names)) != len(names):
        raise BadInput(f"--corpora-names: a name is given twice ({a.corpora_names})")
    if a.jobs < 1:
        raise BadInput(f"--jobs: need at least 1, got {a.jobs}")
    if a.folds is not None and a.folds < 2:
        raise BadInput(f"--folds: need at least 2, got {a.folds}")
    try:
        keys = [k for k, _ in parse_overrides(a.sets)]
    except RecipeError as e:
        raise BadInput(str(e)) from None
    for k in keys:
        if k == "data" or any(k == r or k.startswith(r + ".") for r in RESERVED):
            raise BadInput(f"--set {k}: set by this bench per corpus (data.manifest) and per fold (cv); not here")
    try:
        base = load_recipe(a.recipe, BENCH_SETS + (QUICK_SETS if a.quick else []) + a.sets)
    except RecipeError as e:
        raise BadInput(f"--recipe/--set: {e}") from None
    out = []
    for n in names:
        folder = a.corpora / n
        how, secs = ensure_corpus(folder, n, a.corpus_seed)
        manifest = (folder / "manifest.csv").resolve()
        with open(manifest, newline="") as f:
            labels = sorted({r["label"] for r in csv.DictReader(f)})
        sets = [f"data.manifest={manifest}", f"name={base.name[:80]}-{n}"]
        if base.data.classes is not None and base.data.classes != labels:
            sets.append(f"data.classes=[{', '.join(labels)}]")
        sets += BENCH_SETS + (QUICK_SETS if a.quick else []) + a.sets
        try:
            recipe = load_recipe(a.recipe, sets)
            folds = plan_folds(recipe, a.folds, "speaker")
            _, items, _ = corpus_items(recipe)
        except RecipeError as e:
            raise BadInput(f"{n}: {e}") from None
        items = [it for it in items if it.path.is_file()]
        print(f"[generalization] {n}: corpus {how} ({folder}{f', {secs:.0f} s' if how == 'built' else ''}); "
              f"{len(items)} clips, {len({it.speaker for it in items})} speakers, {len(folds)} folds",
              file=sys.stderr, flush=True)
        out.append({"name": n, "sets": sets, "folds": folds, "items": items, "recipe": recipe,
                    "classes": recipe.data.classes or sorted({it.label for it in items})})
    return out


def run_corpus(a, c: dict, out_dir: Path) -> dict:
    t = time.perf_counter()
    run = out_dir / c["name"]
    groups = [f.speakers for f in c["folds"]]
    base = baseline(c["items"], c["classes"], groups)
    cmd = [sys.executable, "-m", "edgeser", "cv", "-r", str(a.recipe), *[x for s in c["sets"] for x in ("--set", s)],
           "--folds", str(len(groups)), "--jobs", str(a.jobs), "--out", str(run), "--resume", "--no-progress"]
    print(f"[generalization] {c['name']}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    r = subprocess.run(cmd, stdout=sys.stderr, cwd=Path.cwd())
    if r.returncode == 2:
        raise BadInput(f"{c['name']}: edgeser cv refused its input (exit 2; its message is above)")
    if r.returncode == 130:
        raise KeyboardInterrupt
    cv_json = run / "cv.json"
    if r.returncode not in (0, 1) or not cv_json.is_file():
        raise RuntimeError(f"{c['name']}: edgeser cv failed (exit {r.returncode}; no {cv_json})")
    cv = json.loads(cv_json.read_text())
    ran = [sorted(p["test"]["speakers"]) for p in cv["per_fold"]]
    match = ran == [sorted(g) for g in groups]
    figures = corpus_figures(c["name"], cv, base, len(c["items"]), len({it.speaker for it in c["items"]}), run,
                             time.perf_counter() - t, match)
    return figures | {"robustness": robustness_figures(run, len(groups))}


def main(argv=None) -> int:
    t0 = time.perf_counter()
    a = parse_args(argv)
    if a.folds is None:
        a.folds = 2 if a.quick else 3
    out_dir = a.out or Path("runs/generalization-quick" if a.quick else "runs/generalization")
    try:
        corpora = plan(a)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    results, failed = {}, {}
    for c in corpora:
        try:
            results[c["name"]] = run_corpus(a, c, out_dir)
        except BadInput as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            failed[c["name"]] = str(e)
            continue
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to continue (cv --resume)", file=sys.stderr)
            return 130
        print_corpus(c["name"], results[c["name"]])
        sys.stdout.flush()
    wall = time.perf_counter() - t0
    drops = [f["drop_pt_mean"] for f in results.values() if f["drop_pt_mean"] is not None]
    beats = [f["teacher_beats_baseline"] for f in results.values()]
    print(f"\nwall time: {wall:.0f} s ({wall / 60:.1f} min) for {len(results)} corpora"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    summary = {"bench": "generalization", "recipe": str(a.recipe), "folds": a.folds, "quick": a.quick,
               "sets": a.sets, "corpora_dir": str(a.corpora), "out": str(out_dir),
               "max_drop_pt": max(drops) if drops else None,
               "teacher_beats_baseline_all": bool(beats) and all(b is True for b in beats) and not failed,
               "corpora": results, "failed": failed, "wall_s": wall}
    print(json.dumps(_round(summary)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
