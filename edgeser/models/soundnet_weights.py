"""Load SoundNet-8 pretrained conv1-conv7 weights into our `SoundNet8` trunk, safely.

Two formats (see shared/notes/soundnet-and-corpora.md):
- the original `sound8.npy`: a Python 2 pickled dict {convN: {weights (k,1,in,out), biases, gamma, beta, mean, var}},
  read with a restricted unpickler (only numpy array/dtype reconstruction is allowed, never arbitrary objects);
- a PyTorch port's state_dict: conv{1..7}.0.{weight,bias} (weight (out,in,k,1) or (out,in,k)) and
  conv{1..7}.1.{weight,bias,running_mean,running_var[,num_batches_tracked]}, read with torch.load(weights_only=True).
Every layer is checked (present, all fields, exact shapes, finite, var > 0); conv8/conv8_2 and the head are ignored.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npformat

# (in, out, kernel) of conv1..conv7
LAYERS = [(1, 16, 64), (16, 32, 32), (32, 64, 16), (64, 128, 8), (128, 256, 4), (256, 512, 4), (512, 1024, 4)]
NAMES = [f"conv{i}" for i in range(1, 8)]
# native field -> our BatchNorm1d / Conv1d key suffix
NPY_FIELDS = {"weights": "0.weight", "biases": "0.bias", "gamma": "1.weight", "beta": "1.bias",
              "mean": "1.running_mean", "var": "1.running_var"}
PORT_FIELDS = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]


class WeightsError(ValueError):
    """A SoundNet weight file is unreadable, unsafe, or does not match the SoundNet-8 layer table."""


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    # Python 3 pickles of bytes at protocol < 3 go through _codecs.encode(str, "latin1"); allow only that codec.
    if encoding.lower().replace("-", "") != "latin1" or not isinstance(obj, str):
        raise WeightsError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1", errors)


_MODULE_ALIAS = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric",
                 "__builtin__": "builtins"}
_ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
            ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("_codecs", "encode")}


def _resolve(module: str, name: str):
    if module == "_codecs":
        return _latin1_encode
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:  # numpy < 2 has numpy.core, not numpy._core
        return getattr(importlib.import_module(module.replace("numpy._core", "numpy.core")), name)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        key = (_MODULE_ALIAS.get(module, module), name)
        if key not in _ALLOWED:
            raise WeightsError(f"refusing to unpickle {module}.{name}")
        return _resolve(*key)


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as fp:
        return fp.read(6) == b"\x93NUMPY"


def read_sound8_npy(path) -> dict:
    """The original release's dict {layer: {field: ndarray}}, without unpickling anything but numpy arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            version = npformat.read_magic(fp)
            reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, _, dtype = reader(fp)
            if dtype != np.dtype(object) or shape != ():
                raise WeightsError(f"expected a 0-d object array (pickled dict), got dtype {dtype} shape {shape}")
            arr = _SafeUnpickler(fp, encoding="latin1").load()
    except WeightsError as e:
        raise WeightsError(f"{path.name}: {e}") from None
    except Exception as e:  # truncated/corrupt header or payload
        raise WeightsError(f"{path.name}: not a readable sound8.npy ({type(e).__name__}: {e})") from e
    obj = arr.item() if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == () else arr
    if not isinstance(obj, dict):
        raise WeightsError(f"{path.name}: expected a dict of layers, got {type(obj).__name__}")
    return obj


def read_port_state_dict(path) -> dict:
    """A PyTorch port's state_dict (tensors only: torch.load with weights_only=True)."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses custom classes with UnpicklingError; also corrupt files
        lines = [ln for ln in str(e).splitlines() if ln.strip()] or [""]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0])  # names the refused class
        raise WeightsError(f"{path.name}: cannot load as a weights-only PyTorch state_dict "
                           f"({type(e).__name__}: {why.strip()})") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path.name}: expected a state_dict, got {type(sd).__name__}")
    return sd


def _tensor(value, where: str, shape: tuple) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise WeightsError(f"{where}: expected a numeric array, got dtype {value.dtype}")
        value = torch.from_numpy(np.array(value, dtype=np.float32))
    if not isinstance(value, torch.Tensor) or value.dtype.is_complex or value.dtype == torch.bool:
        raise WeightsError(f"{where}: expected an array, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise WeightsError(f"{where}: expected {shape}, got {tuple(value.shape)}")
    value = value.detach().to(torch.float32).clone()
    if not torch.isfinite(value).all():
        raise WeightsError(f"{where}: non-finite values")
    return value


def _convert(raw: dict, fmt: str, fname: str) -> dict[str, torch.Tensor]:
    out = {}
    for i, (name, (c_in, c_out, k)) in enumerate(zip(NAMES, LAYERS)):
        if fmt == "sound8.npy":
            layer = raw.get(name)
            if not isinstance(layer, dict):
                raise WeightsError(f"{fname}: {name}: layer missing")
            get, fields = layer.get, NPY_FIELDS.items()
        else:
            get, fields = (lambda f, n=name: raw.get(f"{n}.{f}")), [(f, f) for f in PORT_FIELDS]
        for field, ours in fields:
            value, where = get(field), f"{fname}: {name} {field}"
            if value is None:
                raise WeightsError(f"{fname}: {name}: missing {field}")
            if field == "weights":  # (k, 1, in, out) -> Conv1d (out, in, k)
                t = _tensor(value, where, (k, 1, c_in, c_out))[:, 0].permute(2, 1, 0).contiguous()
            elif field == "0.weight":  # Conv2d (out, in, k, 1) or already Conv1d (out, in, k)
                is_2d = getattr(value, "ndim", 0) == 4
                t = _tensor(value, where, (c_out, c_in, k, 1) if is_2d else (c_out, c_in, k))
                t = t[..., 0] if is_2d else t
            else:
                t = _tensor(value, where, (c_out,))
            if ours == "1.running_var" and not (t > 0).all():
                raise WeightsError(f"{where}: variances must be > 0")
            out[f"trunk.{i}.{ours}"] = t
        nbt = raw.get(f"{name}.1.num_batches_tracked") if fmt == "state_dict" else None
        out[f"trunk.{i}.1.num_batches_tracked"] = (torch.as_tensor(nbt, dtype=torch.long).reshape(())
                                                  if nbt is not None else torch.tensor(0, dtype=torch.long))
    return out


def _load(path) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if _is_npy(path):
        return _convert(read_sound8_npy(path), "sound8.npy", path.name), "sound8.npy"
    return _convert(read_port_state_dict(path), "state_dict", path.name), "state_dict"


def load_soundnet_weights(path) -> dict[str, torch.Tensor]:
    """Our trunk keys (trunk.i.0.*, trunk.i.1.*) for conv1..conv7, from a sound8.npy or a port state_dict."""
    return _load(path)[0]


def apply_soundnet_weights(model, path) -> dict:
    """Load the pretrained trunk into a full-width SoundNet8; the head is left as is."""
    if getattr(model, "width_mult", None) != 1.0:
        raise WeightsError(f"{Path(path).name}: pretrained SoundNet weights need width_mult == 1.0, "
                           f"model has {getattr(model, 'width_mult', None)}")
    sd, fmt = _load(path)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{Path(path).name}: does not fit the model: {e}") from e
    if result.unexpected_keys:
        raise WeightsError(f"{Path(path).name}: model has no {result.unexpected_keys[:3]}")
    return {"loaded": list(NAMES), "format": fmt}
