"""SoundNet-8 pretrained-weight loaders: both formats agree, shapes/fields are validated, pickles are not trusted."""
from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from numpy.lib import format as npformat

from edgeser.models.soundnet import SoundNet8
from edgeser.models.soundnet_weights import (
    LAYERS, WeightsError, apply_soundnet_weights, load_soundnet_weights, read_port_state_dict, read_sound8_npy,
)


class _Py2Pickler(pickle._Pickler):
    """Writes str/bytes as Python 2 byte strings (BINSTRING), as the original release's pickle has them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        b = obj if isinstance(obj, bytes) else obj.encode("latin1")
        self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = _save_py2_str


def _save_object_npy(path, obj, py2=False):
    """Write `obj` as a 0-d object .npy with a protocol-2 pickle (py2: as Python 2 + numpy 1.x wrote sound8.npy)."""
    arr = np.empty((), dtype=object)
    arr[()] = obj
    buf = io.BytesIO()
    (_Py2Pickler if py2 else pickle.Pickler)(buf, protocol=2).dump(arr)
    payload = buf.getvalue()
    if py2:
        assert b"_codecs" not in payload
        payload = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    with open(path, "wb") as fp:
        npformat.write_array_header_1_0(fp, npformat.header_data_from_array_1_0(arr))
        fp.write(payload)
    return path


@pytest.fixture(scope="module")
def layers():
    """Random conv1..conv7 (+ conv8/conv8_2) in the original layout."""
    rng = np.random.default_rng(0)
    out = {}
    for i, (c_in, c_out, k) in enumerate(LAYERS, start=1):
        f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        out[f"conv{i}"] = {"weights": f32(k, 1, c_in, c_out) / np.float32(np.sqrt(c_in * k)),
                           "biases": f32(c_out) * 0.1,
                           "gamma": 1 + 0.1 * f32(c_out), "beta": 0.1 * f32(c_out), "mean": 0.1 * f32(c_out),
                           "var": rng.uniform(0.5, 2.0, c_out).astype(np.float32)}
    out["conv8"] = {"weights": np.zeros((8, 1, 1024, 10), np.float32), "biases": np.zeros(10, np.float32)}
    out["conv8_2"] = {"weights": np.zeros((8, 1, 1024, 4), np.float32), "biases": np.zeros(4, np.float32)}
    return out


def _port(layers, conv2d=True):
    sd = {}
    for i in range(1, 8):
        L = layers[f"conv{i}"]
        w = torch.from_numpy(L["weights"][:, 0].transpose(2, 1, 0).copy())
        sd[f"conv{i}.0.weight"] = w.unsqueeze(-1) if conv2d else w
        sd[f"conv{i}.0.bias"] = torch.from_numpy(L["biases"])
        for ours, theirs in [("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean"), ("running_var", "var")]:
            sd[f"conv{i}.1.{ours}"] = torch.from_numpy(L[theirs])
        sd[f"conv{i}.1.num_batches_tracked"] = torch.tensor(0)
    sd["conv8.0.weight"] = torch.zeros(10, 1024, 8, 1)
    return sd


@pytest.fixture(scope="module")
def files(layers, tmp_path_factory):
    d = tmp_path_factory.mktemp("soundnet")
    torch.save(_port(layers), d / "port.pth")
    torch.save(_port(layers, conv2d=False), d / "port1d.pt")
    return {"npy": _save_object_npy(d / "sound8.npy", layers), "npy_py2": _save_object_npy(d / "old.npy", layers, True),
            "port": d / "port.pth", "port1d": d / "port1d.pt"}


def test_formats_agree_exactly(files, layers):
    models, reports = {}, {}
    for kind, path in files.items():
        torch.manual_seed(0)
        models[kind] = SoundNet8(n_classes=4).eval()
        reports[kind] = apply_soundnet_weights(models[kind], path)
    assert reports["npy"] == {"loaded": [f"conv{i}" for i in range(1, 8)], "format": "sound8.npy"}
    assert reports["port"]["format"] == reports["port1d"]["format"] == "state_dict"
    ref = models["npy"].state_dict()
    w3 = torch.from_numpy(layers["conv3"]["weights"][:, 0].transpose(2, 1, 0).copy())
    assert torch.equal(ref["trunk.2.0.weight"], w3)
    assert torch.equal(ref["trunk.6.1.running_var"], torch.from_numpy(layers["conv7"]["var"]))
    for kind in ("npy_py2", "port", "port1d"):
        sd = models[kind].state_dict()
        assert all(torch.equal(ref[k], sd[k]) for k in ref if k.startswith("trunk.")), kind
    wav = torch.randn(2, 16384).clamp(-1, 1) * 0.3
    with torch.no_grad():
        outs = {k: m(wav) for k, m in models.items()}
    assert torch.isfinite(outs["npy"]).all()
    assert all(torch.equal(outs["npy"], o) for o in outs.values())
    keys = set(load_soundnet_weights(files["port"]))
    assert keys == {k for k in ref if k.startswith("trunk.")}  # trunk only, conv8 ignored, head untouched


def test_readers_return_native_layouts(files):
    assert read_sound8_npy(files["npy"])["conv1"]["weights"].shape == (64, 1, 1, 16)
    assert tuple(read_port_state_dict(files["port"])["conv7.0.weight"].shape) == (1024, 512, 4, 1)


def test_wrong_shape_names_layer(layers, tmp_path):
    bad = {k: dict(v) for k, v in layers.items()}
    bad["conv3"]["weights"] = np.ascontiguousarray(bad["conv3"]["weights"].transpose(0, 1, 3, 2))
    msg = r"bad\.npy: conv3 weights: expected \(16, 1, 32, 64\), got \(16, 1, 64, 32\)"
    with pytest.raises(WeightsError, match=msg):
        load_soundnet_weights(_save_object_npy(tmp_path / "bad.npy", bad))
    sd = _port(layers)
    sd["conv3.0.weight"] = sd["conv3.0.weight"].transpose(0, 1).contiguous()
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"bad\.pth: conv3 0\.weight: expected \(64, 32, 16, 1\)"):
        load_soundnet_weights(tmp_path / "bad.pth")


def test_missing_bn_stats_and_bad_values(layers, tmp_path):
    sd = _port(layers)
    del sd["conv5.1.running_var"]
    torch.save(sd, tmp_path / "nostats.pth")
    with pytest.raises(WeightsError, match=r"nostats\.pth: conv5: missing 1\.running_var"):
        load_soundnet_weights(tmp_path / "nostats.pth")
    bad = {k: dict(v) for k, v in layers.items()}
    del bad["conv2"]["mean"]
    with pytest.raises(WeightsError, match=r"conv2: missing mean"):
        load_soundnet_weights(_save_object_npy(tmp_path / "nomean.npy", bad))
    bad = {k: dict(v) for k, v in layers.items()}
    bad["conv4"]["var"] = -bad["conv4"]["var"]
    with pytest.raises(WeightsError, match=r"conv4 var: variances must be > 0"):
        load_soundnet_weights(_save_object_npy(tmp_path / "negvar.npy", bad))
    bad["conv4"] = dict(layers["conv4"], biases=np.full(128, np.nan, np.float32))
    with pytest.raises(WeightsError, match=r"conv4 biases: non-finite"):
        load_soundnet_weights(_save_object_npy(tmp_path / "nan.npy", bad))
    bad["conv4"] = layers["conv4"]
    del bad["conv6"]
    with pytest.raises(WeightsError, match=r"conv6: layer missing"):
        load_soundnet_weights(_save_object_npy(tmp_path / "nolayer.npy", bad))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_npy_is_refused_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    path = _save_object_npy(tmp_path / "sound8.npy", {"conv1": {"weights": _Evil(marker)}})
    with pytest.raises(WeightsError, match=r"sound8\.npy: refusing to unpickle (posix|os|nt)\.system"):
        load_soundnet_weights(path)
    with pytest.raises(WeightsError, match="refusing"):
        read_sound8_npy(path)
    assert not marker.exists()


class _Custom:
    pass


def test_checkpoint_with_custom_object_is_refused(tmp_path):
    torch.save({"conv1.0.weight": _Custom()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"evil\.pt: cannot load as a weights-only.*_Custom"):
        load_soundnet_weights(tmp_path / "evil.pt")


def test_width_mult_and_missing_file(files, tmp_path):
    with pytest.raises(WeightsError, match="width_mult"):
        apply_soundnet_weights(SoundNet8(n_classes=4, width_mult=0.5), files["npy"])
    with pytest.raises(WeightsError, match="no such file"):
        load_soundnet_weights(tmp_path / "absent.npy")
