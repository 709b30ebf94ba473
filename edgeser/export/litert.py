"""The `tflite-int8` format: the QAT student as a LiteRT (TFLite) flatbuffer from litert-torch, int8 weights and
activations, run here on the LiteRT interpreter with its default XNNPACK delegate.

Quantisation: the QAT model's own Q/DQ ops and frozen scales are carried over (per-tensor activations with zero
point 0, or -128 after a ReLU with qat.relu_quant unsigned; per-channel int8 weights), not re-derived by a PT2E quantizer. litert-torch 0.10 takes
`quantized_decomposed` Q/DQ ops, but not the QAT graph's folded int8 weight buffers (`stablehlo.uniform_dequantize`
wants a quantised type, got `tensor<200x1x801xi8>`), so `LiteRTGraph` feeds each weight as a float buffer
(int8 x scale, exact in float32) through a per-channel quantize/dequantize pair with the QAT scales: the form
`convert_pt2e(..., fold_quantize=False)` leaves, which the converter folds back into the same int8 weights.
`QuantConfig(pt2e_quantizer=...)` is passed only because it is what switches the converter's Q/DQ handling to
STATIC (litert_torch/_convert/litert_converter.py); the quantizer itself never annotates or calibrates anything.
Measured on a tiny student (4 classes, 16-channel body; 72 clips at 1 s and 72 at 2 s, a third of them 40 dB
quieter): max |dlogit| 8.6e-5 against the PyTorch QAT model, 0.09 of one int8 step of the head input (LiteRT's
fixed-point requantisation rounds a rare tie the other way), 100 % agreement; onnxruntime's int8 kernels are
5.2-6.2 steps from the same QAT model. A PT2E quantizer would instead recalibrate every activation scale on
other clips (and its "symmetric" configs still give activations non-zero zero points).

What runs in int8 and what in float (checks `work_ops`): the DFT conv, the body convs, their ReLUs and the time
mean are int8; the peak level, mel matmul, log and normalisation are float, as in every INT8 artifact; so is the
head: the QAT model has no output quantiser (int8 logits tie), so its FULLY_CONNECTED sums the int8-grid inputs
and weights in float. The model's input and output are float32 (the tensors' own quantisation, recorded in
`io`, is none): the graph divides each clip by its own peak before the first quantiser, so a clip 40 dB quieter
reaches the int8 DFT through the same 255 steps as a loud one, which an int8 input with one fixed scale could
not do. The runner still quantises and dequantises with a tensor's own scale and zero point if a file has
int8 input or output.

Two rewrites besides the weights, both exact (`LiteRTGraph`):
- a strided DFT conv with 1 input channel becomes a DEPTHWISE_CONV_2D with a channel multiplier of 200, 2.6 ms
  a clip here on XNNPACK (801 taps, stride 400, 16000 samples, 1 thread; 5.1 ms at 32000); as a conv over
  400-sample blocks it is a CONV_2D, 0.30 ms (0.53 ms): the same int8 weights and scales, the same int32 sums.
  The blocked front-end's DFT (400 taps, stride 400) is therefore a 1x1 conv over the blocks (B, 400, blocks);
- a fixed length and batch 1: with a dynamic length litert-torch's JAX lowering of the peak (`amax`) fails
  ("zero-size array to reduction operation max"; its `mean` lowering, litert_torch/backend/lowerings/_basic.py,
  would divide by a count fixed at conversion), and a static graph's RESHAPEs fix the length (resized, XNNPACK
  "failed to reshape runtime"). So the file takes one
  window of the clip length; `Runner` slides it over longer input and tiles shorter input, as for QNN HTP,
  and the metadata's input spec says so.

XNNPACK takes the graph in 5 partitions: its delegate runs an int8 RELU only fused into the conv before it,
and the QAT model quantises the conv output and the ReLU output with two scales, so the 4 ReLUs run on LiteRT's
builtin int8 kernel in between (fusing them would drop a rounding step of the QAT model; a fused, whole-graph
variant was no faster here: 0.63 ms against 0.66 ms at 32000 samples).

Metadata (classes, input spec, recipe hash, the I/O quantisation) is in the flatbuffer's `metadata` table, one
named buffer per key (`edgeser_<key>`, UTF-8), added with the schema's object API shipped in ai_edge_litert
(ai_edge_litert/tools/flatbuffer_utils.py). Repacking writes every buffer 16-byte aligned, as the schema asks
(`force_align: 16`) and a microcontroller reading weights in place needs (the converter's own file had buffers
at 4- and 8-byte offsets).

TFLite Micro: `tflm_check` compares the graph's builtin ops with the ops TFLM's MicroMutableOpResolver can
register (an op-level check: kernel dtype support and arena size are the device build's).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeser.export.delegable_graph import dequantised
from edgeser.fileio import atomic_path

META_PREFIX = "edgeser_"
INPUT, OUTPUT = "audio", "logits"  # the signature's names, as in the ONNX graphs
WORK_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")  # where the MACs are

# The builtin ops TFLite Micro's op resolver can register: every BuiltinOperator_* that an Add*() method of
# tensorflow/lite/micro/micro_mutable_op_resolver.h registers (github.com/tensorflow/tflite-micro, commit
# 90b983c2b3f1480642e040bbd2ddb37b998f3424, 2026-08-20; the all_ops_resolver of older releases is gone).
TFLM_BUILTINS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND BROADCAST_ARGS
BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV
DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED
GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG
LOGICAL_AND LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG
NOT_EQUAL PACK PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_ALL REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE
RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND
SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE
TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE
""".split())
TFLM_SOURCE = ("tensorflow/tflite-micro tensorflow/lite/micro/micro_mutable_op_resolver.h "
               "@ 90b983c2b3f1480642e040bbd2ddb37b998f3424")

