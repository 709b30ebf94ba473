"""Size and speed of two builds' INT8 (and FP32) ONNX students, side by side in one process.

    .venv/bin/python bench/compare_int8.py --old OLD_RUN --new NEW_RUN [--runs 2000] [--samples 32000]

OLD_RUN and NEW_RUN are finished run folders (e.g. `make demo` on a checkout of the previous main, and on
this one). For each run, artifacts/student_int8.onnx and artifacts/student_fp32.onnx get an onnxruntime CPU
session with one intra-op thread; after warm-up the four models are called in turn, round after round, the
order rotating every round, so that any load on the machine hits all of them alike. Input: one fixed clip of
--samples samples (both builds take the training length). Prints p50/p95 per model, file sizes, and the
ratios the acceptance asks for; the last line is one JSON object.
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

from edgeser.runtimes import onnx_session  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=32000)
    args = ap.parse_args()
    models = {}
    for tag, run in (("old", args.old), ("new", args.new)):
        for prec in ("int8", "fp32"):
            path = run / "artifacts" / f"student_{prec}.onnx"
            if not path.is_file():
                print(f"{path}: missing", file=sys.stderr)
                return 2
            sess = onnx_session(path, threads=1)
            models[f"{tag}-{prec}"] = (sess, sess.get_inputs()[0].name, path.stat().st_size)
    x = (np.random.default_rng(0).standard_normal((1, args.samples)) * 0.1).astype(np.float32)
    names = list(models)
    for n in names:
        for _ in range(50):
            models[n][0].run(None, {models[n][1]: x})
    times = {n: [] for n in names}
    for r in range(args.runs):
        for n in names[r % len(names):] + names[: r % len(names)]:
            sess, inp, _ = models[n]
            t = time.perf_counter()
            sess.run(None, {inp: x})
            times[n].append((time.perf_counter() - t) * 1000)
    res = {n: {"p50_ms": round(float(np.percentile(t, 50)), 4), "p95_ms": round(float(np.percentile(t, 95)), 4),
               "size_bytes": models[n][2]} for n, t in times.items()}
    print(f"{'model':<10} {'p50 ms':>8} {'p95 ms':>8} {'size KB':>8}")
    for n, v in res.items():
        print(f"{n:<10} {v['p50_ms']:>8.3f} {v['p95_ms']:>8.3f} {v['size_bytes'] / 1024:>8.1f}")
    out = {"samples": args.samples, "runs": args.runs, "models": res,
           "int8_p50_new_over_old": round(res["new-int8"]["p50_ms"] / res["old-int8"]["p50_ms"], 3),
           "int8_size_new_over_old": round(res["new-int8"]["size_bytes"] / res["old-int8"]["size_bytes"], 3),
           "new_int8_speedup_vs_fp32": round(res["new-fp32"]["p50_ms"] / res["new-int8"]["p50_ms"], 2),
           "old_int8_speedup_vs_fp32": round(res["old-fp32"]["p50_ms"] / res["old-int8"]["p50_ms"], 2)}
    print(f"INT8 p50 new/old {out['int8_p50_new_over_old']} (goal <= 1.15), size new/old "
          f"{out['int8_size_new_over_old']} (goal 0.9..1.1), new INT8 vs FP32 {out['new_int8_speedup_vs_fp32']}x "
          f"(goal >= 2)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
