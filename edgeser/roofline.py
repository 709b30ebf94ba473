"""A calibrated INT8 roofline for this CPU: the peak MAC/s that onnxruntime's own INT8 kernels reach here.

A datasheet peak (cores x clock x VNNI lanes) says little about what the student can reach through
onnxruntime: MLAS kernel quality, the s8s8 -> u8s8 compensation, packing and layout transposes all eat into
it. So the ceiling is *measured*: small QDQ ONNX models are built in memory (onnx.helper) with the same
quantisation scheme the student exports (int8 activations, symmetric, zero point 0, per-tensor scales;
int8 weights, symmetric, per-output-channel scales, -127..127, float bias), in shapes large enough to be
compute-bound, and run through the same runtime (onnxruntime, CPU provider, graph optimisation ON):

  qlinearconv  Q/DQ -> Conv1d(256 -> 256, k=3, T=4096) -> Q/DQ       ORT fuses to QLinearConv (the student's
                                                                     DFT front-end and body convs)
  qgemm        Q/DQ -> Gemm(1024 x 1024 x 1024, transB) -> Q/DQ     ORT fuses to QGemm (the student's head)
  qmatmul      Q/DQ -> MatMul(1024 x 1024 x 1024) -> Q/DQ           ORT fuses to QLinearMatMul

Like the student, each graph takes and returns float (Q -> DQ -> op -> Q -> DQ). With int8 graph inputs
and outputs instead, onnxruntime 1.32 leaves Conv/MatMul unfused and runs the QGemm ~10x slower (its
int8 -> uint8 rewrite, below, needs the Q/DQ pairs), so that form would not measure the student's kernels.
The float Quantize of the input and Dequantize of the output are O(n^2) against the op's O(n^3) and stay
in the timing, as do the conv's NCW <-> NWC transposes (ORT's profiler puts the fused op at ~95 % of node
time for the GEMMs, ~80-85 % for the conv; `int8_op_share` and `kernel_only_macs_per_s` report that split;
the peak uses whole-graph times). Each model's optimised graph (SessionOptions.optimized_model_filepath) is
read back to check that the fused INT8 op is there and no float Conv/Gemm/MatMul is left; a kernel that did
not fuse is reported under `unverified` and left out of the peak.

Timing: the kernels run interleaved in rounds after a warm-up, and each one's *best* (minimum) time is
kept: on a shared machine noise only ever adds time, so the minimum is the best estimate of what the
hardware + kernel can do. MAC/s = MACs / best time; the peak is the max over kernels.

On x86 onnxruntime rewrites int8 activations to uint8 (zero point 0 -> 128) before fusing, so these graphs
and the student's alike run MLAS's u8s8 kernels (AVX512-VNNI / AVX2 VNNI where the CPU has it); the
profiler's input types (uint8 activations, int8 weights) show it.

A fraction of this peak is an achievable-peak roofline, not a datasheet one: 100 % means "as fast per MAC
as onnxruntime's best INT8 kernel on this CPU with large, compute-bound shapes".
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

# name -> fused op types that prove the INT8 kernel ran (any of them)
INT8_OPS = {
    "qlinearconv": {"QLinearConv"},
    "qgemm": {"QGemm"},
    "qmatmul": {"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"},
}
FLOAT_OPS = {"Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm"}

CONV_SHAPE = {"c_in": 256, "c_out": 256, "k": 3, "t": 4096}
GEMM_SHAPE = {"m": 1024, "k": 1024, "n": 1024}
PROFILE_RUNS = 10


def _qdq_model(name: str, seed: int = 0):
    """One QDQ model (onnx ModelProto), its int8 input feed and its MAC count."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    f32 = TensorProto.FLOAT

    def const(n, arr):
        return numpy_helper.from_array(np.asarray(arr), n)

    inits = [const("s_x", np.float32(0.02)), const("s_y", np.float32(0.05)), const("zp", np.int8(0))]
    nodes = [helper.make_node("QuantizeLinear", ["x_f", "s_x", "zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp"], ["x"])]
    if name == "qlinearconv":
        ci, co, k, t = (CONV_SHAPE[k_] for k_ in ("c_in", "c_out", "k", "t"))
        w = rng.integers(-127, 128, (co, ci, k), dtype=np.int8)
        inits += [const("w_q", w), const("s_w", np.full(co, 0.01, np.float32)), const("zp_w", np.zeros(co, np.int8)),
                  const("bias", rng.standard_normal(co).astype(np.float32))]
        nodes += [helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w"], axis=0),
                  helper.make_node("Conv", ["x", "w", "bias"], ["y"], kernel_shape=[k], pads=[k // 2, k // 2],
                                   strides=[1])]
        x_shape, y_shape, macs = [1, ci, t], [1, co, t], ci * co * k * t
    elif name == "qgemm":
        m, k, n = GEMM_SHAPE["m"], GEMM_SHAPE["k"], GEMM_SHAPE["n"]
        w = rng.integers(-127, 128, (n, k), dtype=np.int8)  # (out, in) with transB=1, like nn.Linear
        inits += [const("w_q", w), const("s_w", np.full(n, 0.01, np.float32)), const("zp_w", np.zeros(n, np.int8)),
                  const("bias", rng.standard_normal(n).astype(np.float32))]
        nodes += [helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w"], axis=0),
                  helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1)]
        x_shape, y_shape, macs = [m, k], [m, n], m * k * n
    elif name == "qmatmul":
        m, k, n = GEMM_SHAPE["m"], GEMM_SHAPE["k"], GEMM_SHAPE["n"]
        w = rng.integers(-127, 128, (k, n), dtype=np.int8)
        inits += [const("w_q", w), const("s_w", np.float32(0.01)), const("zp_w", np.int8(0))]  # QLinearMatMul: per-tensor
        nodes += [helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w"]),
                  helper.make_node("MatMul", ["x", "w"], ["y"])]
        x_shape, y_shape, macs = [m, k], [m, n], m * k * n
    else:
        raise ValueError(f"unknown kernel {name!r}; known: {sorted(INT8_OPS)}")
    nodes += [helper.make_node("QuantizeLinear", ["y", "s_y", "zp"], ["y_q"]),
              helper.make_node("DequantizeLinear", ["y_q", "s_y", "zp"], ["y_f"])]
    graph = helper.make_graph(nodes, f"int8_peak_{name}", [helper.make_tensor_value_info("x_f", f32, x_shape)],
                              [helper.make_tensor_value_info("y_f", f32, y_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = (rng.standard_normal(x_shape) * 0.8).astype(np.float32)  # ~ +-2.5, inside the int8 range at s_x
    return model, {"x_f": x}, int(macs)


def _session(model, threads: int, optimized_path: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # "optimised model may contain hardware-specific ops" is expected here
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def optimized_op_types(model, threads: int = 1) -> list[str]:
    """Op types of the graph onnxruntime actually runs (after its graph optimisations, QDQ fusion included)."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "optimized.onnx")
        _session(model, threads, path)
        return [n.op_type for n in onnx.load(path).graph.node]


def profile_op_times(model, feed: dict, threads: int = 1, runs: int = 5, warmup: int = 2) -> dict[str, list[float]]:
    """Kernel time (seconds) of each op type of the optimised graph, one entry per timed run, from
    onnxruntime's profiler. `model` is an onnx ModelProto or a path. Profiling adds a little overhead per
    node: use it to see where the time goes, not for latency."""
    import json

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as d:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "prof")
        src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")[warmup:]
    times: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        for i, (lo, hi) in enumerate(windows):
            if lo <= e["ts"] <= hi:
                per_run = times.setdefault(e.get("args", {}).get("op_name", "?"), [0.0] * len(windows))
                per_run[i] += e["dur"] * 1e-6
                break
    return times


def int8_peak_macs_per_s(threads: int = 1, seconds: float = 3.0, kernels: tuple[str, ...] | None = None) -> dict:
    """This CPU's INT8 MAC/s through onnxruntime, best of N per kernel, max over kernels (see module doc)."""
    names = list(kernels or INT8_OPS)
    models, feeds, macs, sessions, ops, unverified = {}, {}, {}, {}, {}, {}
    for name in names:
        models[name], feeds[name], macs[name] = _qdq_model(name)
        ops[name] = optimized_op_types(models[name], threads)
        int8 = sorted(INT8_OPS[name] & set(ops[name]))
        leftover = sorted(FLOAT_OPS & set(ops[name]))
        if not int8 or leftover:
            unverified[name] = f"optimised graph has {ops[name]}: INT8 op {'missing' if not int8 else 'present'}" \
                               f"{', float ' + '/'.join(leftover) + ' left' if leftover else ''}"
            continue
        sessions[name] = _session(models[name], threads)
    if not sessions:
        raise RuntimeError(f"no INT8 kernel fused in onnxruntime on this machine: {unverified}")

    best = {n: float("inf") for n in sessions}
    runs = {n: 0 for n in sessions}
    # warm-up: 3 runs each, then at least 10 % of the budget
    warm_until = time.perf_counter() + 0.1 * seconds
    w = 0
    while w < 3 or time.perf_counter() < warm_until:
        for n, s in sessions.items():
            s.run(None, feeds[n])
        w += 1
    # timed rounds, interleaved; at least 5 timed runs each whatever the budget
    deadline = time.perf_counter() + 0.9 * seconds
    while min(runs.values()) < 5 or time.perf_counter() < deadline:
        for n, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[n])
            best[n] = min(best[n], time.perf_counter() - t)
            runs[n] += 1
    rates = {n: macs[n] / best[n] for n in sessions}
    share, kernel_only = {}, {}
    for n in sessions:  # how much of each timed graph is the INT8 op itself (the rest: Q/DQ, transposes)
        t = profile_op_times(models[n], feeds[n], threads, runs=PROFILE_RUNS, warmup=1)
        int8_t = [sum(v[i] for k, v in t.items() if k in INT8_OPS[n]) for i in range(PROFILE_RUNS)]
        total_t = [sum(v[i] for v in t.values()) for i in range(PROFILE_RUNS)]
        share[n] = float(np.median(np.array(int8_t) / np.array(total_t)))
        kernel_only[n] = macs[n] / min(int8_t)
    peak_name = max(rates, key=rates.get)
    return {
        "peak_macs_per_s": rates[peak_name],
        "peak_kernel": peak_name,
        "kernels": rates,
        "best_s": best,
        "macs": {n: macs[n] for n in sessions},
        "runs": runs,
        "threads": threads,
        "optimized_ops": ops,
        "int8_op_share": share,
        "kernel_only_macs_per_s": kernel_only,
        "unverified": unverified,
        "method": (
            "calibrated: measured on this CPU through the same runtime (onnxruntime CPU provider, graph "
            "optimisation on, intra_op_num_threads={t}) and INT8 kernel family the student uses (QDQ graphs with "
            "int8 symmetric per-tensor activations and per-channel weights, fused by ORT to {ops}); compute-bound "
            "shapes (conv 256->256 k3 T=4096, GEMM 1024^3); warm-up then best-of-N time per kernel, kernels "
            "interleaved; peak = max MAC/s over kernels. A fraction of it is an achievable-peak roofline, not a "
            "datasheet figure."
        ).format(t=threads, ops="/".join(sorted({o for n in sessions for o in INT8_OPS[n] & set(ops[n])}))),
    }


def achieved_fraction(macs: float, latency_s: float, peak: float) -> float:
    """(macs / latency_s) / peak: the share of the measured INT8 peak that a model reaches."""
    if latency_s <= 0 or peak <= 0:
        raise ValueError(f"latency_s and peak must be positive, got {latency_s} and {peak}")
    return float(macs) / float(latency_s) / float(peak)
