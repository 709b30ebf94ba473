"""ONNX export (torch.onnx dynamo exporter), TorchScript trace and torch.export (.pt2), all written atomically."""
from __future__ import annotations

import hashlib
import io
import re
import zipfile

import torch

from edgeser.fileio import atomic_path
from edgeser.quiet import quiet

INPUT, OUTPUT = "audio", "logits"


def min_samples(model) -> int:
    """The shortest input a student graph takes: one analysis frame (its DFT kernel)."""
    return int(model.frontend.kernel_samples)


def _dynamic(static_batch: int | None, model=None):
    """Static targets (QNN HTP) get a fixed batch and length. Otherwise any batch and any length from one
    analysis frame up to MAX_SECONDS (the runtime then takes 1 s, 6 s or 30 s clips as they come)."""
    from edgeser.export.artifact_meta import MAX_SECONDS

    if static_batch:
        return None
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if model is not None:
        dims[1] = torch.export.Dim("samples", min=min_samples(model), max=16000 * MAX_SECONDS)
    return (dims,)


def size_oblivious():
    """torch.export treats a dynamic size of 1 as special and adds guards "frames != 1" after every strided
    conv; reasoning size-obliviously drops them, so one analysis frame is a valid input."""
    import torch.fx.experimental._config as fx_config

    return fx_config.patch(backed_size_oblivious=True)


def int32_dft(model) -> bool:
    """Whether `model` (a student, or a graph holding one's front-end) has the INT8 DFT with int32 sums
    (QuantFrontend.int32_output), which its ONNX file gets as MatMulInteger (export/int32_dft.py)."""
    fe = getattr(model, "frontend", None)
    fe = getattr(fe, "frontend", fe)  # the stream graphs hold the QuantFrontend one level down
    return bool(getattr(fe, "int32", False))


def example_batch(samples: int, static_batch: int | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(static_batch or 2, samples, generator=g) * 0.1  # batch >= 2 for a dynamic dim


def export_onnx(model, samples: int, path, *, opset: int = 18, static_batch: int | None = None,
                meta: dict | None = None) -> None:
    """meta: metadata_props (edgeser.export.artifact_meta.describe), written before the file appears."""
    from edgeser.export.artifact_meta import write_onnx_metadata

    model = model.eval()
    x = example_batch(samples, static_batch)
    dyn = _dynamic(static_batch, model if hasattr(model, "frontend") else None)
    with quiet(), size_oblivious(), atomic_path(path) as tmp:
        torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=dyn)
        if int32_dft(model):
            from edgeser.export.int32_dft import rewrite_file

            rewrite_file(tmp)
        if meta:
            write_onnx_metadata(tmp, meta)


_MANGLE = re.compile(rb"___torch_mangle_(\d+)")


def reproducible_torchscript(data: bytes) -> bytes:
    """TorchScript's zip holds a random serialization_id and *.debug_pkl records with the Python call stack
    at trace time (absolute paths and line numbers of edgeser's own code), and class names carry a per-process
    counter (`___torch_mangle_N`). Drop the debug records (loading does not need them), number the mangled
    classes from 0 in their original order (code is text and data.pkl names classes with text GLOBAL opcodes,
    so the rename is safe) and derive the id from the content: the same model gives the same bytes anywhere."""
    src = zipfile.ZipFile(io.BytesIO(data))
    keep = [n for n in src.namelist() if not n.endswith(".debug_pkl")]
    bodies = {n: src.read(n) for n in keep}
    found = set()
    for n, b in bodies.items():
        found.update(int(m) for m in _MANGLE.findall(n.encode() + b))
    order = {old: new for new, old in enumerate(sorted(found))}

    def renumber(b: bytes) -> bytes:
        return _MANGLE.sub(lambda m: b"___torch_mangle_%d" % order[int(m.group(1))], b)

    bodies = {renumber(n.encode()).decode(): renumber(b) for n, b in bodies.items()}
    h = hashlib.sha256()
    for n, b in bodies.items():
        if not n.endswith("serialization_id"):
            h.update(n.encode() + b)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n, b in bodies.items():
            body = str(int(h.hexdigest()[:32], 16)).encode() if n.endswith("serialization_id") else b
            z.writestr(zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0)), body)
    return out.getvalue()


def _trace_to_bytes(model, samples: int, meta: dict | None = None) -> bytes:
    import edgeser.quant.ops  # noqa: F401  (the int8 graphs' Q/DQ ops, in a fresh process)
    from edgeser.export.artifact_meta import extra_files

    x = example_batch(samples, None)
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), (x,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files=extra_files(meta) if meta else None)
    return reproducible_torchscript(buf.getvalue())


def export_torchscript(model, samples: int, path, meta: dict | None = None) -> None:
    """Traced in a fresh process: TorchScript names a class's second and later types in a process with a
    global counter, so a second trace in the same process would give other bytes for the same model."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        data = pool.submit(_trace_to_bytes, model, samples, meta).result()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_pt2(model, samples: int, path, *, static_batch: int | None = None, meta: dict | None = None) -> None:
    from edgeser.export.artifact_meta import extra_files

    x = example_batch(samples, static_batch)
    with quiet(), size_oblivious(), atomic_path(path) as tmp:
        ep = torch.export.export(model.eval(), (x,), dynamic_shapes=_dynamic(static_batch, model))
        with open(tmp, "wb") as f:
            torch.export.save(ep, f, extra_files=extra_files(meta) if meta else None)


# --- exporters of the registry (edgeser/formats.py): export(job, path) ---

def export_torchscript_artifact(job, path) -> None:
    export_torchscript(job.qexport, job.samples, path, job.meta)


def export_pt2_artifact(job, path) -> None:
    export_pt2(job.qexport, job.samples, path, static_batch=job.static_batch, meta=job.meta)


def export_fp32_artifact(job, path) -> None:
    export_onnx(job.fp32, job.samples, path, opset=job.opset, static_batch=job.static_batch, meta=job.meta)


def export_int8_artifact(job, path) -> None:
    export_onnx(job.qexport, job.samples, path, opset=job.opset, static_batch=job.static_batch, meta=job.meta)
