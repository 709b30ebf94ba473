"""The demo's wall time and peak RSS, this tree against an older commit, measured side by side.

    .venv/bin/python bench/demo_time.py --old 7f509e0 [--order ABBA] [--recipe recipes/demo.yaml]
        [--out runs/demo-time]

The older commit is checked out into a temporary git worktree (removed at the end). Each run is
`python -m edgeser compress --recipe RECIPE --out OUT/<tree>-<i>` with this venv's Python, started in its own
tree (so `python -m` imports that tree's edgeser), in the order given (A = old, B = this tree; ABBA by default,
so a drift of the machine's load hits both alike). Wall time is the child's elapsed time, peak RSS its own
ru_maxrss (os.wait4). Each child's output goes to OUT/<tree>-<i>.log. Printed: one line per run, then per tree
the mean and min..max, then as the LAST line one JSON object with `time_ratio` (mean new / mean old wall) and
`rss_ratio` (mean new / mean old peak RSS). A compress exit code of 1 (a gate failed) is recorded, not fatal:
the time is the same pipeline's. Exit 2 when compress rejected its input (or the arguments are bad), 1 when a
run crashed, else 0.

Measured on a quiet 2-core AMD EPYC (AVX2, no VNNI), synthetic demo corpus, --old 7f509e0 (before issue 16's
store), by this script's earlier form: old 378.2 / 402.8 s and 2279 / 2271 MB; new 385.8 s and 1147 MB (a
second new run, 426.5 s, overlapped other work). Every run exits 1 on that CPU (onnx-int8 agreement 0.9025,
edgeser/cpu_quirks.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(tree: Path, recipe: Path, out: Path, log: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t = time.monotonic()
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "edgeser", "compress", "--recipe", str(recipe), "--out",
                              str(out), "--no-progress"], cwd=tree, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    return {"wall_s": round(time.monotonic() - t, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "exit": os.waitstatus_to_exitcode(status)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the commit to compare against (any git revision)")
    ap.add_argument("--order", default="ABBA", help="A = old, B = this tree, in run order")
    ap.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"), help="relative to each tree")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/demo-time")
    a = ap.parse_args()
    if not a.order or set(a.order) - {"A", "B"}:
        print(f"--order: only A and B, got {a.order!r}", file=sys.stderr)
        return 2
    rev = subprocess.run(["git", "rev-parse", "--verify", f"{a.old}^{{commit}}"], cwd=ROOT, capture_output=True,
                         text=True)
    if rev.returncode:
        print(f"--old: not a commit here: {a.old}", file=sys.stderr)
        return 2
    old_sha = rev.stdout.strip()
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="edgeser-old-"))
    wt = tmp / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(wt), old_sha], cwd=ROOT, check=True,
                   capture_output=True)
    trees = {"A": ("old", wt), "B": ("new", ROOT)}
    rows = []
    try:
        for i, key in enumerate(a.order):
            name, tree = trees[key]
            r = {"run": i, "tree": name} | run_once(tree, a.recipe, a.out / f"{name}-{i}", a.out / f"{name}-{i}.log")
            print(f"run {i}: {name:3s} {r['wall_s']:7.1f} s  peak RSS {r['peak_rss_mb']:5d} MB  exit {r['exit']}",
                  flush=True)
            rows.append(r)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for name in ("old", "new"):
        w = [r["wall_s"] for r in rows if r["tree"] == name]
        m = [r["peak_rss_mb"] for r in rows if r["tree"] == name]
        if w:
            summary[name] = {"wall_mean_s": sum(w) / len(w), "wall_min_s": min(w), "wall_max_s": max(w),
                             "rss_mean_mb": sum(m) / len(m)}
            print(f"{name}: wall {summary[name]['wall_mean_s']:.1f} s ({min(w):.1f}..{max(w):.1f}, {len(w)} runs), "
                  f"peak RSS {summary[name]['rss_mean_mb']:.0f} MB")
    both = "old" in summary and "new" in summary
    out = {"old": old_sha, "recipe": str(a.recipe), "runs": rows, "summary": summary,
           "time_ratio": summary["new"]["wall_mean_s"] / summary["old"]["wall_mean_s"] if both else None,
           "rss_ratio": summary["new"]["rss_mean_mb"] / summary["old"]["rss_mean_mb"] if both else None}
    print(json.dumps(out))
    if any(r["exit"] == 2 for r in rows):
        print("compress rejected its input (exit 2): see the logs under --out", file=sys.stderr)
        return 2
    return 0 if all(r["exit"] in (0, 1) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
