"""ONNX export (torch.onnx dynamo exporter), TorchScript trace and torch.export (.pt2), all written atomically."""
from __future__ import annotations

import hashlib
import io
import zipfile

import torch

from edgeser.fileio import atomic_path
from edgeser.quiet import quiet

INPUT, OUTPUT = "audio", "logits"


def _dynamic(static_batch: int | None):
    return None if static_batch else ({0: torch.export.Dim("batch", min=1, max=1024)},)


def example_batch(samples: int, static_batch: int | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(static_batch or 2, samples, generator=g) * 0.1  # batch >= 2 for a dynamic dim


def export_onnx(model, samples: int, path, *, opset: int = 18, static_batch: int | None = None) -> None:
    model = model.eval()
    x = example_batch(samples, static_batch)
    with quiet(), atomic_path(path) as tmp:
        torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=_dynamic(static_batch))


def reproducible_torchscript(data: bytes) -> bytes:
    """TorchScript's zip holds a random serialization_id and *.debug_pkl records with the Python call stack
    at trace time (absolute paths and line numbers of edgeser's own code). Drop the debug records (loading does
    not need them) and derive the id from the content, so the same model gives the same bytes anywhere."""
    src = zipfile.ZipFile(io.BytesIO(data))
    keep = [n for n in src.namelist() if not n.endswith(".debug_pkl")]
    h = hashlib.sha256()
    for n in keep:
        if not n.endswith("serialization_id"):
            h.update(n.encode() + src.read(n))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n in keep:
            body = str(int(h.hexdigest()[:32], 16)).encode() if n.endswith("serialization_id") else src.read(n)
            z.writestr(zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0)), body)
    return out.getvalue()


def export_torchscript(model, samples: int, path) -> None:
    x = example_batch(samples, None)
    with quiet(), torch.no_grad(), atomic_path(path) as tmp:
        traced = torch.jit.trace(model.eval(), (x,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        tmp.write_bytes(reproducible_torchscript(buf.getvalue()))


def export_pt2(model, samples: int, path, *, static_batch: int | None = None) -> None:
    x = example_batch(samples, static_batch)
    with quiet(), atomic_path(path) as tmp:
        ep = torch.export.export(model.eval(), (x,), dynamic_shapes=_dynamic(static_batch))
        with open(tmp, "wb") as f:
            torch.export.save(ep, f)
