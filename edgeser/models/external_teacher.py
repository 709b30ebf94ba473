"""External teachers: a fine-tuned model of any architecture, run only for its logits (recipe `teacher.onnx`,
`teacher.torchscript`, or `teacher.module` with `teacher.checkpoint`).

ExternalTeacher gives such a model the built-in teacher's contract: 16 kHz float audio (batch, samples) in, logits
(batch, corpus classes) out. It resamples the audio to the teacher's rate (scipy's polyphase resample_poly), runs
the model (onnxruntime on CPU, or torch), takes its logits (the first output of a tuple or list, the `logits` key of
a dict; for ONNX the output named `logits`, else the first), checks them (2-D, one column per teacher class) and
permutes the columns into the corpus's class order, matched by name.

Nothing is unpickled: ONNX is protobuf, TorchScript its own archive format (torch.jit.load), and a state_dict is
read with torch.load(weights_only=True). Every bad input is an InputError naming the recipe field and the file.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeser.errors import InputError
from edgeser.fileio import sha256
from edgeser.recipe import EXTERNAL_TEACHERS

CORPUS_RATE = 16000  # the audio every stage passes (data.sample_rate)
LABELS = dict(zip(EXTERNAL_TEACHERS, ("ONNX", "TorchScript", "module")))  # onnx, torchscript, module


def _why(e: BaseException) -> str:
    """An exception in one line: its type and the first non-empty line of its message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass(frozen=True)
class Source:
    """What the recipe names: the format, the model file (module: the state_dict), the factory, the rate."""
    format: str  # onnx | torchscript | module
    path: Path
    module: str | None
    sample_rate: int
    classes: list[str] | None  # teacher.classes (None: from the model's metadata)

    @classmethod
    def of(cls, cfg) -> Source:
        """From the recipe's teacher section (one of onnx, torchscript, module is set)."""
        fmt = cfg.external()
        path = cfg.checkpoint if fmt == "module" else getattr(cfg, fmt)
        return cls(fmt, Path(path).resolve(), cfg.module, cfg.sample_rate, cfg.classes)

    @classmethod
    def from_config(cls, c: dict) -> Source:
        """From the teacher stage's model file config."""
        return cls(c["format"], Path(c["path"]), c.get("module"), int(c["sample_rate"]), c.get("teacher_classes"))

    @property
    def field(self) -> str:
        """The recipe field that names the file."""
        return "teacher.checkpoint" if self.format == "module" else f"teacher.{self.format}"

    def label(self) -> str:
        """e.g. `ONNX: wav2vec2.onnx`, `module: pkg.mod:build`, for the report's teacher row."""
        return f"{LABELS[self.format]}: {self.module if self.format == 'module' else self.path.name}"

    def files(self) -> list[Path]:
        """The model file, and for ONNX the external-data files it references (large models)."""
        return [self.path, *(_onnx_data_files(self.path) if self.format == "onnx" else [])]

    def sha256(self) -> str:
        files = self.files()
        if len(files) == 1:
            return sha256(files[0])
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}:{sha256(f)}\n".encode())
        return h.hexdigest()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files())


