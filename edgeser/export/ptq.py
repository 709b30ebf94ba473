"""Post-training-quantization baseline: onnxruntime ``quantize_static`` on the fp32 ONNX, laid out like our QAT.

Our QAT export is symmetric int8 Q/DQ (zero point 0), per-channel weights on axis 0, per-tensor activations,
with Q/DQ on the DFT conv (input and output), every body Conv (input, weight, output), after every ReLU, on the
pooled features / head input and on the logits; power, mel matmul, log, peak clamp and scaling stay float.

PTQ mirrors that as closely as onnxruntime allows:

- op types: Conv (DFT + body), Relu, Gemm/MatMul (the head). With symmetric activations onnxruntime keeps each
  Relu and puts Q/DQ on its output, exactly like QAT's post-ReLU quantiser; ReduceMean (the time pooling) is
  not quantized by onnxruntime, but the head quantizes its input, which is QAT's pooled-feature quantiser.
- excluded: the front-end float island, i.e. every node reachable from the DFT conv output before the first
  body Conv (Pow, the mel filterbank fed from Pow (a 1x1 Conv, or a MatMul in older graphs), Log, ReduceMax,
  Max, Sub, Mul, Add).
  Quantizing the mel MatMul or the log-domain arithmetic would put int8 on a power spectrum spanning many decades,
  which QAT deliberately keeps float. ``quantize_frontend=False`` also leaves the DFT conv (and what feeds
  it) float, so only the body and head are int8.
- biases stay float (``QuantizeBias=False``): as in our QAT graph; int32 bias DQ would fail check_tensorrt_rules
  (int8 only), and onnxruntime still fuses DQ-Conv(float bias)-Q into QLinearConv.
- zero points: ``ActivationSymmetric``/``WeightSymmetric`` make all of them 0 (TensorRT-legal). Unlike QAT
  (amax / 127), symmetric MinMax activations use scale 2 * amax / 255; weights use [-127, 127] like QAT.
"""
from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgeser.fileio import atomic_path

OP_TYPES = ["Conv", "Relu", "Gemm", "MatMul"]
METHOD = "onnxruntime quantize_static MinMax, symmetric int8, per-channel weights"


class AudioReader(CalibrationDataReader):
    """Feeds (N, samples) float32 audio in batches; with a static batch dim every batch has exactly that size
    (the last one is filled up with clips from the start)."""

    def __init__(self, audio: np.ndarray, input_name: str, batch_size: int, static_batch: int | None = None):
        self.audio, self.name = np.ascontiguousarray(audio, dtype=np.float32), input_name
        self.bs = static_batch or batch_size
        self.static = static_batch is not None
        self.rewind()

    def rewind(self):
        self.i = 0

    def get_next(self):
        if self.i >= len(self.audio):
            return None
        idx = np.arange(self.i, self.i + self.bs)
        idx = idx % len(self.audio) if self.static else idx[idx < len(self.audio)]
        self.i += self.bs
        return {self.name: self.audio[idx]}


def frontend_nodes(graph: onnx.GraphProto, include_dft: bool = False) -> list[str]:
    """Names of the log-mel front-end's float island: every node downstream of the DFT conv (the Conv whose
    output is squared: Pow, or Mul(x, x)) up to, not including, the first body Conv (or a Gemm head).
    `include_dft` adds the DFT conv and everything upstream of it. [] when the model has no such front-end."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    squares = lambda n: n.op_type == "Pow" or (n.op_type == "Mul" and n.input[0] == n.input[1])  # noqa: E731
    dft = next((n for n in graph.node if n.op_type == "Conv" and any(map(squares, consumers[n.output[0]]))), None)
    if dft is None:
        return []
    island, todo = {}, list(consumers[dft.output[0]])
    # the mel filterbank is a 1x1 Conv fed by the squaring node: part of the island, not the body's first conv
    mel = lambda n: n.op_type == "Conv" and any(squares(producer[i]) for i in n.input if i in producer)  # noqa: E731
    while todo:
        n = todo.pop()
        if n.name not in island and (n.op_type not in ("Conv", "Gemm") or mel(n)):
            island[n.name] = n
            todo += [c for o in n.output for c in consumers[o]]
    if include_dft:
        todo = [dft]
        while todo:
            n = todo.pop()
            island[n.name] = n
            todo += [producer[i] for i in n.input if i in producer and producer[i].name not in island]
    return sorted(island)


def ptq_quantize(fp32_onnx, out_path, calib_audio: np.ndarray, *, input_name: str = "audio",
                 batch_size: int = 16, quantize_frontend: bool = True) -> dict:
    """Statically quantize `fp32_onnx` to a symmetric-int8 QDQ model at `out_path` (written atomically),
    calibrated with MinMax on `calib_audio` (N, samples). Returns a summary dict (see module docstring)."""
    calib_audio = np.asarray(calib_audio, dtype=np.float32)
    if calib_audio.ndim != 2 or not len(calib_audio):
        raise ValueError(f"calib_audio must be (N, samples) with N > 0, got {calib_audio.shape}")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="edgeser-ptq.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:  # ONNX shape inference + basic ORT optimisation (Conv+BN fusion...), as onnxruntime recommends;
            # symbolic shape inference (for transformers) chokes on the dynamo export's value_info
            quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
            model, preprocessed = onnx.load(str(pre)), True
        except Exception:  # optional step: quantize the model as exported
            model, preprocessed = onnx.load(str(fp32_onnx)), False
        for i, n in enumerate(model.graph.node):  # nodes_to_exclude works by name
            n.name = n.name or f"ptq_{n.op_type}_{i}"
        onnx.save(model, str(pre))
        inp = {i.name: i for i in model.graph.input}.get(input_name)
        if inp is None:
            raise ValueError(f"model has no input {input_name!r}")
        dims = inp.type.tensor_type.shape.dim
        static = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
        if len(dims) > 1 and dims[1].HasField("dim_value") and dims[1].dim_value != calib_audio.shape[1]:
            raise ValueError(f"model takes {dims[1].dim_value} samples, calib_audio has {calib_audio.shape[1]}")
        exclude = frontend_nodes(model.graph, include_dft=not quantize_frontend)
        reader = AudioReader(calib_audio, input_name, batch_size, static)
        with atomic_path(out_path) as tmp_out:  # temp file beside out_path, then os.replace
            quantize_static(
                str(pre), str(tmp_out), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=OP_TYPES,
                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    g = onnx.load(str(out_path)).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    quantized = collections.Counter(n.op_type for n in g.node if n.op_type in OP_TYPES
                                    and producer.get(n.input[0]) == "DequantizeLinear")
    return {"path": str(out_path), "calibration_clips": int(len(calib_audio)),
            "quantized_op_types": dict(sorted(quantized.items())), "float_frontend_nodes": len(exclude),
            "preprocessed": preprocessed, "method": METHOD}


def export_artifact(job, path, fp32_onnx) -> dict:
    """The registry's exporter (edgeser/formats.py): MinMax PTQ of the FP32 ONNX graph (`fp32_onnx`, the file it
    needs) on train clips."""
    from edgeser.export.artifact_meta import write_onnx_metadata
    from edgeser.quiet import quiet

    with quiet():
        info = ptq_quantize(fp32_onnx, path, job.calib)
    write_onnx_metadata(path, job.meta)
    return {"checks": {"ptq": info}}