USAGE = '''```python
import json, numpy as np
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert import schema_py_generated as fb
raw = open("{path}", "rb").read()
m = fb.Model.GetRootAs(raw, 0)                      # metadata: named buffers edgeser_<key>
meta = {{m.Metadata(i).Name().decode(): m.Buffers(m.Metadata(i).Buffer()).DataAsNumpy().tobytes().decode()
        for i in range(m.MetadataLength()) if m.Metadata(i).Name().startswith(b"edgeser_")}}
classes = json.loads(meta["edgeser_classes"])
it = Interpreter(model_path="{path}", num_threads=1)  # XNNPACK by default
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
audio = np.zeros(inp["shape"], np.float32)  # (1, window): mono PCM in [-1, 1] at {sr} Hz
it.set_tensor(inp["index"], audio)           # longer clips: slide the window at half its length, average
it.invoke()
print(classes[int(it.get_tensor(out["index"])[0].argmax())])
```
The run's other artifacts take {length}; this file takes one window of the clip length, batch 1 (its spec:
`meta["edgeser_input"]`; input and output are float32, their quantisation in `meta["edgeser_tflite_io"]`).'''


def available() -> tuple[bool, str]:
    try:
        from edgeser.quiet import quiet

        with quiet():
            import litert_torch  # noqa: F401  (the converter)
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401  (the runtime)
    except Exception as e:  # ImportError, or a broken install
        return False, (f"litert-torch / ai-edge-litert are not installed (pip install 'edgeser[litert]'): "
                       f"{type(e).__name__}: {e}")
    return True, ""


# --- the export graph ---

