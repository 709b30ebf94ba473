"""The `executorch-*` formats: the QAT student as an ExecuTorch program (`.pte`), lowered whole to one backend.

- executorch-xnnpack: the XNNPACK delegate (Android / iOS / Linux CPUs), run here on ExecuTorch's runtime;
- executorch-coreml: the Core ML delegate for iOS 17 (the ANE); it lowers on Linux, runs only on Apple OSes;
- executorch-qnn: the Qualcomm QNN delegate (Hexagon HTP); lowering needs a local QNN SDK (QNN_SDK_ROOT).

Quantisation: the QAT model's own Q/DQ ops and frozen scales are carried over (edgeser.export.delegable_graph),
not re-derived by a PT2E quantizer. Same scheme as every other INT8 artifact (zero point 0, or -128 after a
ReLU with qat.relu_quant unsigned; per-channel int8 weights) and the same numbers: a quantizer would recalibrate the activation ranges on other
clips, and XNNPACKQuantizer's "symmetric" config still gives activations non-zero zero points.

Metadata (classes, input spec, recipe hash) is in the program as constant methods `edgeser_<key>` returning
the same strings every artifact carries; `read_metadata` reads them with the runtime.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from edgeser.fileio import atomic_path

META_PREFIX = "edgeser_"

USAGE = '''```python
import json, torch
from executorch.runtime import Runtime
program = Runtime.get().load_program("{path}")
classes = json.loads(program.load_method("edgeser_classes").execute([])[0])
spec = json.loads(program.load_method("edgeser_input").execute([])[0])
forward = program.load_method("forward")               # batch 1, {length}
audio = torch.zeros(1, 32000)                          # mono PCM in [-1, 1] at {sr} Hz
pad = -audio.shape[1] % spec.get("multiple_of", 1)     # whole hops: zero-pad (the same logits)
logits = forward.execute([torch.nn.functional.pad(audio, (0, pad))])[0]
print(classes[int(logits[0].argmax())])
```'''
USAGE_COREML = USAGE + "\nRuns on iOS 17+ / macOS 14+ with ExecuTorch's Core ML backend linked in."
USAGE_QNN = USAGE + "\nRuns on a Snapdragon device with ExecuTorch's QNN backend and the QNN runtime libraries."


def available() -> tuple[bool, str]:
    try:
        from executorch.runtime import Runtime  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"executorch is not installed (pip install 'edgeser[executorch]'): {type(e).__name__}: {e}"
    return True, ""


def coreml_available() -> tuple[bool, str]:
    ok, why = available()
    if not ok:
        return ok, why
    from executorch.runtime import Runtime

    if not Runtime.get().backend_registry.is_available("CoreMLBackend"):
        return False, ("ExecuTorch's Core ML backend is not in this runtime (it runs on iOS / macOS only; the "
                       "Linux wheel registers " + ", ".join(Runtime.get().backend_registry.registered_backend_names)
                       + ")")
    return True, ""


def qnn_available() -> tuple[bool, str]:
    """A QNN program runs on a Snapdragon device only (the Linux runtime has the backend, not the HTP)."""
    return False, "ExecuTorch QNN programs run on a Snapdragon device's HTP; this machine has none"


def qnn_sdk() -> tuple[Path | None, str]:
    """The local QNN SDK (QNN_SDK_ROOT), or None and why not. Nothing is ever downloaded."""
    root = os.environ.get("QNN_SDK_ROOT")
    if not root:
        return None, "QNN_SDK_ROOT is not set: lowering to ExecuTorch's QNN backend needs a local Qualcomm QNN SDK"
    if not (Path(root) / "lib").is_dir():
        return None, f"QNN_SDK_ROOT={root} is not a QNN SDK (no lib/ folder)"
    return Path(root), ""


def _exported(job, static: bool):
    """torch.export of the delegable graph: batch 1, any length from one analysis frame (or the clip length)."""
    from edgeser.export.delegable_graph import DelegableGraph
    from edgeser.export.onnx_export import example_batch, size_oblivious
    from edgeser.quiet import quiet

    graph = DelegableGraph(job.qexport).eval()
    step = graph.hop if graph.whole_hops else 1
    x = example_batch(-(-job.samples // step) * step, 1)
    rng = None if static else job.samples_range()
    dyn = None
    if rng and step > 1:  # whole hops: from the blocks one frame needs to the longest clip
        dyn = ({1: step * torch.export.Dim("hops", min=graph.blocks, max=rng[1] // step)},)
    elif rng:
        dyn = ({1: torch.export.Dim("samples", min=rng[0], max=rng[1])},)
    with quiet(), size_oblivious():
        return torch.export.export(graph, (x,), dynamic_shapes=dyn), x, step


def program_meta(meta: dict, step: int) -> dict:
    """The run's metadata, with the input spec saying the program takes whole hops (`multiple_of`)."""
    if step <= 1 or "input" not in meta:
        return dict(meta)
    spec = json.loads(meta["input"]) | {
        "multiple_of": step, "padding": f"zero-pad a clip to a multiple of {step} samples: the same frames, the same "
                                        "logits (edgeser's runner does)"}
    return dict(meta) | {"input": json.dumps(spec)}


