"""The `openvino` format: the INT8 QDQ ONNX graph converted to OpenVINO IR (`model.xml` + `model.bin`, what
Intel CPUs, GPUs and NPUs load), run here on OpenVINO's CPU plugin.

OpenVINO defaults to bf16 inference on CPUs that have it, which moved INT8 logits 0.5-0.7 off onnxruntime
(../shared/notes/edge-runtimes.md): the runner fixes `INFERENCE_PRECISION_HINT` to f32, so the int8 kernels and
the float front-end compute what the other INT8 artifacts compute. The artifact's metadata (classes, input spec,
recipe hash) is carried in the IR's rt_info under `edgeser`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeser.fileio import atomic_path

XML, BIN = "model.xml", "model.bin"
CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
WORK_OPS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution")  # where the MACs are

USAGE = '''```python
import json, numpy as np, openvino as ov
core = ov.Core()
model = core.read_model("{path}/model.xml")
classes = json.loads(model.get_rt_info(["edgeser", "classes"]).astype(str))
cm = core.compile_model(model, "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})   # "NPU" on an Intel NPU
logits = cm(np.zeros((1, 32000), np.float32))[0]  # mono PCM in [-1, 1] at {sr} Hz, {length}
print(classes[int(logits[0].argmax())])
```'''


def available() -> tuple[bool, str]:
    try:
        import openvino  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"openvino is not installed (pip install 'edgeser[openvino]'): {type(e).__name__}: {e}"
    return True, ""


def int8_share(model, samples: int) -> dict:
    """How the compiled CPU model runs: per work op (convolution, fully connected, matmul) its kernel precision
    and MACs at one clip of `samples`, and the share of the MACs on int8 kernels (from the runtime model's
    rt_info, what the plugin actually chose)."""
    import openvino as ov

    m = model.clone()
    m.reshape({m.inputs[0]: ov.PartialShape([1, samples])})
    rt = ov.Core().compile_model(m, "CPU", CONFIG | {"INFERENCE_NUM_THREADS": 1}).get_runtime_model()
    ops, total, int8 = [], 0, 0
    for op in rt.get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind not in WORK_OPS:
            continue
        out = [int(d) for d in op.get_output_partial_shape(0).to_shape()]
        w = [int(d) for d in op.get_input_partial_shape(1).to_shape()]
        macs = int(np.prod(out)) * int(np.prod(w[1:]) if kind != "FullyConnected" else w[-1])
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        ops.append({"op": op.get_friendly_name(), "type": kind, "precision": prec, "macs": macs})
        total += macs
        int8 += macs if prec in ("i8", "u8") else 0
    return {"int8_mac_share": round(int8 / total, 4) if total else None, "macs": total, "work_ops": ops}


def export_artifact(job, path, onnx_int8) -> dict:
    """The registry's exporter (edgeser/formats.py): the INT8 ONNX graph (`onnx_int8`, the file it needs) as
    OpenVINO IR in the folder `path`, with the run's metadata, and how the CPU plugin runs it."""
    ok, why = available()
    if not ok:
        return {"status": "skipped", "reason": why, "path": None}
    import openvino as ov

    model = ov.convert_model(str(onnx_int8))
    for k, v in sorted(job.meta.items()):
        model.set_rt_info(v, ["edgeser", k])
    with atomic_path(path) as tmp:
        tmp.mkdir()
        ov.save_model(model, str(tmp / XML), compress_to_fp16=False)  # the weights as they are (int8 + f32)
    return {"checks": {"openvino": {"files": [XML, BIN], "inference_precision": CONFIG["INFERENCE_PRECISION_HINT"],
                                    **int8_share(model, job.samples)}}}


def read_metadata(path) -> dict:
    """The edgeser metadata an IR carries (str -> str)."""
    import openvino as ov

    model = ov.Core().read_model(str(Path(path) / XML))
    info = model.get_rt_info()
    keys = list(info["edgeser"]) if "edgeser" in info else []  # a plain dict of the keys in this binding
    return {k: model.get_rt_info(["edgeser", k]).astype(str) for k in keys}


def runner(path):
    """A runtimes.Runner on OpenVINO's CPU plugin, f32 inference precision, thread count settable."""
    import json

    import openvino as ov

    from edgeser.runtimes import Runner

    core, path = ov.Core(), Path(path)
    model = core.read_model(str(path / XML))
    state = {}

    def compile_for(threads: int):
        state["cm"] = core.compile_model(model, "CPU", CONFIG | {"INFERENCE_NUM_THREADS": int(threads)})
        state["req"] = state["cm"].create_infer_request()
        state["precision"] = str(state["cm"].get_property("INFERENCE_PRECISION_HINT"))  # what the plugin runs

    compile_for(1)

    def run(x):
        return state["req"].infer({0: np.ascontiguousarray(x, np.float32)})[state["cm"].output(0)].copy()

    r = Runner(run, set_threads=compile_for)
    r.inference_precision = lambda: state["precision"]
    meta = read_metadata(path)
    if "input" in meta:
        r.min_samples = int(json.loads(meta["input"])["min_samples"])
    return r
