"""What compression buys: accuracy, size, latency and roofline of the INT8 student against the FP32 teacher.

    .venv/bin/python bench/compression.py [--run runs/demo] [--out runs/bench-compression] [--recipe recipes/demo.yaml]
        [--set KEY=VALUE ...]

Without --run the recipe (default recipes/demo.yaml) is run once into --out; with --run DIR a finished run
is reused (report.json and stages/{teacher,prune,qat}/model.pt present; if not, the recipe is run into DIR).
Everything below is measured side by side from that one run. Pipeline progress goes to stderr; stdout gets
a readable table, then as its LAST line one JSON object.

Method
------
Accuracy (from the run's report.json, the held-out speakers of that run):
  ua_drop_pt   teacher UA (report["teacher"]["ua"]) minus the UA of the final INT8 artifact (`onnx-int8`),
               in points (x100).
  ua_drop_ci_pt  its 95 % paired-bootstrap interval over the held-out clips, from report.json (verify's
               `ua_drop_ci_pt` of `onnx-int8`), or null if the report has none.
  qat_ua       UA of `onnx-int8` (the QAT student exported with Q/DQ), 0..1 like report.json.
  ptq_ua       UA of `onnx-int8-ptq` (post-training quantisation) when the run has it, else null (never
               estimated).
Size:
  size_ratio   teacher exported to FP32 ONNX (stages/teacher/model.pt through export_onnx, the same
               exporter as the artifacts) / the `onnx-int8` artifact file. The teacher checkpoint (.pt)
               size is printed for reference.
Latency (3 s clip, 48000 samples, batch 1):
  The run's artifacts are exported for its own clip length, so three models are re-exported for 48000
  samples (into <run>/bench/ for a fresh run, a temporary folder for a reused one): teacher FP32
  (stages/teacher), student FP32 (stages/prune) and student INT8 (stages/qat via
  load_qat(...).to_export()). The INT8 re-export's optimised graph is compared with the run's own
  onnx-int8 artifact (a warning is printed if they differ). Each gets an onnxruntime CPU session with
  intra_op_num_threads=1, inter_op_num_threads=1, sequential execution, graph optimisation on. After 20
  warm-up calls each, --runs rounds (default 500) call the three models once per round, the order rotating
  round to round, so that load from other work on the machine hits all three alike. p50 (and p95) per
  model over those calls; the input is one fixed clip.
  latency_ratio_vs_teacher   teacher FP32 p50 / student INT8 p50
  int8_speedup_vs_fp32       student FP32 p50 / student INT8 p50
  latency_ratio_ci, int8_speedup_ci   95 % percentile-bootstrap intervals of those ratios, resampling the
               rounds (paired: one set of rounds for both models). They cover the noise within a run, not drift
               between runs or machines (two runs on one machine have differed by 10 %).
Roofline:
  roofline_fraction  (student MACs for 3 s from model_stats on the QAT export model / student INT8 p50)
                     / edgeser.roofline.int8_peak_macs_per_s(threads=1)["peak_macs_per_s"], the peak being
                     measured on this CPU through onnxruntime's own INT8 kernels (QLinearConv/QGemm/
                     QLinearMatMul on compute-bound shapes, best of N), i.e. an achievable-peak roofline.
  The MAC count includes the float mel matmul; the share of MACs that runs in INT8 kernels (convs:
  DFT front-end and body -> QLinearConv, or the DFT of qat.dft_output int32 -> MatMulInteger;
  head -> QGemm) is printed, checked against the optimised graph,
  and a kernel-level fraction (INT8 MACs / time inside the INT8 ops from ORT's profiler / peak) is added.
  Where the student's time goes (ORT profiler, per op type, median over runs) is printed for both students.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

SAMPLES = 48000  # 3 s at 16 kHz
def missing_files(run_dir: Path) -> list[str]:
    from edgeser.run_dir import RunDir

    run = RunDir(run_dir)
    need = [run.report("json"), *(run.model(s) for s in ("teacher", "prune", "qat"))]
    return [run.rel(p) for p in need if not p.exists()]


def ensure_run(args) -> tuple[Path, bool]:
    """The run folder to measure and whether it was reused."""
    if args.run is not None:
        missing = missing_files(args.run)
        if not missing:
            return args.run, True
        print(f"--run {args.run}: incomplete (missing {', '.join(missing)}); running {args.recipe} into it",
              file=sys.stderr)
        run_dir = args.run
    else:
        run_dir = args.out
    from rich.console import Console

    from edgeser.pipeline import compress
    from edgeser.recipe import load_recipe

    t = time.perf_counter()
    compress(load_recipe(args.recipe, args.sets), run_dir, console=Console(stderr=True), show_progress=True)
    print(f"pipeline: {time.perf_counter() - t:.0f} s into {run_dir}", file=sys.stderr)
    if missing_files(run_dir):
        sys.exit(f"pipeline finished but {run_dir} lacks {', '.join(missing_files(run_dir))}")
    return run_dir, False


def export_models(run_dir: Path, report: dict, bench_dir: Path) -> dict:
    """Teacher FP32, student FP32 and student INT8 as ONNX for 3 s clips; returns paths and the QAT export model."""
    from edgeser.export.onnx_export import export_onnx
    from edgeser.models.io import load_student, load_teacher
    from edgeser.quant.calibrate import load_qat

    from edgeser.run_dir import RunDir

    run = RunDir(run_dir)
    try:
        teacher = load_teacher(run.model("teacher"))
        student, _ = load_student(run.model("prune"))
        qexport = load_qat(run.model("qat"))[0].to_export()
    except Exception as e:  # a run made by an older edgeser whose checkpoint layout changed since
        sys.exit(f"{run_dir}: cannot load its checkpoints with this edgeser ({type(e).__name__}: "
                 f"{str(e).splitlines()[0][:200]}...). Run the bench without --run to measure a fresh run.")
    opset = report["recipe"].get("export", {}).get("opset", 18)
    sb = report["target"].get("static_batch")
    paths = {"teacher_fp32": bench_dir / "teacher_fp32_3s.onnx", "student_fp32": bench_dir / "student_fp32_3s.onnx",
             "student_int8": bench_dir / "student_int8_3s.onnx"}
    for (name, path), model in zip(paths.items(), (teacher, student, qexport)):
        t = time.perf_counter()
        export_onnx(model, SAMPLES, path, opset=opset, static_batch=sb)
        print(f"exported {name} for {SAMPLES} samples in {time.perf_counter() - t:.1f} s -> {path}", file=sys.stderr)
    return {"paths": paths, "teacher": teacher, "qexport": qexport, "static_batch": sb}


def session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved_latency(paths: dict[str, Path], x: np.ndarray, runs: int, warmup: int) -> dict:
    sessions = {n: session(p) for n, p in paths.items()}
    feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
    for n, s in sessions.items():
        out = s.run(None, feeds[n])[0]
        if not np.isfinite(out).all():
            raise RuntimeError(f"{n}: non-finite logits on the benchmark clip")
    for _ in range(warmup):
        for n, s in sessions.items():
            s.run(None, feeds[n])
    names = list(sessions)
    times = {n: [] for n in names}
    for r in range(runs):
        for i in range(len(names)):
            n = names[(r + i) % len(names)]  # rotate the order round to round
            t = time.perf_counter()
            sessions[n].run(None, feeds[n])
            times[n].append(time.perf_counter() - t)
    return {n: {"p50_ms": float(np.percentile(v, 50) * 1e3), "p95_ms": float(np.percentile(v, 95) * 1e3),
                "min_ms": float(np.min(v) * 1e3), "runs": len(v), "times_s": v} for n, v in times.items()}


def p50_ratio_ci(num: list[float], den: list[float]) -> list[float]:
    """95 % interval of p50(num) / p50(den) over the interleaved rounds (paired bootstrap, edgeser.metrics)."""
    from edgeser.metrics import paired_median_ratio_ci

    return [round(v, 3) for v in paired_median_ratio_ci(num, den)]

def int8_layer_macs(qexport, samples: int) -> dict[str, int]:
    """MACs per clip of the layers with int8 weights (QConv1d: the DFT and the body convs; QLinear: the head),
    from their output shapes: what can run in INT8 kernels. The float mel matmul and log are not in it."""
    from edgeser.quant.fakequant import QConv1d, QLinear

    macs: dict[str, int] = {}

    def hook(name):
        def count(mod, inp, out):
            k = mod.kernel_size[0] * mod.in_channels if isinstance(mod, QConv1d) else mod.in_features
            macs[name] = macs.get(name, 0) + int(out.numel() // out.shape[0]) * int(k)
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in qexport.named_modules() if isinstance(m, (QConv1d, QLinear))]
    try:
        with torch.no_grad():
            qexport(torch.zeros(1, samples))
    finally:
        for h in handles:
            h.remove()
    return macs


def optimized_ops(path: Path) -> list[str]:
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def op_profile(path: Path, x: np.ndarray, runs: int) -> dict[str, float]:
    """Median seconds per run for each op type of the optimised graph (ORT profiler)."""
    from edgeser.roofline import profile_op_times

    feed = {session(path).get_inputs()[0].name: x}
    t = profile_op_times(path, feed, threads=1, runs=runs, warmup=10)
    return {k: float(np.median(v)) for k, v in t.items()}


def fmt_ms(v: float) -> str:
    return f"{v:8.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="reuse this finished run folder")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-compression"), help="run folder for a fresh run")
    ap.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override KEY=VALUE for a "
                    "fresh run, e.g. \"export.formats=[onnx-fp32,onnx-int8]\" (no TensorRT: qat.relu_quant auto "
                    "is then unsigned)")
    ap.add_argument("--runs", type=int, default=500, help="timed rounds (>= 200)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--peak-seconds", type=float, default=3.0, help="time budget of the INT8 peak measurement")
    args = ap.parse_args()
    if args.runs < 200:
        ap.error("--runs must be >= 200")

    from edgeser.roofline import INT8_OPS, achieved_fraction, int8_peak_macs_per_s
    from edgeser.run_dir import RunDir
    from edgeser.stages.common import model_stats

    run_dir, reused = ensure_run(args)
    torch.set_num_threads(1)  # after the pipeline (which trains on every core); exports and MAC counts only
    report = json.loads(RunDir(run_dir).report("json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    int8 = arts.get("onnx-int8")
    if int8 is None or int8.get("ua") is None or not int8.get("path"):
        sys.exit(f"{run_dir}: no verified onnx-int8 artifact in report.json "
                 f"({'absent' if int8 is None else int8.get('status')}: {None if int8 is None else int8.get('reason')})")
    teacher_ua, qat_ua = report["teacher"]["ua"], int8["ua"]
    ptq = arts.get("onnx-int8-ptq")
    if ptq is None:
        ptq_ua, ptq_note = None, "onnx-int8-ptq is not in this run's report.json (no PTQ artifact) -> ptq_ua = null"
    elif ptq.get("ua") is None:
        ptq_ua, ptq_note = None, f"onnx-int8-ptq {ptq.get('status')}: {ptq.get('reason')} -> ptq_ua = null"
    else:
        ptq_ua, ptq_note = ptq["ua"], None

    # a fresh run keeps its 3 s exports in <run>/bench; a reused run is left untouched (temporary folder)
    tmp = None if not reused else tempfile.TemporaryDirectory(prefix="edgeser-bench-")
    bench_dir = run_dir / "bench" if tmp is None else Path(tmp.name)
    ex = export_models(run_dir, report, bench_dir)
    paths = ex["paths"]

    # the 3 s INT8 re-export must be the same graph as the run's artifact (same code, other length)
    art_ops = Counter(optimized_ops(run_dir / int8["path"]))
    new_ops = Counter(optimized_ops(paths["student_int8"]))
    graph_note = None if art_ops == new_ops else (
        f"WARNING: the 3 s INT8 re-export's optimised graph differs from the run's artifact "
        f"({dict(new_ops - art_ops)} added, {dict(art_ops - new_ops)} missing): the checkpoints may come "
        f"from another edgeser version")

    # sizes
    teacher_ckpt = RunDir(run_dir).model("teacher").stat().st_size
    teacher_onnx = paths["teacher_fp32"].stat().st_size
    int8_size = (run_dir / int8["path"]).stat().st_size
    fp32_art = arts.get("onnx-fp32")
    fp32_size = (run_dir / fp32_art["path"]).stat().st_size if fp32_art and fp32_art.get("path") else None

    # latency, interleaved
    x = (np.random.default_rng(0).standard_normal((ex["static_batch"] or 1, SAMPLES)) * 0.1).astype(np.float32)
    lat = interleaved_latency(paths, x, args.runs, args.warmup)
    p50 = {n: v["p50_ms"] for n, v in lat.items()}

    # MACs and the roofline
    teacher_macs = model_stats(ex["teacher"], SAMPLES)["macs"]
    macs = model_stats(ex["qexport"], SAMPLES)["macs"]
    opt = optimized_ops(paths["student_int8"])
    layers = int8_layer_macs(ex["qexport"], SAMPLES)
    conv_layers = {n: m for n, m in layers.items() if n != "head"}
    # every int8-weight conv became a QLinearConv (or, the DFT of qat.dft_output int32, a MatMulInteger), and the
    # only float conv left is the mel matmul (FusedConv)
    int_convs = opt.count("QLinearConv") + opt.count("MatMulInteger")
    conv_int8 = int_convs == len(conv_layers) and "Conv" not in opt and opt.count("FusedConv") <= 1
    linear_int8 = "QGemm" in opt and "Gemm" not in opt
    int8_macs = (sum(conv_layers.values()) if conv_int8 else 0) + (layers.get("head", 0) if linear_int8 else 0)
    peak = int8_peak_macs_per_s(threads=1, seconds=args.peak_seconds)
    fraction = achieved_fraction(macs, p50["student_int8"] / 1e3, peak["peak_macs_per_s"])
    prof = {n: op_profile(paths[n], x, runs=100) for n in ("student_int8", "student_fp32")}
    int8_op_time = sum(v for k, v in prof["student_int8"].items()
                       if k in INT8_OPS["qlinearconv"] | INT8_OPS["qgemm"] | INT8_OPS["qmatmul"])
    kernel_fraction = achieved_fraction(int8_macs, int8_op_time, peak["peak_macs_per_s"]) if int8_op_time else None

    ua_drop = (teacher_ua - qat_ua) * 100
    result = {
        "ua_drop_pt": round(ua_drop, 3),
        "size_ratio": round(teacher_onnx / int8_size, 3),
        "latency_ratio_vs_teacher": round(p50["teacher_fp32"] / p50["student_int8"], 3),
        "int8_speedup_vs_fp32": round(p50["student_fp32"] / p50["student_int8"], 3),
        "latency_ratio_ci": p50_ratio_ci(lat["teacher_fp32"]["times_s"], lat["student_int8"]["times_s"]),
        "int8_speedup_ci": p50_ratio_ci(lat["student_fp32"]["times_s"], lat["student_int8"]["times_s"]),
        "ua_drop_ci_pt": None if int8.get("ua_drop_ci_pt") is None else [round(v, 3) for v in int8["ua_drop_ci_pt"]],
        "roofline_fraction": round(fraction, 5),
        "qat_ua": round(qat_ua, 5),
        "ptq_ua": None if ptq_ua is None else round(ptq_ua, 5),
        "teacher_ua": round(teacher_ua, 5),
        "p50_ms": {n: round(v, 4) for n, v in p50.items()},
        "p95_ms": {n: round(v["p95_ms"], 4) for n, v in lat.items()},
        "size_bytes": {"teacher_ckpt": teacher_ckpt, "teacher_fp32_onnx": teacher_onnx, "student_int8_onnx": int8_size,
                       "student_fp32_onnx": fp32_size},
        "student_macs_3s": macs, "teacher_macs_3s": teacher_macs,
        "int8_mac_share": round(int8_macs / macs, 4) if macs else None,
        "peak_macs_per_s": round(peak["peak_macs_per_s"]),
        "peak_kernels_macs_per_s": {k: round(v) for k, v in peak["kernels"].items()},
        "int8_kernel_roofline_fraction": None if kernel_fraction is None else round(kernel_fraction, 5),
        "roofline_fraction_at_min_latency": round(
            achieved_fraction(macs, lat["student_int8"]["min_ms"] / 1e3, peak["peak_macs_per_s"]), 5),
        "run": str(run_dir), "reused_run": reused, "timed_runs": args.runs,
    }

    # ---- the readable part ----
    print(f"\nedgeser compression bench: run {run_dir} ({'reused' if reused else 'fresh'}), "
          f"recipe {report['recipe']['name']}, target {report['target']['name']}")
    print(f"\nAccuracy (held-out speakers, UA %)")
    print(f"  teacher FP32 (PyTorch)         {100 * teacher_ua:6.2f}")
    ci = result["ua_drop_ci_pt"]
    print(f"  onnx-int8 (QAT)                {100 * qat_ua:6.2f}   drop {ua_drop:+.2f} pt"
          + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}] (95 % paired bootstrap over the clips)"))
    print(f"  onnx-int8-ptq (PTQ)            " + (f"{100 * ptq_ua:6.2f}   drop {(teacher_ua - ptq_ua) * 100:+.2f} pt"
                                                  if ptq_ua is not None else "  —"))
    if ptq_note:
        print(f"  note: {ptq_note}")
    print(f"\nSize")
    print(f"  teacher checkpoint (.pt)       {teacher_ckpt / 1024:10.0f} KB")
    print(f"  teacher FP32 ONNX              {teacher_onnx / 1024:10.0f} KB")
    if fp32_size:
        print(f"  student FP32 ONNX (artifact)   {fp32_size / 1024:10.0f} KB")
    print(f"  student INT8 ONNX (artifact)   {int8_size / 1024:10.0f} KB   teacher ONNX / INT8 = "
          f"{result['size_ratio']:.1f}x")
    print(f"\nLatency, 3 s clip, batch {x.shape[0]}, 1 thread, onnxruntime {__import__('onnxruntime').__version__}, "
          f"{args.runs} interleaved rounds after {args.warmup} warm-up")
    print(f"  {'model':<16}{'p50 ms':>9}{'p95 ms':>9}{'min ms':>9}{'MMAC':>9}")
    for n, m in (("teacher_fp32", teacher_macs), ("student_fp32", macs), ("student_int8", macs)):
        v = lat[n]
        print(f"  {n:<16}{fmt_ms(v['p50_ms'])} {fmt_ms(v['p95_ms'])} {fmt_ms(v['min_ms'])} {m / 1e6:8.1f}")
    lr, sp = result["latency_ratio_ci"], result["int8_speedup_ci"]
    print(f"  teacher / student INT8 = {result['latency_ratio_vs_teacher']:.1f}x [{lr[0]:.1f}, {lr[1]:.1f}], "
          f"student FP32 / INT8 = {result['int8_speedup_vs_fp32']:.2f}x [{sp[0]:.2f}, {sp[1]:.2f}] (95 % "
          f"bootstrap over rounds; it does not cover drift between runs)")
    print(f"\nRoofline (1 thread)")
    print(f"  INT8 peak, measured: {peak['peak_macs_per_s'] / 1e9:.1f} GMAC/s (best of "
          f"{min(peak['runs'].values())}+ runs; " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peak["kernels"].items())
          + ")")
    print(f"  student: {macs / 1e6:.2f} MMAC per 3 s clip; INT8 kernels run {int8_macs / 1e6:.2f} MMAC "
          f"({100 * int8_macs / macs:.1f} %: DFT {layers.get('frontend.dft', 0) / 1e6:.2f} + body convs "
          f"{(sum(conv_layers.values()) - layers.get('frontend.dft', 0)) / 1e6:.2f} MMAC "
          f"[{opt.count('QLinearConv')} QLinearConv + {opt.count('MatMulInteger')} MatMulInteger"
          f"{'' if conv_int8 else ' - NOT all fused: ' + str(Counter(opt))}], "
          f"head {layers.get('head', 0) / 1e3:.2f} kMAC [{'QGemm' if linear_int8 else 'float Gemm: float logits'}]); "
          f"float: the mel matmul and the rest {(macs - int8_macs) / 1e6:.2f} MMAC")
    print(f"  achieved {macs / (p50['student_int8'] / 1e3) / 1e9:.2f} GMAC/s at p50 -> roofline fraction "
          f"{100 * fraction:.2f} % of the measured peak (at the fastest call: "
          f"{100 * result['roofline_fraction_at_min_latency']:.2f} %)")
    if kernel_fraction is not None:
        print(f"  inside the INT8 ops only (profiler): {int8_macs / int8_op_time / 1e9:.2f} GMAC/s -> "
              f"{100 * kernel_fraction:.2f} % of peak")
    print(f"  {peak['method']}")
    print(f"\nWhere the time goes (ORT profiler, median per run over 100 runs, 3 s clip)")
    for n, t in prof.items():
        tot = sum(t.values())
        top = sorted(t.items(), key=lambda kv: -kv[1])[:6]
        print(f"  {n}: {tot * 1e3:.3f} ms in ops: " + ", ".join(f"{k} {100 * v / tot:.0f} %" for k, v in top))
    if graph_note:
        print(f"\n{graph_note}")
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