def constant_methods(meta: dict) -> dict:
    return {META_PREFIX + k: str(v) for k, v in sorted(meta.items())}


def delegation(edge) -> dict:
    """How much of the lowered program runs in a delegate: delegated / non-delegated node counts (ExecuTorch's
    get_delegation_info; the non-delegated ones include the `getitem`s that unpack a delegate's outputs),
    delegate calls, and the ops left outside, which must be none for a whole-graph delegate."""
    from executorch.devtools.backend_debug import get_delegation_info

    gm = edge.exported_program().graph_module
    info = get_delegation_info(gm)
    outside = Counter()
    calls = 0
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        name = getattr(n.target, "__name__", str(n.target))
        if "executorch_call_delegate" in name:
            calls += 1
        elif name != "getitem":
            outside[name] += 1
    return {"delegated_nodes": info.num_delegated_nodes, "non_delegated_nodes": info.num_non_delegated_nodes,
            "delegate_calls": calls, "ops_outside_delegate": dict(outside),
            "whole_graph": calls == 1 and not outside}


def _write(edge, path) -> int:
    from edgeser.export.onnx_export import size_oblivious

    with size_oblivious():  # to_executorch re-traces too: outside it, the input was planned for 205,600 samples
        buf = edge.to_executorch().buffer
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf)
    return len(buf)


def _lower(job, partitioner, static: bool = False):
    from executorch.exir import to_edge_transform_and_lower

    from edgeser.export.onnx_export import size_oblivious
    from edgeser.quiet import quiet

    ep, _, step = _exported(job, static)
    with quiet(), size_oblivious():  # the edge passes re-trace: without it they narrowed the length to 2401..20480
        return to_edge_transform_and_lower(ep, partitioner=[partitioner],
                                           constant_methods=constant_methods(program_meta(job.meta, step)))


def export_xnnpack(job, path) -> dict:
    """The registry's exporter for executorch-xnnpack."""
    ok, why = available()
    if not ok:
        return {"status": "skipped", "reason": why, "path": None}
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    edge = _lower(job, XnnpackPartitioner())
    d = delegation(edge)
    size = _write(edge, path)
    status, reason = ("exported", None) if d["whole_graph"] else (
        "failed", f"XNNPACK did not take the whole graph: {d['ops_outside_delegate']} outside "
                  f"{d['delegate_calls']} delegate(s)")
    card = [f"XNNPACK delegate: {d['delegate_calls']} delegate call(s), {d['delegated_nodes']} nodes delegated, "
            f"{d['non_delegated_nodes']} not (the delegate's output unpacking); the QAT model's own int8 scales."]
    return {"card": card, "status": status, "reason": reason, "checks": {"executorch": {
        "backend": "XnnpackBackend", "quantisation": "the QAT model's Q/DQ scales and zero points "
                                                    "(per-channel weights), carried over", "bytes": size, **d}}}


