"""TensorRT 10 helpers for QDQ ONNX models.

``check_tensorrt_rules`` is a static check (``onnx`` only, no TensorRT needed) of the
explicit-quantization rules TensorRT 10 enforces when it parses a QDQ graph.
``build_engine`` needs the ``tensorrt`` Python package (and a GPU);
``write_trtexec_script`` writes the equivalent ``trtexec`` command for the target device.
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgeser.fileio import atomic_path, write_bytes

# ONNX ops (default domain) the TensorRT 10 ONNX parser handles.  Deliberately
# conservative: no STFT/DFT, no Loop/Scan/If, no sequence ops, no custom domains.
TRT10_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater
GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization MatMul Max
MaxPool Mean Min Mish Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize Round Selu Shape Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh Tile TopK
Transpose Unsqueeze Where Xor
""".split())
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _v(node, rule, detail):
    return {"node": node.name or (node.output[0] if node.output else node.op_type),
            "op": node.op_type, "rule": rule, "detail": detail}


def _constants(graph) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Tensor name -> value for initializers, Constant outputs and Identity of those."""
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dtypes = {t.name: t.data_type for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            attr = n.attribute[0]
            if attr.type == onnx.AttributeProto.TENSOR:
                consts[n.output[0]] = numpy_helper.to_array(attr.t)
                dtypes[n.output[0]] = attr.t.data_type
            else:
                consts[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(attr))
        elif n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
            dtypes[n.output[0]] = dtypes.get(n.input[0])
    return consts, dtypes


def _weight_axis(consumer, rank: int) -> int:
    """Output-channel axis of a weight tensor as seen by its consumer."""
    if consumer is None:
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if consumer.op_type == "MatMul":
        return rank - 1
    return 0  # Conv


def _check_input(inp, profile: dict | None = None) -> list[dict]:
    """Graph inputs need a known rank. Without an optimisation profile only dim 0 (batch) may be dynamic; with
    one ({"min_shape", "opt_shape", "max_shape"}), every dynamic dim must be covered by min <= opt <= max and
    every static dim must equal the profile's."""
    tt = inp.type.tensor_type
    v = {"node": inp.name, "op": "graph_input", "rule": "dynamic_input"}
    if not tt.HasField("shape"):
        return [{**v, "detail": "input has no shape (unknown rank)"}]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    if profile is None:
        bad = [i for i, d in enumerate(dims) if i > 0 and not isinstance(d, int)]
        if bad:
            return [{**v, "detail": f"shape {dims}: dims {bad} are dynamic (only the batch dim may be, "
                                    "unless an optimisation profile covers them)"}]
        return []
    lo, opt, hi = (list(profile[k]) for k in ("min_shape", "opt_shape", "max_shape"))
    if not len(lo) == len(opt) == len(hi) == len(dims):
        return [{**v, "detail": f"profile rank {len(lo)} != input rank {len(dims)}"}]
    out = []
    for i, d in enumerate(dims):
        if not lo[i] <= opt[i] <= hi[i]:
            out.append({**v, "detail": f"profile dim {i}: not min {lo[i]} <= opt {opt[i]} <= max {hi[i]}"})
        elif isinstance(d, int) and d > 0 and not lo[i] == opt[i] == hi[i] == d:
            out.append({**v, "detail": f"static dim {i} = {d} but the profile spans {lo[i]}..{hi[i]}"})
    return out