def _onnx_proto(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _onnx_data_files(path: Path) -> list[Path]:
    """External-data files of an ONNX model (weights kept beside the .onnx), in the order first referenced."""
    import onnx

    try:
        proto = _onnx_proto(path)
    except Exception:  # not ONNX: opening it reports that (open_model)
        return []
    out: list[Path] = []
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            f = (path.parent / loc) if loc else None
            if f is not None and f.is_file() and f not in out:
                out.append(f)
    return out


def _onnx_params(path: Path) -> int:
    return int(sum(math.prod(init.dims) for init in _onnx_proto(path).graph.initializer))


@dataclass
class Opened:
    """A loaded external model: run(audio at the teacher's rate, numpy (batch, samples)) -> its raw output."""
    run: Callable[[np.ndarray], Any]
    net: torch.nn.Module | None  # the torch module (TorchScript, module), None for ONNX
    meta_classes: str | list | None  # the model's own `classes` metadata, as found
    params: int | None  # ONNX: elements of its initializers


def _open_onnx(src: Source) -> Opened:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = max(1, torch.get_num_threads()), 1, 3
    try:
        sess = ort.InferenceSession(str(src.path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # InvalidProtobuf for text, pickles, garbage
        raise InputError(f"teacher.onnx: {src.path} is not an ONNX model onnxruntime can load ({_why(e)})") from None
    inputs, outputs = sess.get_inputs(), [o.name for o in sess.get_outputs()]
    if len(inputs) != 1:
        raise InputError(f"teacher.onnx: {src.path} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "an external teacher takes one, float32 audio (batch, samples)")
    name, out = inputs[0].name, ["logits" if "logits" in outputs else outputs[0]]
    meta = sess.get_modelmeta().custom_metadata_map.get("classes")
    return Opened(lambda wav: sess.run(out, {name: wav})[0], None, meta, _onnx_params(src.path))


def _open_torchscript(src: Source) -> Opened:
    extra = {"classes": ""}
    try:  # TorchScript's archive, read by its own C++ loader: no Python object is unpickled
        net = torch.jit.load(str(src.path), map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise InputError(f"teacher.torchscript: {src.path} is not a TorchScript file (torch.jit.save) "
                         f"({_why(e)})") from None
    meta = extra.get("classes")
    meta = meta.decode() if isinstance(meta, bytes) else meta
    return _torch_opened(net.eval(), meta or _attr_classes(net))


def _open_module(src: Source) -> Opened:
    mod_name, _, attr = (src.module or "").partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise InputError(f"teacher.module: cannot import {mod_name!r} for {src.module!r} ({_why(e)}); the module "
                         "must be importable (installed, or on PYTHONPATH)") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise InputError(f"teacher.module: {mod_name} has no function {attr!r} ({src.module!r})")
    try:
        net = factory()
    except Exception as e:
        raise InputError(f"teacher.module: {src.module}() failed ({_why(e)})") from None
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"teacher.module: {src.module}() returned {type(net).__name__}, not a torch.nn.Module")
    try:  # weights only: a pickled object (anything but tensors and plain containers) is refused, not run
        state = torch.load(src.path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"teacher.checkpoint: cannot load {src.path} as a weights-only state_dict "
                         f"({_why(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"teacher.checkpoint: {src.path} is not a state_dict (a mapping of names to tensors) for "
                         f"{src.module}")
    try:
        net.load_state_dict(state)
    except Exception as e:
        raise InputError(f"teacher.checkpoint: {src.path} does not fit {src.module}() ({_why(e)})") from None
    return _torch_opened(net.eval(), _attr_classes(net))


def _attr_classes(net) -> list | None:
    c = getattr(net, "classes", None)
    return list(c) if isinstance(c, (list, tuple)) else None


def _torch_opened(net: torch.nn.Module, meta) -> Opened:
    def run(wav: np.ndarray):
        with torch.no_grad():
            return net(torch.from_numpy(wav))

    return Opened(run, net, meta, None)


OPENERS = dict(zip(EXTERNAL_TEACHERS, (_open_onnx, _open_torchscript, _open_module)))


def open_model(src: Source) -> Opened:
    return OPENERS[src.format](src)


def teacher_classes(src: Source, opened: Opened) -> list[str]:
    """The teacher's output classes in column order: teacher.classes, else the model's metadata `classes`."""
    if src.classes is not None:
        return list(src.classes)
    meta = opened.meta_classes
    if meta is None:
        where = dict(zip(EXTERNAL_TEACHERS, ("metadata_props", "extra file or attribute",
                                             "attribute of the module")))[src.format]
        raise InputError(f"teacher.classes: {src.path} names no classes (no `classes` {where}): give "
                         "teacher.classes, the teacher's class names in its output order")
    try:
        names = json.loads(meta) if isinstance(meta, str) else meta
    except ValueError:
        names = None
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)):
        raise InputError(f"teacher.classes: the `classes` metadata of {src.path} is not a JSON list of distinct "
                         f"class names: {str(meta)[:120]!r}; give teacher.classes")
    return names


def column_order(src: Source, names: list[str], classes: list[str]) -> list[int]:
    """For each corpus class, the teacher's column that holds it (the names must be the same set)."""
    extra, missing = [n for n in names if n not in classes], [c for c in classes if c not in names]
    if extra or missing:
        parts = ([f"not in the corpus: {', '.join(extra)}"] if extra else []) + (
            [f"missing from the teacher: {', '.join(missing)}"] if missing else [])
        raise InputError(f"teacher.classes: the classes of {src.path} ({', '.join(names)}) do not match the corpus "
                         f"classes ({', '.join(classes)}): {'; '.join(parts)} (map labels with data.label_map, pick "
                         "them with data.classes, or name the teacher's outputs with teacher.classes)")
    return [names.index(c) for c in classes]


def resample(wav: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz audio (batch, samples) at `rate` (polyphase, scipy.signal.resample_poly), float32."""
    if rate == CORPUS_RATE:
        return wav
    from scipy.signal import resample_poly

    g = math.gcd(rate, CORPUS_RATE)
    return resample_poly(wav, rate // g, CORPUS_RATE // g, axis=-1).astype(np.float32)


def _logits(out, src: Source, batch: int, n_classes: int) -> torch.Tensor:
    if isinstance(out, dict):
        if "logits" not in out:
            raise InputError(f"{src.field}: {src.path} returns a dict without a `logits` key "
                             f"(keys: {', '.join(map(str, out))})")
        out = out["logits"]
    elif isinstance(out, (tuple, list)):
        if not out:
            raise InputError(f"{src.field}: {src.path} returns an empty {type(out).__name__}")
        out = out[0]
    t = out.detach() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    if t.dim() != 2 or t.shape[0] != batch or t.shape[1] != n_classes or not t.is_floating_point():
        raise InputError(f"{src.field}: {src.path} returned {tuple(t.shape)} {t.dtype} for a batch of {batch} "
                         f"clips: expected float logits ({batch}, {n_classes}), one column per teacher class")
    return t.float()


class ExternalTeacher(torch.nn.Module):
    """An external model as a teacher: 16 kHz audio (batch, samples) -> logits (batch, corpus classes). Always in
    inference mode (its dropout and BN stay as exported). It has no block_features: no hint distillation."""

    def __init__(self, src: Source, opened: Opened, names: list[str], classes: list[str]):
        super().__init__()
        self.src, self._run, self.names, self.classes = src, opened.run, list(names), list(classes)
        self.order = column_order(src, self.names, self.classes)
        self.net = opened.net  # a torch model is a submodule: its parameters count, FlopCounter sees its ops
        # ONNX runs outside torch, so FlopCounterMode counts nothing: its parameters from the initializers, no MACs
        self.fixed_stats = None if opened.net is not None else {"params": opened.params, "macs": None}
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wav = resample(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), self.src.sample_rate)
        logits = _logits(self._run(wav), self.src, x.shape[0], len(self.names))
        return logits[:, self.order]

    def source(self) -> dict:
        """What the teacher stage's metrics and model file record about the external model."""
        return {"format": self.src.format, "path": str(self.src.path), "module": self.src.module,
                "sha256": self.src.sha256(), "sample_rate": self.src.sample_rate, "teacher_classes": self.names,
                "label": self.src.label()}

    def file_config(self) -> dict:
        """The config of stages/teacher/model.pt (an empty state_dict): load_teacher rebuilds this wrapper."""
        return {"kind": "external", **self.source(), "classes": self.classes, "n_classes": len(self.classes)}


def open_teacher(src: Source, classes: list[str]) -> ExternalTeacher:
    """The recipe's external teacher for a corpus with these classes (InputError on any bad input)."""
    opened = open_model(src)
    return ExternalTeacher(src, opened, teacher_classes(src, opened), classes)


def preflight(cfg) -> None:
    """What compress checks before it writes anything: the model loads and names its classes."""
    src = Source.of(cfg)
    teacher_classes(src, open_model(src))


def probe(teacher: ExternalTeacher, clips: torch.Tensor) -> None:
    """Run the teacher on two clips and on one shorter clip: any batch and length must give (batch, classes)
    finite logits (InputError naming the field and file otherwise)."""
    src = teacher.src
    for x in (clips[:2], clips[:1, : max(1, int(clips.shape[1] * 0.6))]):
        try:
            out = teacher(x)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{src.field}: {src.path} does not run on float32 audio {tuple(x.shape)} at "
                             f"{src.sample_rate} Hz ({_why(e)}); an external teacher takes (batch, samples) audio of "
                             "any batch and length") from None
        if not torch.isfinite(out).all():
            raise InputError(f"{src.field}: {src.path} returned NaN or infinite logits on audio {tuple(x.shape)}")


def load_external(cfg: dict) -> ExternalTeacher:
    """The wrapper described by a teacher model file's config; InputError when the file changed since."""
    src = Source.from_config(cfg)
    if not src.path.is_file():
        raise InputError(f"{src.field}: {src.path} (the external teacher of this run) is not there any more")
    now = src.sha256()
    if now != cfg["sha256"]:
        raise InputError(f"{src.field}: {src.path} changed since the teacher stage (sha256 {cfg['sha256'][:12]} "
                         f"then, {now[:12]} now): run the pipeline again (`compress --resume` reruns from the teacher)")
    return ExternalTeacher(src, open_model(src), cfg["teacher_classes"], cfg["classes"])