def export_coreml(job, path) -> dict:
    """executorch-coreml: lowered for iOS 17 (int8 weights need it: the default target fails on an int8 cast),
    fp16 compute (the ANE's; the front-end's DFT gain keeps powers inside fp16, edgeser.models.frontend).
    Checked structurally here: one Core ML delegate holds the whole graph."""
    ok, why = available()
    if not ok:
        return {"status": "skipped", "reason": why, "path": None}
    from edgeser.quiet import quiet

    with quiet():  # coremltools logs a warning per missing macOS-only proxy on import
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(minimum_deployment_target=ct.target.iOS17,
                                                 compute_precision=ct.precision.FLOAT16)
    edge = _lower(job, CoreMLPartitioner(compile_specs=specs))
    d = delegation(edge)
    size = _write(edge, path)
    check = {"backend": "CoreMLBackend", "minimum_deployment_target": "iOS17", "compute_precision": "float16",
             "bytes": size, "passed": d["whole_graph"], **d}
    if not d["whole_graph"]:
        return {"status": "failed", "reason": f"Core ML did not take the whole graph: {d['ops_outside_delegate']}",
                "checks": {"executorch": check}}
    run_ok, run_why = coreml_available()
    return {"status": "exported" if run_ok else "skipped", "reason": None if run_ok else run_why,
            "checks": {"executorch": check}}


def export_qnn(job, path) -> dict:
    """executorch-qnn: lowered to the QNN HTP delegate with the SDK at QNN_SDK_ROOT (static shape: batch 1,
    the clip length, as HTP needs); skipped with the reason where there is none."""
    sdk, why = qnn_sdk()
    if sdk is None:
        return {"status": "skipped", "reason": why, "path": None}
    ok, why = available()
    if not ok:
        return {"status": "skipped", "reason": why, "path": None}
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
    from executorch.backends.qualcomm.utils.utils import (generate_htp_compiler_spec,
                                                         generate_qnn_executorch_compiler_spec,
                                                         to_edge_transform_and_lower_to_qnn)

    ep, x, step = _exported(job, static=True)
    specs = generate_qnn_executorch_compiler_spec(soc_model=QcomChipset.SM8650,
                                                  backend_options=generate_htp_compiler_spec(use_fp16=False))
    edge = to_edge_transform_and_lower_to_qnn(ep.module(), (x,), specs, constant_methods=constant_methods(program_meta(job.meta, step)))
    d = delegation(edge)
    size = _write(edge, path)
    return {"status": "skipped", "reason": "built for Snapdragon (SM8650) HTP; the runtime is on the device",
            "checks": {"executorch": {"backend": "QnnBackend", "soc": "SM8650", "bytes": size, **d}}}


def read_metadata(path) -> dict:
    """The edgeser metadata a .pte carries (str -> str), through the runtime."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    return {name[len(META_PREFIX):]: program.load_method(name).execute([])[0]
            for name in sorted(program.method_names) if name.startswith(META_PREFIX)}


# ExecuTorch's CPU threadpool is one per process, and XNNPACK delegates hold it from the moment their method
# loads: resetting it after that crashed 7 of 8 runs here (segfaults, aborts, hangs), even with the method
# dropped and reloaded. So the pool is sized once, before the first method loads, and never again.
_POOL = {"threads": None, "locked": False}


def _set_threads(n: int) -> bool:
    """Size the process's threadpool to n where that is still safe; True if it now has n threads."""
    n = int(n)
    if not _POOL["locked"] and _POOL["threads"] != n:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(n)
        _POOL["threads"] = n
    return _POOL["threads"] == n


def runner(path):
    """A runtimes.Runner on ExecuTorch's runtime (the program's own delegate; XNNPACK here): one clip a call.
    The method loads on the first call, so `set_threads` before it sizes the pool (1 thread unless asked);
    asked later for another count, the pool stays as it is and `threads_note` says so."""
    from executorch.runtime import Runtime

    from edgeser.runtimes import Runner

    program = Runtime.get().load_program(Path(path))
    state = {"forward": None}

    def run(x):
        if multiple > 1 and x.shape[1] % multiple:  # whole hops (program_meta): zeros change no frame
            x = np.pad(x, ((0, 0), (0, multiple - x.shape[1] % multiple)))
        if state["forward"] is None:
            if _POOL["threads"] is None:
                _set_threads(1)
            _POOL["locked"] = True
            state["forward"] = program.load_method("forward")
        return state["forward"].execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy().copy()

    def set_threads(n):
        if not _set_threads(n):
            r.threads_note = (f"ExecuTorch's threadpool is fixed at {_POOL['threads']} thread(s) once a method has "
                              f"loaded in this process; {n} was asked for")

    meta = read_metadata(path)
    spec = json.loads(meta["input"]) if "input" in meta else {}
    multiple = int(spec.get("multiple_of", 1))
    r = Runner(run, static_batch=1, set_threads=set_threads, min_samples=int(spec.get("min_samples", 1)))
    r.threads_note = None
    return r