def _qdq_weight(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """A float weight through the QAT model's own per-channel int8 grid (the un-folded PT2E form)."""
    from edgeser.quant.ops import QD

    q = QD.quantize_per_channel(w, scale, zp, 0, -127, 127, torch.int8)
    return QD.dequantize_per_channel(q, scale, zp, 0, -127, 127, torch.int8)


class LiteRTGraph(nn.Module):
    """`q`: QuantStudent.to_export(). The same maths, Q/DQ ops and scales, op for op, for a fixed `samples`,
    with every weight as a float buffer through its per-channel Q/DQ (litert-torch rejects folded int8 weights).
    The DFT reads QuantFrontend's blocks, each levelled by its own peak (dft_input), as (B, hop, blocks): a 1x1
    conv, a CONV_2D (a GEMM), whose partial sums QuantFrontend.combine adds into frames.
    Export-only: the model's own source is untouched."""

    def __init__(self, q, samples: int):
        super().__init__()
        self.q, self.samples = q, int(samples)
        fe = q.frontend
        if fe.n_frames(self.samples) < 1:
            raise ValueError(f"{samples} samples is shorter than one analysis frame ({fe.kernel_samples})")
        self.register_buffer("dft_w", dequantised(fe.dft))
        for i, conv in enumerate(q.convs):
            self.register_buffer(f"conv{i}_w", dequantised(conv))
        self.register_buffer("head_w", dequantised(q.head))

    def spectrum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, samples) peak-levelled waveform -> (B, 2F, frames) INT8 DFT outputs and the frames' peaks
        (QuantFrontend.spectrum)."""
        fe = self.q.frontend
        dft = fe.dft
        w = _qdq_weight(self.dft_w, dft.w_scale, dft.w_zp)

        def conv(m, f):  # blocked: a 1x1 conv over the blocks (B, hop, blocks), a CONV_2D (a GEMM)
            if not fe.blocked:
                return F.conv1d(f, w, dft.w_bias)
            cols = f.reshape(f.shape[0], -1, fe.hop).transpose(1, 2)
            return F.conv1d(cols, w.reshape(w.shape[0], fe.hop, 1), dft.w_bias)

        return fe.spectrum(x, conv, masked=True)

    def forward(self, audio: torch.Tensor) -> dict:
        from edgeser.models.frontend import peak_level

        q, fe = self.q, self.q.frontend
        spec, level = self.spectrum(audio / peak_level(audio))
        mel = fe.fe.normalise(fe.fe.log_power(spec) + 2.0 * torch.log(level))  # QuantFrontend.log_frames
        x = q.in_q(mel)  # QuantStudent.classify
        for i, (conv, cq, rq) in enumerate(zip(q.convs, q.conv_q, q.relu_q)):
            w = _qdq_weight(getattr(self, f"conv{i}_w"), conv.w_scale, conv.w_zp)
            x = rq(torch.relu(cq(F.conv1d(x, w, conv.w_bias, conv.stride, conv.padding))))
        head = q.head
        return {OUTPUT: F.linear(q.pool_q(x.mean(-1)), _qdq_weight(self.head_w, head.w_scale, head.w_zp),
                                 head.w_bias)}


@contextmanager
def _converter_quiet():
    """litert-torch's progress lines (a rich console of its own) and torch's chatter off, for one conversion."""
    from edgeser.quiet import quiet

    prev = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with quiet():
            yield
    finally:
        if prev is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = prev


def convert(qexport, samples: int) -> bytes:
    """The flatbuffer (no edgeser metadata yet) of LiteRTGraph(qexport, samples), batch 1."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    from edgeser.export.onnx_export import example_batch

    graph = LiteRTGraph(qexport, samples).eval()
    # static Q/DQ conversion; the quantizer is never run (see the module doc)
    static = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)))
    with _converter_quiet(), torch.no_grad():
        model = litert_torch.convert(graph, sample_kwargs={INPUT: example_batch(samples, 1)}, quant_config=static)
        return bytes(model.model_content())


# --- reading and writing the flatbuffer ---

def _schema():
    from ai_edge_litert import schema_py_generated as fb

    return fb


def _names(cls) -> dict:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def read_model(data: bytes):
    """The flatbuffer as the schema's object tree (ModelT), buffers resolved."""
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def _ops(model) -> list[tuple[str, object]]:
    """(builtin name, OperatorT) of subgraph 0's operators in order; custom ops as CUSTOM:<code>."""
    from ai_edge_litert.tools import flatbuffer_utils

    names = _names(_schema().BuiltinOperator)
    out = []
    for op in model.subgraphs[0].operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(flatbuffer_utils.get_builtin_code_from_operator_code(code), "?")
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.customCode or b'').decode()}"
        out.append((name, op))
    return out


def _tensor_info(model, index: int) -> dict:
    t = model.subgraphs[0].tensors[index]
    q = t.quantization
    scale = [float(s) for s in q.scale] if q is not None and q.scale is not None else []
    zp = [int(z) for z in q.zeroPoint] if q is not None and q.zeroPoint is not None else []
    return {"name": (t.name or b"").decode(), "dtype": _names(_schema().TensorType)[t.type].lower(),
            "shape": [int(d) for d in t.shape], "scale": scale[0] if len(scale) == 1 else (scale or 0.0),
            "zero_point": zp[0] if len(zp) == 1 else (zp or 0)}


