"""The one format registry: every artifact edgeser can write, and everything the rest of the package needs to
know about it. The recipe's list of formats, the export stage, verification, the runners, `edgeser bench` and
the model card are all views of REGISTRY.

Adding a format: one module with its exporter (export(job: ExportJob, path, *needed) -> dict | None, the
record's updates; `needed`: the files of the formats in its `needs`), its runner (runner(path) ->
runtimes.Runner) and its model-card snippet, and one entry below.

Functions are named as "module:attribute" and imported when used, so reading the registry (the recipe schema
does) imports neither torch nor any runtime.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    name: str
    file: str  # under RUN/artifacts (a folder for packages and the stream graphs)
    precision: str
    reference: str  # the PyTorch model it must agree with: "qat" (the QAT student) or "prune" (the FP32 student)
    export: str  # "module:function", export(job, path, *files of `needs`) -> dict | None
    runner: str  # "module:function", runner(path) -> runtimes.Runner
    runtime: str  # what runs it on a device: a target profile's `runtime` names one of these
    usage: str  # "module:attribute": the model card's how-to-call snippet (str.format fields: path, sr, ...)
    available: str | None = None  # "module:function" -> (ok, why): can its runtime run here (None: always)
    needs: tuple[str, ...] = ()  # formats whose files its exporter reads (written first when not asked for)
    role: str = "deploy"  # "baseline": measured beside the others, never gated
    default: bool = True  # exported when the recipe does not list formats
    suffixes: tuple[str, ...] = ()  # file suffixes `edgeser bench` recognises it by
    marker: str | None = None  # or, for a folder artifact, the file inside it that `edgeser bench` looks for
    bench: str | None = None  # the kind `edgeser bench` measures it as (edgeser/benchmark.py)
    note: str | None = None  # said in verify's reason whenever it runs (e.g. a simulator's latency)
    simulated: bool = False  # its runtime here is a simulator: the robustness suite runs on fewer clips
    zero_points_zero: bool = False  # its runtime takes only zero points of 0 (qat.relu_quant auto: symmetric)
    int32_dft: bool = False  # it runs the INT8 DFT with int32 sums and no output quantiser (qat.dft_output auto)


_OX = "edgeser.export.onnx_export"
_RT = "edgeser.runtimes"
_CARD = "edgeser.export.model_card"
_ET = "edgeser.export.executorch"

REGISTRY: dict[str, Format] = {f.name: f for f in [
    Format("torchscript", "student_int8.ts", "int8-qdq", "qat", f"{_OX}:export_torchscript_artifact",
           f"{_RT}:torchscript_runner", "pytorch", f"{_CARD}:TORCHSCRIPT", suffixes=(".ts",), bench="torchscript",
           int32_dft=True),
    Format("pt2", "student_int8.pt2", "int8-qdq", "qat", f"{_OX}:export_pt2_artifact", f"{_RT}:pt2_runner",
           "pytorch", f"{_CARD}:PT2", suffixes=(".pt2",), bench="pt2", int32_dft=True),
    Format("onnx-fp32", "student_fp32.onnx", "fp32", "prune", f"{_OX}:export_fp32_artifact", f"{_RT}:onnx_runner",
           "onnxruntime", f"{_CARD}:ONNX", suffixes=(".onnx",), bench="onnx", int32_dft=True),
    Format("onnx-int8", "student_int8.onnx", "int8", "qat", f"{_OX}:export_int8_artifact", f"{_RT}:onnx_runner",
           "onnxruntime", f"{_CARD}:ONNX", suffixes=(".onnx",), bench="onnx", int32_dft=True),
    # the same INT8 graph split at the log-mel of each frame, for `edgeser stream` with its feature cache
    Format("onnx-int8-stream", "student_int8_stream", "int8", "qat", "edgeser.export.stream_export:export_artifact",
           f"{_RT}:stream_runner", "onnxruntime", f"{_CARD}:STREAM", int32_dft=True),
    # baseline: onnxruntime quantize_static (MinMax) on the same pruned student, no QAT
    Format("onnx-int8-ptq", "student_int8_ptq.onnx", "int8", "prune", "edgeser.export.ptq:export_artifact",
           f"{_RT}:onnx_runner", "onnxruntime", f"{_CARD}:ONNX", needs=("onnx-fp32",), role="baseline",
           suffixes=(".onnx",), bench="onnx", int32_dft=True),
    Format("coreml", "student_w8a8.mlpackage", "int8", "qat", "edgeser.export.coreml:export_artifact",
           f"{_RT}:coreml_runner", "coreml", f"{_CARD}:COREML",
           available="edgeser.export.coreml:coreml_predict_available", suffixes=(".mlpackage", ".mlmodel"),
           bench="coreml"),
    Format("tensorrt", "student_int8.engine", "int8", "qat", "edgeser.export.tensorrt:export_artifact",
           f"{_RT}:tensorrt_runner", "tensorrt", f"{_CARD}:TENSORRT", needs=("onnx-int8",),
           available="edgeser.export.tensorrt:tensorrt_available", suffixes=(".engine", ".plan"), bench="tensorrt",
           zero_points_zero=True),
    # An artifact of its own, not a runtime of onnx-int8: a different file, the onnx-int8 graph with an A16W8
    # head (edgeser.export.htp), run on Qualcomm's HTP backend (static batch: use the hexagon target). Here the
    # backend is onnxruntime-qnn's x86 simulator.
    Format("qnn-htp", "student_htp.onnx", "int8", "qat", "edgeser.export.htp:export_artifact", f"{_RT}:qnn_runner",
           "qnn", f"{_CARD}:HTP", available=f"{_RT}:qnn_available", needs=("onnx-int8",), default=False,
           note="ran whole on Qualcomm's HTP backend (CPU fallback disabled); its latency is the x86 simulator's, "
                "not the device's", simulated=True),
    # the same INT8 QDQ graph as OpenVINO IR for Intel CPUs, GPUs and NPUs, verified on OpenVINO's CPU plugin at
    # f32 inference precision (its bf16 default moved INT8 logits 0.5-0.7); optional: the openvino extra
    Format("openvino", "student_int8_openvino", "int8", "qat", "edgeser.export.openvino:export_artifact",
           "edgeser.export.openvino:runner", "openvino", "edgeser.export.openvino:USAGE",
           available="edgeser.export.openvino:available", needs=("onnx-int8",), default=False, marker="model.xml",
           bench="openvino"),
    # ExecuTorch programs (edgeser.export.executorch): the QAT student's own Q/DQ graph, batch 1, lowered whole to
    # one delegate; optional: the executorch extra. XNNPACK runs here on ExecuTorch's runtime; Core ML and QNN
    # lower here and run on their devices (iOS / Snapdragon), so they are structural checks, skipped with why.
    Format("executorch-xnnpack", "student_int8_xnnpack.pte", "int8", "qat", f"{_ET}:export_xnnpack", f"{_ET}:runner",
           "executorch", f"{_ET}:USAGE", available=f"{_ET}:available", default=False, suffixes=(".pte",),
           bench="executorch-xnnpack"),
    Format("executorch-coreml", "student_int8_coreml.pte", "int8", "qat", f"{_ET}:export_coreml", f"{_ET}:runner",
           "executorch", f"{_ET}:USAGE_COREML", available=f"{_ET}:coreml_available", default=False,
           suffixes=(".pte",), bench="executorch-xnnpack"),
    Format("executorch-qnn", "student_int8_qnn.pte", "int8", "qat", f"{_ET}:export_qnn", f"{_ET}:runner",
           "executorch", f"{_ET}:USAGE_QNN", available=f"{_ET}:qnn_available", default=False, suffixes=(".pte",),
           bench="executorch-xnnpack"),
    # LiteRT (TFLite) full-integer INT8 from litert-torch, run on the LiteRT interpreter with XNNPACK
    # (edgeser.export.litert); optional: the litert extra
    Format("tflite-int8", "student_int8.tflite", "int8", "qat", "edgeser.export.litert:export_artifact",
           "edgeser.export.litert:runner", "litert", "edgeser.export.litert:USAGE",
           available="edgeser.export.litert:available", default=False, suffixes=(".tflite",), bench="tflite-int8"),
]}

NAMES = tuple(REGISTRY)
DEFAULTS = tuple(n for n, f in REGISTRY.items() if f.default)
RUNTIMES = tuple(dict.fromkeys(f.runtime for f in REGISTRY.values()))
GATED_DEFAULT = ("onnx-int8",)  # what verify gates unless the recipe says: the artifact most targets ship


def zero_points_zero(formats) -> list[str]:
    """The formats among `formats` whose runtimes take only zero points of 0 (TensorRT)."""
    return [f for f in formats if REGISTRY[f].zero_points_zero]


def int8_dft_only(formats) -> list[str]:
    """The formats among `formats` that need the INT8 DFT's output requantised to int8 (qat.dft_output)."""
    return [f for f in formats if not REGISTRY[f].int32_dft]


