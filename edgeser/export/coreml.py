"""Core ML export of export-form INT8 SER models, plus a static spec check.

Route (verified with coremltools 9.0 / torch 2.13): ``coremltools.convert`` on a
``torch.export`` ExportedProgram translates the ``quantized_decomposed`` ops directly,
so no post-hoc ``coremltools.optimize`` pass is needed:

* ``dequantize_per_channel`` on an int8 buffer -> ``constexpr_affine_dequantize``
  (int8 weight blob, per-channel scale, axis 0) feeding ``conv`` / ``linear``;
* ``quantize_per_tensor``/``dequantize_per_tensor`` -> MIL ``quantize`` (int8 output)
  / ``dequantize`` pairs.

Front-end vs body: the *body* is the tail of the program in which every compute op sits
between a ``dequantize`` and a ``quantize`` (data-movement ops are transparent); the
*front-end* is everything before it (e.g. DFT conv -> power -> mel -> log -> normalise).
With ``frontend_fp32=True`` (default) the front-end is kept in fp32: in fp16 |DFT|^2 of a
loud clip can overflow 65504 and ``log(x + 1e-10)`` of silence becomes ``log(0)``.
"""
from __future__ import annotations

from contextlib import contextmanager

import platform
from collections import Counter, defaultdict
from pathlib import Path

from edgeser.fileio import atomic_path

LABEL_OUTPUT = "label"  # a classifier's predicted class name

CONSTEXPR_OPS = {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
                 "constexpr_lut_to_dense", "constexpr_sparse_to_dense"}
CONSTANT_OPS = {"const"} | CONSTEXPR_OPS
DATA_MOVE_OPS = {"cast", "reshape", "transpose", "squeeze", "expand_dims", "slice_by_index",
                 "slice_by_size", "concat", "split", "identity", "tile", "gather"}
PASSIVE_OPS = CONSTANT_OPS | DATA_MOVE_OPS | {"quantize", "dequantize"}
# an activation Core ML fuses into the INT8 layer before it: dequantize -> conv -> relu -> quantize is W8A8
FUSED_ACTIVATIONS = {"relu"}
WEIGHT_LAYER_OPS = {"conv": "weight", "conv_transpose": "weight", "linear": "weight", "matmul": "y"}


def _frontend_end(nodes) -> tuple[int, list[int], set[int]]:
    """``nodes``: ``[(op_type, input_names, output_names)]`` in program order.

    Returns (index one past the front-end, indices of float compute ops, indices of ops whose activations all
    come from ``dequantize``), where a float compute op is one not sandwiched ``dequantize -> op -> quantize``.
    The front-end is the float ops before the last ``quantize``; after it only the tail (the classifier head's
    int8 x int8 layer with float logits) may follow. No quantize at all means there is no front-end (the whole
    model is checked as body).
    """
    prod = {o: i for i, (_, _, outs) in enumerate(nodes) for o in outs}
    cons = defaultdict(list)
    for i, (_, ins, _) in enumerate(nodes):
        for n in ins:
            cons[n].append(i)
    acts = lambda i: [n for n in nodes[i][1] if n not in prod or nodes[prod[n]][0] not in CONSTANT_OPS]  # noqa: E731

    def from_dq(name):
        i = prod.get(name)
        if i is None:
            return False  # a graph input: float
        return nodes[i][0] == "dequantize" or (
            nodes[i][0] in DATA_MOVE_OPS and all(from_dq(n) for n in acts(i)))

    def to_q(name):
        users = cons.get(name)
        return bool(users) and all(nodes[j][0] == "quantize" or (
            nodes[j][0] in DATA_MOVE_OPS | FUSED_ACTIVATIONS and all(to_q(o) for o in nodes[j][2])) for j in users)

    dq_fed = {i for i in range(len(nodes)) if all(from_dq(n) for n in acts(i))}

    def fused(i) -> bool:  # a ReLU between a sandwiched layer and its quantize: part of that INT8 layer
        ins = acts(i)
        return nodes[i][0] in FUSED_ACTIVATIONS and len(ins) == 1 and prod.get(ins[0]) in dq_fed and \
            all(to_q(o) for o in nodes[i][2])

    floats = [i for i, (t, _, outs) in enumerate(nodes) if t not in PASSIVE_OPS
              and not (i in dq_fed and all(to_q(o) for o in outs)) and not fused(i)]
    quantizes = [i for i, (t, _, _) in enumerate(nodes) if t == "quantize"]
    if not quantizes:
        return 0, floats, dq_fed
    front = [i for i in floats if i < quantizes[-1]]
    return (front[-1] + 1 if front else 0), floats, dq_fed


