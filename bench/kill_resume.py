"""Kill a compress run with SIGKILL inside each stage, resume it, and compare every artifact's sha256 with an
uninterrupted run of the same recipe.

    .venv/bin/python bench/kill_resume.py [--recipe recipes/demo.yaml] [--set teacher.epochs=3 ...] [--out runs/kill-resume]
        [--stages teacher distill prune qat export verify]

Method: run 0 goes through uninterrupted (`edgeser compress --no-progress`). Then, for each stage, a fresh run
is started and killed (SIGKILL to its process group) as soon as that stage is under way: for a training
stage, when its first epoch checkpoint (stages/<stage>/ckpt-*.pt) appears, so the kill lands mid-training;
for export, when the artifacts folder appears; for verify, when export's done marker appears. Then
`edgeser compress --resume` finishes the run. Every file the uninterrupted run recorded in manifest.json, and
every stage model file, is compared by sha256. The last line is one JSON object; exit 1 if anything differs.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeser.fileio import sha256  # noqa: E402
from edgeser.run_dir import RunDir  # noqa: E402

SMALL = ["teacher.epochs=3", "distill.epochs=4", "prune.epochs=2", "qat.epochs=2", "data.synth.clips_per_class=80",
         "verify.latency_runs=5", "verify.max_ua_drop_pt=100"]  # short training: the gates are not the point here
TRAINING = ("teacher", "distill", "prune", "qat")


def cli(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "edgeser"), *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def under_way(run: Path, stage: str) -> bool:
    r = RunDir(run)
    if stage in TRAINING:
        return any(r.stage(stage).glob("ckpt-*.pt"))
    if stage == "export":
        return r.artifacts.is_dir()
    if stage == "verify":
        return r.done("export").is_file()
    raise ValueError(stage)


def fingerprints(run: Path) -> dict[str, str]:
    r = RunDir(run)
    manifest = json.loads(r.manifest.read_text())
    out = {name: sha256(run / a["path"]) for name, a in manifest["artifacts"].items()}
    for stage in TRAINING:
        out[r.rel(r.model(stage))] = sha256(r.model(stage))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/demo.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/kill-resume"))
    ap.add_argument("--stages", nargs="+", default=["teacher", "distill", "prune", "qat", "export", "verify"])
    args = ap.parse_args()
    sets = SMALL if args.sets is None else args.sets
    base = ["compress", "--recipe", args.recipe, "--no-progress"] + [a for s in sets for a in ("--set", s)]
    out = args.out.resolve()

    ref = out / "uninterrupted"
    t = time.perf_counter()
    p = cli(base + ["--out", str(ref)])
    _, err = p.communicate()
    if p.returncode not in (0, 1) or not RunDir(ref).manifest.is_file():  # 1: a gate failed, the run finished
        sys.exit(f"uninterrupted run failed ({p.returncode}):\n{err[-2000:]}")
    want = fingerprints(ref)
    print(f"uninterrupted run: {time.perf_counter() - t:.0f} s, {len(want)} files")

    results = {}
    for stage in args.stages:
        run = out / f"killed-in-{stage}"
        p = cli(base + ["--out", str(run)])
        while p.poll() is None and not under_way(run, stage):
            time.sleep(0.05)
        if p.poll() is not None:
            print(f"{stage}: the run ended before the stage was under way; not a kill test")
            results[stage] = {"killed": False}
            continue
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        folder = RunDir(run).stage(stage)
        left = sorted(RunDir(run).rel(f) for f in folder.glob("*")) if folder.is_dir() else []
        t = time.perf_counter()
        r = cli(base + ["--out", str(run), "--resume"])
        _, err = r.communicate()
        if r.returncode not in (0, 1) or not RunDir(run).manifest.is_file():
            print(f"{stage}: resume failed ({r.returncode}): {err[-800:]}")
            results[stage] = {"killed": True, "resumed": False}
            continue
        got = fingerprints(run)
        diff = sorted(k for k in want if got.get(k) != want[k])
        results[stage] = {"killed": True, "resumed": True, "identical": not diff, "differs": diff,
                          "resume_s": round(time.perf_counter() - t, 1), "left_in_stage": left}
        print(f"killed in {stage:8s} (stage folder had: {', '.join(left) or 'nothing'}); resumed in "
              f"{results[stage]['resume_s']} s")
        for k in want:
            mark = "==" if got.get(k) == want[k] else "!="
            print(f"    {k:40s} {want[k][:16]} {mark} {(got.get(k) or 'missing')[:16]}")
    ok = all(r.get("identical") for r in results.values() if r.get("killed"))
    print(json.dumps({"all_identical": ok, "stages": results}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