def check_tensorrt_rules(onnx_path, profile: dict | None = None) -> dict:
    """Static check of a QDQ ONNX against TensorRT 10 explicit-quantization rules.

    Returns ``{"passed", "violations": [{"node", "op", "rule", "detail"}], "checked"}``.
    Rules: ``zero_point``, ``int8_type``, ``const_qparams``, ``scale_value``,
    ``per_channel_axis``, ``per_channel_activation``, ``unsupported_op``,
    ``custom_domain``, ``dynamic_input``, ``opset``.
    """
    model = onnx.load(str(onnx_path)) if not isinstance(onnx_path, onnx.ModelProto) else onnx_path
    g = model.graph
    consts, dtypes = _constants(g)
    consumers: dict[str, list] = {}
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: list[dict] = []
    counts = {"nodes": len(g.node), "quantize": 0, "dequantize": 0, "per_channel": 0,
              "inputs": 0}

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        out.append({"node": g.name, "op": "model", "rule": "opset",
                    "detail": f"default-domain opset {opset} < 13 (per-channel QDQ needs 13+)"})

    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            out.append(_v(n, "custom_domain", f"op {n.domain}::{n.op_type} is not a standard ONNX op"))
            continue
        if n.op_type not in TRT10_SUPPORTED_OPS:
            out.append(_v(n, "unsupported_op", f"{n.op_type} is not in the TensorRT 10 supported set"))
        if n.op_type not in QDQ_OPS:
            continue
        counts["quantize" if n.op_type == "QuantizeLinear" else "dequantize"] += 1
        x, scale_name = n.input[0], n.input[1]
        zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

        for role, name in (("scale", scale_name), ("zero point", zp_name)):
            if name is not None and name not in consts:
                out.append(_v(n, "const_qparams", f"{role} {name!r} is computed, not a constant"))
        scale = consts.get(scale_name)
        if scale is not None and not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            out.append(_v(n, "scale_value", f"scale {scale_name!r} has non-positive or non-finite values"))
        if zp_name in consts:
            if dtypes.get(zp_name) != TensorProto.INT8:
                t = TensorProto.DataType.Name(dtypes.get(zp_name) or 0)
                out.append(_v(n, "int8_type", f"zero point {zp_name!r} is {t}, expected INT8"))
            if np.any(consts[zp_name] != 0):
                out.append(_v(n, "zero_point", f"zero point {zp_name!r} is not 0 (asymmetric)"))
        if "output_dtype" in attrs and attrs["output_dtype"] not in (0, TensorProto.INT8):
            out.append(_v(n, "int8_type", f"output_dtype {TensorProto.DataType.Name(attrs['output_dtype'])}"))
        if n.op_type == "DequantizeLinear" and x in dtypes and dtypes[x] != TensorProto.INT8:
            out.append(_v(n, "int8_type", f"quantized input {x!r} is {TensorProto.DataType.Name(dtypes[x])}"))

        if scale is not None and scale.size > 1:  # per-channel
            counts["per_channel"] += 1
            src = producer.get(x)
            if x not in consts and src is not None and src.op_type == "QuantizeLinear":
                x = src.input[0]  # float weight -> Q -> DQ -> layer
            if x not in consts:
                out.append(_v(n, "per_channel_activation",
                              "per-channel Q/DQ on an activation; TensorRT needs per-tensor"))
                continue
            rank = consts[x].ndim
            axis = attrs.get("axis", 1)
            axis = axis + rank if axis < 0 else axis
            nxt = (consumers.get(n.output[0]) or [None])[0]
            if nxt is not None and nxt.op_type == "DequantizeLinear":  # weight Q -> DQ -> layer
                nxt = (consumers.get(nxt.output[0]) or [None])[0]
            want = _weight_axis(nxt, rank)
            if axis != want:
                layer = f"{nxt.op_type} {nxt.name!r}" if nxt is not None else "no consumer"
                out.append(_v(n, "per_channel_axis",
                              f"axis {axis}, expected output-channel axis {want} ({layer})"))

    for inp in g.input:
        if inp.name not in consts:
            counts["inputs"] += 1
            out += _check_input(inp, profile)
    counts["op_types"] = sorted({n.op_type for n in g.node})
    return {"passed": not out, "violations": out, "checked": counts}


def tensorrt_available() -> tuple[bool, str]:
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA install
        return False, f"cannot import tensorrt ({type(e).__name__}: {e})"
    return True, f"tensorrt {getattr(trt, '__version__', '?')}"


def build_engine(onnx_path, engine_path, *, min_shape, opt_shape, max_shape, input_name,
                 timing_cache=None) -> dict:
    """Build a TensorRT engine: explicit INT8 from the QDQ nodes, FP16 fallback."""
    ok, reason = tensorrt_available()
    if not ok:
        raise RuntimeError(f"TensorRT not available: {reason}")
    import tensorrt as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("ONNX parse failed: " + "; ".join(errs))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)  # honour Q/DQ (explicit quantization)
    config.set_flag(trt.BuilderFlag.FP16)  # fallback precision for the float front-end
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, tuple(min_shape), tuple(opt_shape), tuple(max_shape))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see logger output)")
    engine_path = Path(engine_path)
    write_bytes(engine_path, bytes(serialized))
    if cache_path:
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return {"engine_path": str(engine_path), "size_bytes": engine_path.stat().st_size,
            "timing_cache": str(cache_path) if cache_path else None,
            "tensorrt_version": trt.__version__, "flags": ["INT8", "FP16"],
            "profile": {"input": input_name, "min": list(min_shape), "opt": list(opt_shape),
                        "max": list(max_shape)},
            "build_s": round(time.perf_counter() - t0, 2)}