def _mil_nodes(ops):
    def names(v):
        return [x.name for x in (v if isinstance(v, (list, tuple)) else [v])]
    return [(op.op_type, [n for v in op.inputs.values() for n in names(v)],
             [o.name for o in op.outputs]) for op in ops]


def _fp32_frontend_selector():
    """FP16ComputePrecision op_selector: True (-> fp16) for everything but the front-end."""
    cache: dict[int, set] = {}

    def select(op) -> bool:
        block = op.enclosing_block
        if id(block) not in cache:  # analyse once, before the pass has rewritten anything
            ops = list(block.operations)
            end, _, _ = _frontend_end(_mil_nodes(ops))
            cache[id(block)] = {o.name for o in ops[:end]}
        front = cache[id(block)]
        if op.op_type in CONSTEXPR_OPS:  # decompress weights in their consumer's precision
            return not any(c.name in front for c in op.outputs[0].child_ops)
        return op.name not in front
    return select


def _reproducible(package: Path) -> None:
    """Same model, same bytes: coremltools names the package's items with random UUIDs (Manifest.json) and
    writes protobuf maps (metadata, op attributes) in hash order. Replace the UUIDs with ones derived from each
    item's path and re-serialise the spec deterministically (maps sorted). The conversion date is dropped
    before saving."""
    import json
    import uuid

    from coremltools.proto import Model_pb2

    for spec_file in package.glob("Data/com.apple.CoreML/*.mlmodel"):
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_file.read_bytes())
        spec_file.write_bytes(spec.SerializeToString(deterministic=True))

    manifest = package / "Manifest.json"
    m = json.loads(manifest.read_text())
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, "edgeser:" + entry["path"]))
           for old, entry in m["itemInfoEntries"].items()}
    m["itemInfoEntries"] = {ids[k]: v for k, v in sorted(m["itemInfoEntries"].items(), key=lambda kv: ids[kv[0]])}
    m["rootModelIdentifier"] = ids.get(m.get("rootModelIdentifier"), m.get("rootModelIdentifier"))
    manifest.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


def _atomic_save_dir(mlmodel, path: Path) -> None:
    """Save the package under a temp name beside `path` (fileio.atomic_path keeps the .mlpackage suffix
    coremltools insists on), made reproducible, then renamed onto `path`."""
    mlmodel.user_defined_metadata.pop("com.github.apple.coremltools.conversion_date", None)
    with atomic_path(path) as tmp:
        mlmodel.save(str(tmp))
        _reproducible(tmp)


@contextmanager
def unfold_blocks(model):
    """The INT8 front-end takes its blocks by im2col while Core ML converts `model`: coremltools converts no
    zero-padding of a computed length, and not the concat of zeros the other graphs use (the same blocks)."""
    from edgeser.quant.qstudent import QuantFrontend

    fronts = [m for m in model.modules() if isinstance(m, QuantFrontend)]
    for m in fronts:
        m.unfold_blocks = True
    try:
        yield
    finally:
        for m in fronts:
            m.unfold_blocks = False


def export_coreml(model, example_input, path, *, input_name: str = "audio",
                  output_name: str = "logits", frontend_fp32: bool = True,
                  samples_range: tuple[int, int] | None = None, metadata: dict | None = None,
                  class_labels: list[str] | None = None) -> dict:
    """Convert an export-form INT8 model to a W8A8 ``.mlpackage`` (mlprogram, iOS17).

    samples_range: (min, max) samples for a flexible input length (a RangeDim whose default is the example's
    length); metadata: written into the model's user_defined_metadata (class names, input spec, ...);
    class_labels: make it a Core ML classifier. Its outputs are then `label` (the predicted class name) and
    `output_name`, a dictionary class name -> logit (Core ML's classify op does not apply a softmax)."""
    import coremltools as ct
    import numpy as np
    import torch
    import torchao.quantization.pt2e  # noqa: F401  registers quantized_decomposed ops

    from edgeser.export.onnx_export import size_oblivious

    path = Path(path)
    b, n = tuple(example_input.shape)
    dyn = None if samples_range is None else ({1: torch.export.Dim("samples", min=samples_range[0],
                                                                     max=samples_range[1])},)
    with torch.no_grad(), size_oblivious(), unfold_blocks(model):
        ep = torch.export.export(model.eval(), (example_input,), dynamic_shapes=dyn).run_decompositions({})
    shape = (b, n) if samples_range is None else (b, ct.RangeDim(samples_range[0], samples_range[1], default=n))
    if frontend_fp32:
        precision = ct.transform.FP16ComputePrecision(op_selector=_fp32_frontend_selector())
        in_type = ct.TensorType(name=input_name, shape=shape, dtype=np.float32)
    else:
        precision = ct.precision.FLOAT16
        in_type = ct.TensorType(name=input_name, shape=shape)  # fp16 input
    classifier = None if not class_labels else ct.ClassifierConfig(list(class_labels),
                                                                    predicted_feature_name=LABEL_OUTPUT)
    mlmodel = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                         compute_precision=precision, inputs=[in_type],
                         outputs=[ct.TensorType(name=output_name)], classifier_config=classifier)
    if classifier is not None:  # the classify op names its dictionary `label_probs`: call it what it holds
        spec = mlmodel.get_spec()
        ct.utils.rename_feature(spec, LABEL_OUTPUT + "_probs", output_name)
        mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
        mlmodel.output_description[LABEL_OUTPUT] = "the predicted class name"
        mlmodel.output_description[output_name] = "logit per class name (no softmax)"
    elif metadata and "classes" in metadata:
        mlmodel.output_description[output_name] = "logits in the order of the classes " + metadata["classes"]
    for k, v in sorted((metadata or {}).items()):
        mlmodel.user_defined_metadata[k] = v
    _atomic_save_dir(mlmodel, path)
    return {"path": str(path), "route": "direct-quantized_decomposed",
            "minimum_deployment_target": "iOS17",
            "frontend_precision": "fp32" if frontend_fp32 else "fp16",
            "samples_range": list(samples_range) if samples_range else None}