def io_quantisation(model) -> dict:
    """The model input's and output's dtype, scale and zero point (scale 0: not quantised), and where the
    graph enters and leaves int8: every QUANTIZE's output and DEQUANTIZE's input, in graph order."""
    sg = model.subgraphs[0]
    bounds = []
    for name, op in _ops(model):
        if name in ("QUANTIZE", "DEQUANTIZE"):
            t = _tensor_info(model, op.outputs[0] if name == "QUANTIZE" else op.inputs[0])
            bounds.append({"op": name, **{k: t[k] for k in ("dtype", "shape", "scale", "zero_point")}})
    return {"input": _tensor_info(model, sg.inputs[0]), "output": _tensor_info(model, sg.outputs[0]),
            "int8_boundaries": bounds}


def work_ops(model) -> dict:
    """Per conv / fully connected op: its input dtype and MACs; the share of the MACs on int8 inputs."""
    sg = model.subgraphs[0]
    rows, total, int8 = [], 0, 0
    for name, op in _ops(model):
        if name not in WORK_OPS:
            continue
        x, w, y = (sg.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
        per_out = int(np.prod(w.shape[1:-1])) if name == "DEPTHWISE_CONV_2D" else int(np.prod(w.shape[1:]))
        if name == "BATCH_MATMUL":
            per_out = int(x.shape[-1])
        macs = int(np.prod(y.shape)) * per_out
        dtype = _names(_schema().TensorType)[x.type].lower()
        rows.append({"op": name, "dtype": dtype, "weight_dtype": _names(_schema().TensorType)[w.type].lower(),
                     "macs": macs})
        total += macs
        int8 += macs if dtype == "int8" else 0
    return {"int8_mac_share": round(int8 / total, 4) if total else None, "macs": total, "work_ops": rows}


def tflm_check(model) -> dict:
    """Can TFLite Micro (a microcontroller runtime) run this graph? Every builtin op in TFLM's op resolver
    (TFLM_BUILTINS), no custom ops, and static shapes (TFLM has no dynamic tensors)."""
    ops = sorted({name for name, _ in _ops(model)})
    unsupported = [o for o in ops if o not in TFLM_BUILTINS]
    static = all(t.shapeSignature is None or -1 not in list(t.shapeSignature)
                 for sg in model.subgraphs for t in sg.tensors)
    return {"tflm_compatible": not unsupported and static, "ops": ops, "unsupported": unsupported,
            "static_shapes": static, "op_counts": dict(Counter(name for name, _ in _ops(model))),
            "source": TFLM_SOURCE}


def _aligned_buffer(data: np.ndarray, align: int = 16):
    """A BufferT that packs its bytes `align`-aligned (the schema's force_align: 16; the Python object API's
    own Pack aligns to one byte, which a microcontroller reading int32 biases in place cannot take)."""
    fb = _schema()

    class Aligned(fb.BufferT):
        def Pack(self, builder):  # noqa: N802  (the flatbuffers API's name)
            vec = None
            if self.data is not None and len(self.data):
                raw = np.ascontiguousarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(raw), align)
                builder.head = builder.head - len(raw)
                builder.Bytes[builder.head : builder.head + len(raw)] = raw
                builder.vectorNumElems = len(raw)
                vec = builder.EndVector()
            fb.BufferStart(builder)
            if vec is not None:
                fb.BufferAddData(builder, vec)
            return fb.BufferEnd(builder)

    b = Aligned()
    b.data = data
    return b


def with_metadata(data: bytes, meta: dict) -> bytes:
    """The flatbuffer with `meta` (str -> str) in its metadata table as edgeser_<key> buffers (replacing any
    edgeser_ entries already there; the converter's own entries stay)."""
    from ai_edge_litert.tools import flatbuffer_utils

    fb = _schema()
    model = read_model(data)
    keep = []
    for md in model.metadata or []:
        name = md.name.decode() if isinstance(md.name, bytes) else str(md.name)
        if not name.startswith(META_PREFIX):
            keep.append(md)
    model.buffers = [_aligned_buffer(b.data) for b in model.buffers]
    for k, v in sorted(meta.items()):
        model.buffers.append(_aligned_buffer(np.frombuffer(str(v).encode(), np.uint8)))
        md = fb.MetadataT()
        md.name, md.buffer = META_PREFIX + k, len(model.buffers) - 1
        keep.append(md)
    model.metadata = keep
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path) -> dict:
    """The edgeser metadata a .tflite carries (str -> str), from its metadata table."""
    fb = _schema()
    raw = Path(path).read_bytes()
    model = fb.Model.GetRootAs(raw, 0)
    out = {}
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        name = md.Name().decode()
        if not name.startswith(META_PREFIX):
            continue
        buf = model.Buffers(md.Buffer())
        if buf.Offset() > 1:  # data stored after the flatbuffer (models over 2 GB)
            data = raw[buf.Offset() : buf.Offset() + buf.Size()]
        else:
            data = b"" if buf.DataIsNone() else buf.DataAsNumpy().tobytes()
        out[name[len(META_PREFIX):]] = data.decode()
    return out


