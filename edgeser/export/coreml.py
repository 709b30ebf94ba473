"""Core ML export of export-form INT8 SER models, plus a static spec check.

Route (verified with coremltools 9.0 / torch 2.13): ``coremltools.convert`` on a
``torch.export`` ExportedProgram translates the ``quantized_decomposed`` ops
directly, so no post-hoc ``coremltools.optimize`` pass is needed:

* ``dequantize_per_channel`` on an int8 buffer -> ``constexpr_affine_dequantize``
  (int8 weight blob + per-channel scale, axis 0) feeding ``conv`` / ``linear``;
* ``quantize_per_tensor``/``dequantize_per_tensor`` on activations -> MIL
  ``quantize`` (output int8) / ``dequantize`` pairs.

The float front-end (DFT conv -> power -> mel -> log -> normalise) is kept in
fp32 by default (``frontend_fp32=True``): in fp16, |DFT|^2 of a loud signal
can overflow 65504.  Everything downstream of the first activation quantize
runs in fp16.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections import Counter
from pathlib import Path

QUANT_OPS = {"quantize"}
DEQUANT_OPS = {"dequantize"}
CONSTEXPR_WEIGHT_OPS = {  # ops that materialise a compressed constant weight
    "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_dense", "constexpr_sparse_to_dense",
}
WEIGHT_LAYER_OPS = {"conv": "weight", "conv_transpose": "weight", "linear": "weight",
                    "matmul": "y"}
WEIGHTISH = {"const"} | CONSTEXPR_WEIGHT_OPS
NON_COMPUTE_OPS = {"const", "cast"} | QUANT_OPS | DEQUANT_OPS | CONSTEXPR_WEIGHT_OPS


def _frontend_selector():
    """FP16ComputePrecision op_selector: fp16 only for ops downstream of a quantize."""
    def downstream_of_quantize(op) -> bool:
        if op.op_type.startswith("constexpr_"):  # int8 weights: dequantize straight to fp16
            return True
        stack, seen = [op], set()
        while stack:
            cur = stack.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            if cur.op_type == "quantize":
                return True
            for v in cur.inputs.values():
                for var in v if isinstance(v, (list, tuple)) else [v]:
                    if getattr(var, "op", None) is not None:
                        stack.append(var.op)
        return False
    return downstream_of_quantize


def _atomic_save_dir(mlmodel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".tmp-mlpkg-", dir=path.parent))
    try:
        tmp = tmp_root / path.name
        mlmodel.save(str(tmp))
        old = None
        if path.exists():  # os.replace cannot overwrite a non-empty directory
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def export_coreml(model, example_input, path, *, input_name: str = "audio",
                  output_name: str = "logits", frontend_fp32: bool = True) -> dict:
    """Convert an export-form INT8 model to a W8A8 ``.mlpackage`` (mlprogram, iOS17)."""
    import coremltools as ct
    import numpy as np
    import torch
    import torchao.quantization.pt2e  # noqa: F401  registers quantized_decomposed ops

    path = Path(path)
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (example_input,)).run_decompositions({})
    if frontend_fp32:
        precision = ct.transform.FP16ComputePrecision(op_selector=_frontend_selector())
        in_type = ct.TensorType(name=input_name, shape=tuple(example_input.shape),
                                dtype=np.float32)
    else:
        precision = ct.precision.FLOAT16
        in_type = ct.TensorType(name=input_name, shape=tuple(example_input.shape))
    mlmodel = ct.convert(
        ep,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=precision,
        inputs=[in_type],
        outputs=[ct.TensorType(name=output_name)],
    )
    _atomic_save_dir(mlmodel, path)
    return {"path": str(path), "route": "direct-quantized_decomposed",
            "minimum_deployment_target": "iOS17",
            "frontend_precision": "fp32" if frontend_fp32 else "fp16"}


def _load_ops(mlpackage_path):
    import coremltools as ct
    spec = ct.models.MLModel(str(mlpackage_path), skip_model_load=True).get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        return spec, []
    fn = spec.mlProgram.functions["main"]
    return spec, list(fn.block_specializations[fn.opset].operations)


def _shape(feature) -> list[int]:
    return list(feature.type.multiArrayType.shape)


def check_coreml_spec(mlpackage_path, *, input_name: str, input_shape, output_name: str,
                      n_classes: int, frontend_ops_allowed: int | None = None) -> dict:
    """Static W8A8 check of a saved ``.mlpackage`` (no Core ML runtime needed)."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    int8 = MIL_pb2.DataType.Value("INT8")
    spec, ops = _load_ops(mlpackage_path)
    v: list[str] = []

    # --- interface --------------------------------------------------------
    ins = {f.name: f for f in spec.description.input}
    outs = {f.name: f for f in spec.description.output}
    if input_name not in ins:
        v.append(f"input: expected name {input_name!r}, found {sorted(ins)}")
    elif _shape(ins[input_name]) != list(input_shape):
        v.append(f"input {input_name!r}: shape {_shape(ins[input_name])} != {list(input_shape)}")
    want_out = [int(input_shape[0]), int(n_classes)]
    if output_name not in outs:
        v.append(f"output: expected name {output_name!r}, found {sorted(outs)}")
    elif _shape(outs[output_name]) and _shape(outs[output_name]) != want_out:
        v.append(f"output {output_name!r}: shape {_shape(outs[output_name])} != {want_out}")
    if spec.specificationVersion < ct.target.iOS17.value:
        v.append(f"spec version {spec.specificationVersion} < iOS17 ({ct.target.iOS17.value})")
    if not ops:
        v.append("not an mlprogram model")

    # --- graph walk ---------------------------------------------------------
    producer, names = {}, []
    for op in ops:
        for o in op.outputs:
            producer[o.name] = op
        names.append(op.outputs[0].name if op.outputs else op.type)

    def src(op, arg):
        a = op.inputs.get(arg)
        return producer.get(a.arguments[0].name) if a and a.arguments and a.arguments[0].name else None

    def constexpr_is_int8(op) -> bool:
        if op.type == "constexpr_affine_dequantize":
            return op.attributes["quantized_data"].type.tensorType.dataType == int8
        data = src(op, "data")  # iOS18 constexpr_blockwise_shift_scale
        return data is not None and data.outputs[0].type.tensorType.dataType == int8

    first_q = next((i for i, op in enumerate(ops) if op.type in QUANT_OPS), None)
    n_front = first_q if first_q is not None else 0  # no quantize at all -> no front-end
    counts = Counter(op.type for op in ops)
    if first_q is None:
        v.append("activations: no quantize op found (model is not activation-quantised)")
    elif counts["quantize"] != counts["dequantize"]:
        v.append(f"activations: {counts['quantize']} quantize vs {counts['dequantize']} dequantize ops")
    front_compute = [n for op, n in zip(ops[:n_front], names) if op.type not in NON_COMPUTE_OPS]
    if frontend_ops_allowed is not None and len(front_compute) > frontend_ops_allowed:
        v.append(f"front-end: {len(front_compute)} float ops before the first quantize "
                 f"> allowed {frontend_ops_allowed}")

    int8_layers = float_layers = 0
    float_compute = []
    for i, (op, name) in enumerate(zip(ops, names)):
        if op.type in NON_COMPUTE_OPS or i < n_front:
            continue
        x, w = src(op, "x"), src(op, WEIGHT_LAYER_OPS.get(op.type, "weight"))
        if op.type == "matmul" and x is not None and x.type in WEIGHTISH:
            x, w = w, x  # constant on the left: matmul(W, act)
        if op.type in WEIGHT_LAYER_OPS:
            if w is None or w.type not in WEIGHTISH:
                pass  # activation x activation matmul: not a weight layer
            elif w.type in CONSTEXPR_WEIGHT_OPS and constexpr_is_int8(w):
                int8_layers += 1
            else:
                float_layers += 1
                v.append(f"layer {name!r} ({op.type}): weight is not int8 (produced by {w.type})")
            if x is None or x.type not in DEQUANT_OPS:
                v.append(f"layer {name!r} ({op.type}): input activation is not quantised")
        if x is None or x.type not in DEQUANT_OPS:
            float_compute.append(name)

    return {"passed": not v, "violations": v, "ops": dict(counts),
            "int8_weight_layers": int8_layers, "float_weight_layers": float_layers,
            "frontend_ops": front_compute, "float_compute_ops": float_compute,
            "spec_version": spec.specificationVersion}


def coreml_predict_available() -> tuple[bool, str]:
    """Core ML ``predict()`` needs the Core ML framework, i.e. macOS."""
    if platform.system() != "Darwin":
        return False, "CoreML predict() runs only on macOS"
    try:
        import coremltools  # noqa: F401
    except Exception as e:  # pragma: no cover
        return False, f"coremltools import failed: {e}"
    return True, "ok"