def resolve(ref: str):
    """The object a "module:attribute" reference names."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def available(name: str) -> tuple[bool, str]:
    """(True, "") where the format's runtime runs on this machine, else (False, why)."""
    f = REGISTRY[name]
    return (True, "") if f.available is None else resolve(f.available)()


def load_runner(name: str, path: Path):
    """A runtimes.Runner for the artifact at `path`, of format `name`."""
    return resolve(REGISTRY[name].runner)(Path(path))


def by_marker() -> dict[str, str]:
    """For folder artifacts: the file inside that identifies one -> the kind `edgeser bench` measures it as."""
    return {f.marker: f.bench for f in REGISTRY.values() if f.marker and f.bench}


def by_suffix() -> dict[str, str]:
    """File suffix -> the kind `edgeser bench` measures it as."""
    return {s: f.bench for f in REGISTRY.values() for s in f.suffixes if f.bench}


@dataclass
class ExportJob:
    """What every exporter gets: the models, the shapes and the run's metadata, as plain arguments."""
    qexport: object  # the QAT student with Q/DQ ops (QuantStudent.to_export())
    fp32: object  # the pruned FP32 student
    samples: int  # the example input length (the clip length)
    opset: int
    static_batch: int | None  # the target's fixed batch, or None for dynamic shapes
    meta: dict  # artifact metadata (edgeser.export.artifact_meta.describe)
    classes: list[str]
    run_dir: Path
    out: Path  # RUN/artifacts
    sample_rate: int = 16000
    calib: object = None  # train clips (numpy) for post-training calibration (onnx-int8-ptq)

    def path(self, name: str) -> Path:
        return self.out / REGISTRY[name].file

    def samples_range(self) -> tuple[int, int] | None:
        """The input lengths a dynamic-shape artifact accepts: one analysis frame .. MAX_SECONDS (None when the
        target has static shapes)."""
        from edgeser.export.artifact_meta import MAX_SECONDS
        from edgeser.export.onnx_export import min_samples

        return None if self.static_batch else (min_samples(self.qexport), self.sample_rate * MAX_SECONDS)