def _shape_arg(name: str, shape) -> str:
    return f"{name}:{'x'.join(str(int(d)) for d in shape)}"


def write_trtexec_script(onnx_path, script_path, *, input_name, min_shape, opt_shape,
                         max_shape, engine_path=None, timing_cache=None) -> str:
    """Write an executable ``build_engine.sh`` running ``trtexec``; returns the command.

    Paths are written relative to the script's directory (the script ``cd``s there),
    so the folder can be copied to the target device as a unit.  The engine defaults
    to ``<script dir>/<onnx stem>.engine``, the timing cache to ``<script dir>/timing.cache``.
    """
    script_path = Path(script_path)
    here = script_path.parent.resolve()
    onnx_p = Path(onnx_path).resolve()
    engine_p = Path(engine_path).resolve() if engine_path else here / (onnx_p.stem + ".engine")
    cache_p = Path(timing_cache).resolve() if timing_cache else here / "timing.cache"
    rel = lambda p: os.path.relpath(p, here)  # noqa: E731
    cmd = " ".join(shlex.quote(a) for a in [
        "trtexec", f"--onnx={rel(onnx_p)}", f"--saveEngine={rel(engine_p)}",
        "--int8", "--fp16",
        f"--minShapes={_shape_arg(input_name, min_shape)}",
        f"--optShapes={_shape_arg(input_name, opt_shape)}",
        f"--maxShapes={_shape_arg(input_name, max_shape)}",
        f"--timingCacheFile={rel(cache_p)}",
    ])
    text = ("#!/usr/bin/env bash\n"
            "# Build a TensorRT engine from the QDQ ONNX (explicit INT8, FP16 fallback).\n"
            "# Extra trtexec flags may be appended: ./build_engine.sh --verbose\n"
            "set -euo pipefail\n"
            'cd "$(dirname "$0")"\n'
            f'{cmd} "$@"\n')
    with atomic_path(script_path) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o755)
    return cmd


TRT_MAX_SECONDS = 30  # TensorRT's max profile length: memory is planned for it, so not MAX_SECONDS


def export_artifact(job, path, onnx_int8) -> dict:
    """The registry's exporter (edgeser/formats.py): the rule check of the INT8 ONNX graph (`onnx_int8`, the file
    it needs) and a trtexec script always; the engine itself where TensorRT is installed."""
    import json

    from edgeser.export.artifact_meta import write_side_file
    from edgeser.export.onnx_export import INPUT

    b = job.static_batch
    # the optimisation profile: one analysis frame .. TRT_MAX_SECONDS, tuned for the training clip length
    lo, hi = job.samples_range() or (job.samples, job.samples)
    hi = min(hi, job.sample_rate * TRT_MAX_SECONDS) if not b else hi
    shapes = dict(input_name=INPUT, min_shape=(b or 1, lo), opt_shape=(b or 1, job.samples), max_shape=(b or 8, hi))
    rules = check_tensorrt_rules(onnx_int8, profile=shapes)
    script = path.parent / "build_engine.sh"
    cmd = write_trtexec_script(onnx_int8, script, **shapes)
    side = write_side_file(path, job.meta | {"tensorrt_profile": json.dumps({k: list(v) for k, v in shapes.items()
                                                                             if k != "input_name"})})
    checks = {"tensorrt_rules": rules, "trtexec_script": str(script.relative_to(job.run_dir)), "trtexec": cmd,
              "metadata_file": str(side.relative_to(job.run_dir))}
    if not rules["passed"]:
        return {"status": "failed", "reason": f"{len(rules['violations'])} TensorRT rule violation(s)",
                "checks": checks}
    ok, why = tensorrt_available()
    if not ok:
        return {"status": "skipped", "reason": f"{why}; rule check passed; build on the device with "
                f"{script.relative_to(job.run_dir)}", "checks": checks, "path": None}
    checks["build"] = build_engine(onnx_int8, path, **shapes, timing_cache=path.parent / "timing.cache")
    return {"status": "exported", "reason": None, "checks": checks}