def window_meta(meta: dict, samples: int, sample_rate: int) -> dict:
    """The run's metadata with the input spec and length of a fixed window of `samples`, batch 1 (worded as
    edgeser.export.artifact_meta.describe words a static artifact's)."""
    from edgeser.export.artifact_meta import describe

    spec = json.loads(meta.get("input", "{}"))
    frame = int(spec.get("frame_samples") or spec.get("min_samples") or samples)
    fixed = describe(classes=json.loads(meta.get("classes", "[]")), sample_rate=int(spec.get("sample_rate")
                     or meta.get("sample_rate") or sample_rate), min_samples=frame, max_samples=None,
                     fixed_samples=samples, batch=1, recipe_json={}, version="")
    return {**meta, "input": fixed["input"], "length": fixed["length"]}


# --- the runtime ---

def quantise(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input for a tensor as its own dtype: int8/uint8 with its scale and zero point, else as is."""
    dtype = np.dtype(detail["dtype"])
    scale, zp = detail["quantization"]
    if dtype.kind not in "iu" or not scale:
        return np.ascontiguousarray(x, dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dtype)


def dequantise(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zp = detail["quantization"]
    if np.dtype(detail["dtype"]).kind not in "iu" or not scale:
        return np.asarray(y, np.float32).copy()
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


def delegation(interpreter) -> dict:
    """How the interpreter's default delegate (XNNPACK) took the graph: its partitions, and the ops it left to
    LiteRT's builtin kernels. An op is inside a partition if it lies between that DELEGATE node's input and
    output tensors (the node list keeps the replaced ops; the execution plan is not exposed to Python)."""
    nodes = interpreter._get_ops_details()
    ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    producer = {int(t): i for i, n in enumerate(ops) for t in n["outputs"]}
    inside = set()
    for d in delegates:
        ins = {int(t) for t in d["inputs"]}
        stack = [producer[int(t)] for t in d["outputs"] if int(t) in producer]
        while stack:
            i = stack.pop()
            if i not in inside:
                inside.add(i)
                stack += [producer[int(t)] for t in ops[i]["inputs"] if int(t) not in ins and int(t) in producer]
    outside = Counter(n["op_name"] for i, n in enumerate(ops) if i not in inside)
    return {"partitions": len(delegates), "ops": len(ops), "ops_outside_delegate": dict(outside),
            "whole_graph": len(delegates) == 1 and not outside}


def interpreter(path_or_bytes, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    kw = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
    it = Interpreter(num_threads=int(threads), **kw)
    it.allocate_tensors()
    return it


def runner(path):
    """A runtimes.Runner on the LiteRT interpreter (XNNPACK, 1 thread unless set_threads asks for more, which
    recreates the interpreter). A fixed-shape file takes one clip of its window a call (Runner slides and tiles);
    a file with a dynamic length is resized when the length changes."""
    from edgeser.runtimes import Runner

    path = Path(path)
    state: dict = {}

    def build(threads: int):
        state["it"] = it = interpreter(path, threads)
        state["in"], state["out"] = it.get_input_details()[0], it.get_output_details()[0]
        state["shape"] = tuple(int(d) for d in state["in"]["shape"])

    build(1)

    def run(x):
        it, inp = state["it"], state["in"]
        if tuple(x.shape) != state["shape"]:  # only reached where the signature has a dynamic dimension
            it.resize_tensor_input(inp["index"], list(x.shape))
            it.allocate_tensors()
            state["in"], state["out"] = it.get_input_details()[0], it.get_output_details()[0]
            state["shape"] = tuple(x.shape)
        it.set_tensor(state["in"]["index"], quantise(x, state["in"]))
        it.invoke()
        return dequantise(it.get_tensor(state["out"]["index"]), state["out"])

    sig = [int(d) for d in state["in"]["shape_signature"]]
    meta = read_metadata(path)
    spec = json.loads(meta["input"]) if "input" in meta else {}
    r = Runner(run, static_batch=None if sig[0] == -1 else sig[0], set_threads=build,
               fixed_samples=None if sig[1] == -1 else sig[1],
               min_samples=int(spec.get("frame_samples") or spec.get("min_samples") or 1))
    r.delegation = lambda: delegation(state["it"])
    return r


# --- the registry's exporter ---

def _parity(data: bytes, qexport, clips: np.ndarray) -> dict:
    """The converted file against the PyTorch QAT graph on `clips` and the same clips 40 dB quieter."""
    it = interpreter(data)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = np.concatenate([clips, clips * 0.01]).astype(np.float32)
    got = []
    for row in x:
        it.set_tensor(inp["index"], quantise(row[None], inp))
        it.invoke()
        got.append(dequantise(it.get_tensor(out["index"]), out)[0])
    got = np.stack(got)
    with torch.no_grad():
        ref = qexport(torch.from_numpy(x)).numpy()
    return {"clips": len(x), "max_abs_logit_diff_vs_qat": float(np.abs(got - ref).max()),
            "agreement_vs_qat": float((got.argmax(1) == ref.argmax(1)).mean()), "xnnpack": delegation(it)}


def _check_clips(job, n: int = 8) -> np.ndarray:
    """Up to n train clips of the window's length (else the export example), for the parity check."""
    from edgeser.export.onnx_export import example_batch

    if job.calib is None or not len(job.calib):
        return example_batch(job.samples, 2).numpy()
    x = np.asarray(job.calib[:n], np.float32)
    if x.shape[1] < job.samples:
        x = np.tile(x, (1, -(-job.samples // x.shape[1])))
    return np.ascontiguousarray(x[:, : job.samples])


def export_artifact(job, path) -> dict:
    """The registry's exporter (edgeser/formats.py): the QAT student as a full-integer INT8 .tflite of one
    window of job.samples, with the run's metadata, its quantisation, how XNNPACK takes it and whether TFLite
    Micro could."""
    ok, why = available()
    if not ok:
        return {"status": "skipped", "reason": why, "path": None}
    data = convert(job.qexport, job.samples)
    model = read_model(data)
    io = io_quantisation(model)
    meta = window_meta(job.meta, job.samples, job.sample_rate)
    meta["tflite_io"] = json.dumps({k: {f: io[k][f] for f in ("dtype", "shape", "scale", "zero_point")}
                                    for k in ("input", "output")})
    data = with_metadata(data, meta)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    tflm = tflm_check(model)
    card = ["| tensor | dtype | scale | zero point |", "|---|---|---|---|",
            *(f"| model {k} | {io[k]['dtype']} | {io[k]['scale']} | {io[k]['zero_point']} |" for k in ("input", "output")),
            *(f"| {b['op'].lower()} {b['shape']} | {b['dtype']} | {b['scale']:.6g} | {b['zero_point']} |"
              for b in io["int8_boundaries"] if isinstance(b["scale"], float)), "",
            "TFLite Micro: " + ("every op is in its op resolver, all shapes static" if tflm["tflm_compatible"] else
                                f"not runnable as is (unsupported: {', '.join(tflm['unsupported']) or '-'}; "
                                f"static shapes: {tflm['static_shapes']})") + "."]
    return {"card": card, "reason": (f"fixed window of {job.samples} samples, batch 1 (litert-torch converts no dynamic "
                       "length of this graph): slid over longer input, shorter input tiled"),
            "checks": {"tflite": {
                "converter": "litert-torch", "runtime": "ai-edge-litert Interpreter, XNNPACK delegate",
                "quantisation": "the QAT model's Q/DQ scales and zero points (per-channel int8 weights), "
                                "carried over", "bytes": len(data), "fixed_samples": job.samples, "batch": 1,
                "io": io, **work_ops(model), "tflm": tflm,
                "parity": _parity(data, job.qexport, _check_clips(job))}}}
