"""Run an exported artifact on this machine: PyTorch modules, TorchScript, torch.export, onnxruntime (whole
graphs and the stream folder), onnxruntime-qnn's HTP simulator, CoreML (macOS) and TensorRT (a CUDA GPU).

Each runner maps float32 audio (B, samples) to logits (B, classes) as numpy. Which runner a format uses is the
format registry's (edgeser/formats.py load_runner).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeser.timing import time_calls


class Runner:
    """fixed_samples: a static-length graph (QNN HTP). Longer input is covered by windows of that length at half
    a window's hop and the logits averaged (as `edgeser stream` does); shorter input is tiled to the window."""

    def __init__(self, fn, static_batch: int | None = None, set_threads=None, fixed_samples: int | None = None,
                 min_samples: int = 1):
        self.fn, self.static_batch, self.set_threads = fn, static_batch, set_threads
        self.fixed_samples, self.min_samples = fixed_samples, min_samples

    def __call__(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        x = check_audio(x, self.min_samples)
        if self.fixed_samples and x.shape[1] != self.fixed_samples:
            return self._slide(x, batch_size)
        bs = self.static_batch or batch_size
        outs = []
        for i in range(0, len(x), bs):
            chunk = x[i : i + bs]
            n = len(chunk)
            if self.static_batch and n < bs:  # pad the last batch to the fixed shape
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(self.fn(chunk))[:n])
        return np.concatenate(outs)

    def _slide(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        w, n = self.fixed_samples, x.shape[1]
        if n < w:
            return self(np.tile(x, (1, -(-w // n)))[:, :w], batch_size)
        starts = sorted(set(range(0, n - w + 1, w // 2)) | {n - w})
        windows = np.stack([x[:, s : s + w] for s in starts], axis=1)  # (B, k, w)
        out = self(windows.reshape(-1, w), batch_size)
        return out.reshape(len(x), len(starts), -1).mean(1)

    def run_each(self, clips: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Logits of clips of different lengths (whole utterances): equal lengths are batched together."""
        out: list = [None] * len(clips)
        for group in length_groups(clips):
            for a in range(0, len(group), 256):  # at most 256 utterances read at a time
                idx = group[a : a + 256]
                logits = self(np.stack([clips[i] for i in idx]).astype(np.float32), batch_size)
                for i, row in zip(idx, logits):
                    out[i] = row
        return np.stack(out)


def length_groups(clips) -> list[list[int]]:
    """Indices of the clips grouped by length, so equal lengths run as one batch."""
    by_len: dict[int, list[int]] = {}
    lengths = clips.lengths if hasattr(clips, "lengths") else [len(c) for c in clips]  # rows.Utterances: no reads
    for i, m in enumerate(lengths):
        by_len.setdefault(int(m), []).append(i)
    return list(by_len.values())


def check_audio(x, min_samples: int = 1) -> np.ndarray:
    """The input every artifact takes: float32 PCM (batch, samples), finite, at least one analysis frame long.
    Anything else is a ValueError that says what was wrong (instead of a runtime's shape error or NaN logits)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"audio: expected a numpy array (batch, samples), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"audio: expected rank 2 (batch, samples), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] < min_samples:
        raise ValueError(f"audio: {x.shape[1]} samples is shorter than one analysis frame ({min_samples} samples)")
    if x.dtype != np.float32:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"audio: expected float PCM in [-1, 1], got dtype {x.dtype}")
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("audio: NaN or Inf samples")
    return x


def torch_runner(module) -> Runner:
    def fn(x):
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return Runner(fn, set_threads=torch.set_num_threads)


def onnx_session(path: Path, threads: int = 1, optimize: bool = True, spinning: bool = True):
    """spinning=False: idle onnxruntime threads sleep instead of spinning, which a server needs when Python
    threads share the cores (measured: dynamic batching at concurrency 32, 1 thread, 4312 -> 5873 req/s)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _onnx_runner(sess, fn) -> Runner:
    """A Runner shaped by the graph's input (static batch and length) and its metadata (min_samples)."""
    import json

    inp = sess.get_inputs()[0]
    spec = json.loads(sess.get_modelmeta().custom_metadata_map.get("input", "{}"))
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    fixed = inp.shape[1] if isinstance(inp.shape[1], int) else None
    shortest = spec.get("frame_samples") or spec.get("min_samples") or 1  # a fixed window is tiled down to a frame
    return Runner(fn, static_batch=static, fixed_samples=fixed, min_samples=int(shortest))


def onnx_runner(path: Path, threads: int = 1, optimize: bool = True, spinning: bool = True) -> Runner:
    sess = onnx_session(path, threads, optimize, spinning)
    name = sess.get_inputs()[0].name
    return _onnx_runner(sess, lambda x: sess.run(None, {name: x})[0])


def stream_runner(folder: Path, threads: int = 1) -> Runner:
    """The streaming artifact run on whole clips: body(frontend(audio)), no cache (that is `edgeser stream`)."""
    from edgeser.export.stream_export import BODY, FRONTEND

    fe, body = onnx_session(Path(folder) / FRONTEND, threads), onnx_session(Path(folder) / BODY, threads)
    return _onnx_runner(fe, lambda x: body.run(None, {"frames": fe.run(None, {"audio": x})[0]})[0])


def qnn_available() -> tuple[bool, str]:
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError as e:
        return False, f"onnxruntime-qnn is not installed ({e}); `make install` tries it as an optional extra"
    return True, "onnxruntime-qnn HTP backend (x86 simulator of the Hexagon NPU)"


_QNN_REGISTERED = False


def qnn_runner(path: Path, soc_model: str = "60", htp_arch: str = "75") -> Runner:
    """The QDQ ONNX on the Qualcomm HTP backend with CPU fallback disabled: session creation fails unless
    the WHOLE graph runs on the NPU backend. On x86 the HTP library is Qualcomm's simulator. Float front-end
    ops run in fp16 there, as on the device."""
    import onnxruntime as ort
    import onnxruntime_qnn as oq

    global _QNN_REGISTERED
    if not _QNN_REGISTERED:
        ort.register_execution_provider_library("QNNExecutionProvider", oq.get_library_path())
        _QNN_REGISTERED = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    so = ort.SessionOptions()
    so.add_provider_for_devices(devices, {"backend_path": oq.get_qnn_htp_path(), "enable_htp_fp16_precision": "1",
                                          "soc_model": soc_model, "htp_arch": htp_arch})
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so)
    name = sess.get_inputs()[0].name
    return _onnx_runner(sess, lambda x: sess.run(None, {name: x})[0])


def coreml_runner(path: Path) -> Runner:
    """CoreML prediction (macOS only; on Linux the export marks the artifact skipped before this is reached)."""
    import json

    import coremltools as ct

    from edgeser.export.coreml import logits_from_prediction

    model = ct.models.MLModel(str(path))
    shape = model.get_spec().description.input[0].type.multiArrayType.shape
    classes = json.loads(model.user_defined_metadata["classes"])
    return Runner(lambda x: logits_from_prediction(model.predict({"audio": x}), "logits", classes),
                  static_batch=int(shape[0]))


def tensorrt_runner(path: Path) -> Runner:
    """A serialized TensorRT 10 engine run on the GPU (where `import tensorrt` works), torch CUDA buffers."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def fn(x):
        xt = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        context.set_input_shape(inp, tuple(xt.shape))
        y = torch.empty(tuple(context.get_tensor_shape(out)), device="cuda", dtype=torch.float32)
        context.set_tensor_address(inp, xt.data_ptr())
        context.set_tensor_address(out, y.data_ptr())
        context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        return y.cpu().numpy()

    return Runner(fn)


def _torch_artifact_runner(module, extra: dict) -> Runner:
    import json

    from edgeser.export.artifact_meta import EXTRA_FILE

    runner = torch_runner(module)
    if extra[EXTRA_FILE]:
        runner.min_samples = int(json.loads(json.loads(extra[EXTRA_FILE])["input"])["min_samples"])
    return runner


def torchscript_runner(path: Path) -> Runner:
    import edgeser.quant.ops  # noqa: F401  (Q/DQ ops used by the int8 graphs)
    from edgeser.export.artifact_meta import EXTRA_FILE

    extra = {EXTRA_FILE: ""}
    return _torch_artifact_runner(torch.jit.load(str(path), map_location="cpu", _extra_files=extra), extra)


def pt2_runner(path: Path) -> Runner:
    import edgeser.quant.ops  # noqa: F401
    from edgeser.export.artifact_meta import EXTRA_FILE

    extra = {EXTRA_FILE: ""}
    return _torch_artifact_runner(torch.export.load(str(path), extra_files=extra).module(), extra)


def latency_ms(runner: Runner, sample: np.ndarray, runs: int, warmup: int = 5) -> dict:
    """Single-clip latency with one thread: p50 and p95 over `runs` timed calls."""
    x = sample[None].astype(np.float32)
    prev = torch.get_num_threads()
    if runner.set_threads:
        runner.set_threads(1)
    try:
        times = time_calls(lambda: runner(x), runs, warmup)
    finally:
        if runner.set_threads:
            runner.set_threads(prev)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "runs": runs}
