"""Quantisation steps that the INT8 agreement tests derive their tolerances from (never a bare magic number).

The quantised student has no output quantiser: its head is an int8 x int8 GEMM on the pooled features, whose
quantiser (`pool_q`) puts every head input on a grid of `pool_q.scale`. One int8 step of the head input, in every
one of its channels at once, moves logit k by at most scale * sum_j |W_kj|; the largest over k is the *logit
step*: how far the logits move when the head input is off by one step everywhere. Errors upstream of the head
(every body quantiser rounding a little differently) reach the logits only through that input, so a tolerance of
a few logit steps means "the head input is off by a few int8 steps", whatever the logits' range.

For an ONNX graph (the PTQ model) the same quantity is read from the Q/DQ pair in front of the head's Gemm; when
the logits are themselves Q/DQ'd (onnxruntime quantises the Gemm output), their own scale is the other step.
"""
from __future__ import annotations

import numpy as np
import onnx

from edgeser.export.htp import onnx_const

# The float logits must span at least this many steps, else "within a few steps" is no test at all (an all-zero
# output would pass). The tiny seeded students span ~400 logit steps.
MIN_RANGE_STEPS = 100


def logit_step(q) -> float:
    """One int8 step of a QuantStudent's head input, as the most it can move any logit (see the module doc).
    Uses the float head weight (what the int8 weights approximate), so a broken weight quantiser cannot grow the
    tolerance it is checked against."""
    w = q.head.weight.detach().double()
    return float(q.pool_q.scale) * float(w.abs().sum(1).max())


def onnx_head_steps(path) -> dict:
    """The head of a QDQ ONNX classifier: `logit_step` (head input scale * max_k sum_j |W_kj|, W the dequantised
    int8 weights) and `output_scale` (the logits' own Q/DQ scale, None if the Gemm's output is float)."""
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    node = producer[g.output[0].name]
    out_scale = None
    if node.op_type == "DequantizeLinear":  # logits Q/DQ'd: DQ <- Q <- Gemm
        out_scale = float(onnx_const(g, node.input[1]))
        node = producer[producer[node.input[0]].input[0]]
    if node.op_type != "Gemm":
        raise ValueError(f"the logits come from {node.op_type}, not the head's Gemm")
    dq_in, dq_w = producer[node.input[0]], producer[node.input[1]]
    assert dq_in.op_type == dq_w.op_type == "DequantizeLinear"
    w = onnx_const(g, dq_w.input[0]).astype(np.float64) * onnx_const(g, dq_w.input[1]).reshape(-1, 1)
    if not next((a.i for a in node.attribute if a.name == "transB"), 0):
        w = w.T  # (classes, features)
    return {"logit_step": float(onnx_const(g, dq_in.input[1])) * float(np.abs(w).sum(1).max()),
            "output_scale": out_scale}


TINY_CLASSES = ["a", "b", "c", "d"]


def tiny_export_job(out, samples: int = 16000, calib=None, fine_gain: float | None = 4.0, relu_unsigned: bool = True):
    """(the QAT student, an ExportJob for it in `out`): the tiny calibrated 4-class student, seeded, that the
    runtime tests (OpenVINO, ExecuTorch, LiteRT) export through the registry. Its layout is the QAT stage's
    default for a recipe without TensorRT: the two-range INT8 DFT (qat.dft_fine_gain 4) and unsigned post-ReLU
    quantisers (qat.relu_quant auto)."""
    import json

    import torch

    from edgeser.formats import ExportJob
    from edgeser.models.student import Student
    from edgeser.quant.calibrate import calibrate
    from edgeser.quant.qstudent import QuantStudent

    torch.manual_seed(0)
    q = QuantStudent(Student(len(TINY_CLASSES), [16, 16, 16, 16]).eval(), relu_unsigned=relu_unsigned)
    if fine_gain:
        q.frontend.two_range(fine_gain)
    calibrate(q, torch.randn(16, samples) * 0.1, 2, 8)
    meta = {"classes": json.dumps(TINY_CLASSES), "input": json.dumps({"min_samples": 801})}
    return q, ExportJob(qexport=q.to_export(), fp32=None, samples=samples, opset=18, static_batch=None, meta=meta,
                        classes=TINY_CLASSES, run_dir=out, out=out, calib=calib)