def _shape(feature) -> list[int]:
    return list(feature.type.multiArrayType.shape)


def classifier_labels(spec) -> list[str] | None:
    """The class labels of an mlprogram classifier, read from its `classify` op; None if it is not one."""
    fn = spec.mlProgram.functions["main"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [v.immediateValue.tensor.strings.values[0] for v in values]
    return None


def logits_from_prediction(out: dict, output_name: str, classes: list[str]):
    """(1, n_classes) logits from a predict() result: a classifier's dictionary, in `classes` order, or the
    plain tensor output."""
    import numpy as np

    got = out[output_name]
    return np.array([[got[c] for c in classes]], np.float32) if isinstance(got, dict) else got


def check_coreml_spec(mlpackage_path, *, input_name: str, input_shape, output_name: str,
                      n_classes: int, frontend_ops_allowed: int | None = None,
                      samples_range: tuple[int, int] | None = None, class_labels: list[str] | None = None) -> dict:
    """Static W8A8 check of a saved ``.mlpackage`` (no Core ML runtime needed).

    Violations: interface (names, shapes, spec version >= iOS17); no activation quantize
    ops; a body conv/linear/matmul whose constant weight is not int8; an int8-weight layer
    whose input activation is not quantised (W8A16); more than ``frontend_ops_allowed``
    compute ops in the front-end.  Float-weight layers in the front-end (e.g. the mel
    matmul) are allowed and listed in ``frontend_float_layers``.
    """
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(mlpackage_path), skip_model_load=True).get_spec()
    v: list[str] = []
    ins = {f.name: f for f in spec.description.input}
    outs = {f.name: f for f in spec.description.output}
    if input_name not in ins:
        v.append(f"input: expected name {input_name!r}, found {sorted(ins)}")
    elif _shape(ins[input_name]) != list(input_shape):
        v.append(f"input {input_name!r}: shape {_shape(ins[input_name])} != {list(input_shape)}")
    elif samples_range is not None:
        ranges = ins[input_name].type.multiArrayType.shapeRange.sizeRanges
        got = (int(ranges[1].lowerBound), int(ranges[1].upperBound)) if len(ranges) > 1 else None
        if got != tuple(samples_range):
            v.append(f"input {input_name!r}: samples range {got} != flexible {tuple(samples_range)}")
    want_out = [int(input_shape[0]), int(n_classes)]
    labels = classifier_labels(spec) if spec.WhichOneof("Type") == "mlProgram" else None
    if class_labels is not None:
        if labels != list(class_labels):
            v.append(f"classifier labels {labels} != classes {list(class_labels)}")
        kinds = {f.name: f.type.WhichOneof("Type") for f in spec.description.output}
        if kinds.get(LABEL_OUTPUT) != "stringType" or kinds.get(output_name) != "dictionaryType":
            v.append(f"classifier outputs: expected {LABEL_OUTPUT!r} (string) and {output_name!r} (dictionary), "
                     f"found {kinds}")
    elif output_name not in outs:
        v.append(f"output: expected name {output_name!r}, found {sorted(outs)}")
    elif _shape(outs[output_name]) and _shape(outs[output_name]) != want_out:
        v.append(f"output {output_name!r}: shape {_shape(outs[output_name])} != {want_out}")
    if spec.specificationVersion < ct.target.iOS17.value:
        v.append(f"spec version {spec.specificationVersion} < iOS17 ({ct.target.iOS17.value})")
    ops = []
    if spec.WhichOneof("Type") == "mlProgram":
        fn = spec.mlProgram.functions["main"]
        ops = list(fn.block_specializations[fn.opset].operations)
    else:
        v.append("not an mlprogram model")

    nodes = [(op.type, [a.name for arg in op.inputs.values() for a in arg.arguments if a.name],
              [o.name for o in op.outputs]) for op in ops]
    names = [outs_[0] if outs_ else t for t, _, outs_ in nodes]
    producer = {o: op for op, (_, _, outs_) in zip(ops, nodes) for o in outs_}
    end, floats, dq_fed = _frontend_end(nodes)
    counts = Counter(op.type for op in ops)
    if not counts["quantize"]:
        v.append("activations: no quantize op found (model is not activation-quantised)")
    elif counts["quantize"] != counts["dequantize"]:
        v.append(f"activations: {counts['quantize']} quantize vs {counts['dequantize']} dequantize ops")
    front = [names[i] for i in range(end) if nodes[i][0] not in PASSIVE_OPS]
    if frontend_ops_allowed is not None and len(front) > frontend_ops_allowed:
        v.append(f"front-end: {len(front)} compute ops before the quantised body "
                 f"> allowed {frontend_ops_allowed}")

    int8 = MIL_pb2.DataType.Value("INT8")

    def src(op, arg):
        a = op.inputs.get(arg)
        return producer.get(a.arguments[0].name) if a and a.arguments and a.arguments[0].name else None

    def is_int8(w) -> bool:
        if w.type == "constexpr_affine_dequantize":
            return w.attributes["quantized_data"].type.tensorType.dataType == int8
        data = src(w, "data")  # iOS18+ constexpr_blockwise_shift_scale
        return w.type in CONSTEXPR_OPS and data is not None and \
            data.outputs[0].type.tensorType.dataType == int8

    int8_layers, body_float, front_float = 0, [], []
    for i, op in enumerate(ops):
        if op.type not in WEIGHT_LAYER_OPS:
            continue
        x, w = src(op, "x"), src(op, WEIGHT_LAYER_OPS[op.type])
        if op.type == "matmul" and x is not None and x.type in CONSTANT_OPS:
            x, w = w, x  # constant on the left: matmul(W, act)
        if w is None or w.type not in CONSTANT_OPS:
            continue  # activation x activation matmul: not a weight layer
        if is_int8(w):
            int8_layers += 1
            if i in floats and (i not in dq_fed or i < end):  # int8 x int8 with float logits is W8A8 too
                v.append(f"layer {names[i]!r} ({op.type}): int8 weight but activations not "
                         "quantised (not between dequantize and quantize; W8A16)")
        elif i < end:
            front_float.append(names[i])
        else:
            body_float.append(names[i])
            v.append(f"layer {names[i]!r} ({op.type}): weight is not int8 (produced by {w.type})")

    return {"passed": not v, "violations": v, "ops": dict(counts),
            "int8_weight_layers": int8_layers, "float_weight_layers": len(body_float),
            "frontend_float_layers": front_float, "frontend_ops": front,
            "float_compute_ops": [names[i] for i in floats],
            "spec_version": spec.specificationVersion, "class_labels": labels}


