"""Memory and time of `edgeser compress` as the corpus grows: 1x, 4x and 16x the demo's synthetic corpus.

    .venv/bin/python bench/scale.py [--sizes 1,4,16] [--out runs/scale] [--full-epochs]

Each size k is the demo recipe (recipes/demo.yaml) with k times its speakers and clips (16k speakers, 320k
clips per class, 2 s each: 1x = 1280 clips, 45 min of audio at 16 kHz; 16x = 20480 clips, 11.4 h), run as its
own `edgeser compress` process into OUT/<k>x. Short epochs by default (one epoch per training stage, no
min_steps), so the time is the data's, not the demo's training schedule; --full-epochs keeps the recipe's.
Exports onnx-fp32 and onnx-int8 (the robustness suite and every gate run as in the demo).

Peak RSS is the child's own ru_maxrss (os.wait4), wall time its elapsed time. Printed per size, then one JSON
line: rss_ratio = peak RSS at the largest size / at 1x, time_ratio = wall time at the largest size / at 1x,
and time_per_clip_ratio (<= 1: time grows no faster than linearly).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["teacher.epochs=1", "teacher.min_steps=0", "distill.epochs=1", "distill.min_steps=0",
         "distill.min_kd_rows=0", "prune.epochs=1", "qat.epochs=1", "verify.latency_runs=5"]


def run_size(k: int, out: Path, short: bool) -> dict:
    run_dir = out / f"{k}x"
    sets = [f"data.synth.n_speakers={16 * k}", f"data.synth.clips_per_class={320 * k}",
            "export.formats=[onnx-fp32,onnx-int8]"] + (SHORT if short else [])
    # `python -m edgeser` from ROOT: the edgeser beside this script (a copy of the tree runs its own code)
    cmd = [sys.executable, "-m", "edgeser", "compress", "--recipe", str(ROOT / "recipes/demo.yaml"),
           "--out", str(run_dir), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    log = out / f"{k}x.log"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    data = json.loads((run_dir / "stages/data/metrics.json").read_text()) if (run_dir / "stages/data/metrics.json").is_file() else {}
    clips = sum(data.get("sizes", {}).values())
    return {"size": k, "clips": clips, "rc": rc, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "log": str(log)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/scale")
    ap.add_argument("--full-epochs", action="store_true")
    a = ap.parse_args(argv)
    sizes = sorted({int(s) for s in a.sizes.split(",")})
    rows = []
    for k in sizes:
        r = run_size(k, a.out, not a.full_epochs)
        rows.append(r)
        print(f"{k:>3}x  {r['clips']:>6} clips  rc {r['rc']}  wall {r['wall_s']:>7.1f} s  "
              f"({r['wall_s'] / max(1, r['clips']) * 1000:.1f} ms/clip)  peak RSS {r['peak_rss_mb']:>7.1f} MB",
              flush=True)
        if r["rc"] not in (0, 1):  # 1: a gate failed (the pipeline ran); anything else: it did not finish
            print(f"compress at {k}x exited {r['rc']}: see {r['log']}", file=sys.stderr)
            break
    base, top = rows[0], rows[-1]
    summary = {"bench": "scale", "corpus": "built-in synthetic (demo recipe), k x speakers and clips",
               "short_epochs": not a.full_epochs, "rows": rows,
               "rss_ratio": round(top["peak_rss_mb"] / base["peak_rss_mb"], 3),
               "time_ratio": round(top["wall_s"] / base["wall_s"], 3),
               "size_ratio": round(top["clips"] / max(1, base["clips"]), 3),
               "time_per_clip_ratio": round((top["wall_s"] / max(1, top["clips"])) /
                                            (base["wall_s"] / max(1, base["clips"])), 3)}
    print(json.dumps(summary))
    return 0 if all(r["rc"] in (0, 1) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
