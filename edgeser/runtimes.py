"""Run an exported artifact on this machine: PyTorch, TorchScript, torch.export and onnxruntime.

Each runner maps float32 audio (B, samples) to logits (B, classes) as numpy.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


class Runner:
    def __init__(self, fn, static_batch: int | None = None, set_threads=None):
        self.fn, self.static_batch, self.set_threads = fn, static_batch, set_threads

    def __call__(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        bs = self.static_batch or batch_size
        outs = []
        for i in range(0, len(x), bs):
            chunk = x[i : i + bs]
            n = len(chunk)
            if self.static_batch and n < bs:  # pad the last batch to the fixed shape
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(self.fn(chunk))[:n])
        return np.concatenate(outs)


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


def onnx_runner(path: Path, threads: int = 1, optimize: bool = True, spinning: bool = True) -> Runner:
    sess = onnx_session(path, threads, optimize, spinning)
    inp = sess.get_inputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    return Runner(lambda x: sess.run(None, {inp.name: x})[0], static_batch=static)


def stream_runner(folder: Path, threads: int = 1) -> Runner:
    """The streaming artifact run on whole clips: body(frontend(audio)), no cache (that is `edgeser stream`)."""
    from edgeser.export.stream_export import BODY, FRONTEND

    fe, body = onnx_session(Path(folder) / FRONTEND, threads), onnx_session(Path(folder) / BODY, threads)
    return Runner(lambda x: body.run(None, {"frames": fe.run(None, {"audio": x})[0]})[0])


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
    inp = sess.get_inputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    return Runner(lambda x: sess.run(None, {inp.name: x})[0], static_batch=static)


def coreml_runner(path: Path) -> Runner:
    """CoreML prediction (macOS only; on Linux the export marks the artifact skipped before this is reached)."""
    import coremltools as ct

    model = ct.models.MLModel(str(path))
    shape = model.get_spec().description.input[0].type.multiArrayType.shape
    return Runner(lambda x: model.predict({"audio": x})["logits"], static_batch=int(shape[0]))


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


def load_runner(fmt: str, path: Path) -> Runner:
    if fmt == "qnn-htp":
        return qnn_runner(path)
    if fmt == "coreml":
        return coreml_runner(path)
    if fmt == "tensorrt":
        return tensorrt_runner(path)
    if fmt == "onnx-int8-stream":
        return stream_runner(path)
    if fmt.startswith("onnx"):
        return onnx_runner(path)
    import edgeser.quant.ops  # noqa: F401  (Q/DQ ops used by the int8 graphs)

    if fmt == "torchscript":
        return torch_runner(torch.jit.load(str(path), map_location="cpu"))
    if fmt == "pt2":
        return torch_runner(torch.export.load(str(path)).module())
    raise ValueError(f"no runtime on this machine for format {fmt!r}")


def time_calls(fn, runs: int, warmup: int = 5) -> list[float]:
    """Milliseconds of each of `runs` calls of fn(), after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


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