def coreml_predict_available() -> tuple[bool, str]:
    """Core ML ``predict()`` needs the Core ML framework, i.e. macOS."""
    if platform.system() != "Darwin":
        return False, "CoreML predict() runs only on macOS"
    try:
        import coremltools  # noqa: F401
    except Exception as e:  # pragma: no cover
        return False, f"coremltools import failed: {e}"
    return True, "ok"


def export_artifact(job, path) -> dict:
    """The registry's exporter (edgeser/formats.py): the W8A8 ML program, checked against its spec; exported
    where predict() runs (macOS), else skipped with the reason once the spec check passed."""
    from edgeser.export.onnx_export import INPUT, OUTPUT, example_batch
    from edgeser.quiet import quiet

    rng = job.samples_range()
    with quiet():  # coremltools prints import warnings and per-pass progress bars
        x = example_batch(job.samples, job.static_batch or 1)
        info = export_coreml(job.qexport, x, path, input_name=INPUT, output_name=OUTPUT, samples_range=rng,
                             metadata=job.meta, class_labels=job.classes)
    spec = check_coreml_spec(path, input_name=INPUT, input_shape=tuple(x.shape), output_name=OUTPUT,
                             n_classes=len(job.classes), samples_range=rng, class_labels=job.classes)
    ok, reason = coreml_predict_available()
    status = ("exported" if ok else "skipped") if spec["passed"] else "failed"
    reason = reason if spec["passed"] else "CoreML spec check failed: " + "; ".join(spec["violations"][:5])
    return {"status": status, "reason": None if ok and spec["passed"] else reason,
            "checks": {"coreml_spec": spec, "export": info}}
