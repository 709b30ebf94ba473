"""recipe `train`: the device and precision of the training loops (edgeser/device.py)."""
from __future__ import annotations

import pytest
import torch

from edgeser.device import CPU, resolve
from edgeser.errors import InputError
from edgeser.recipe import Training

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(CUDA, reason="checks the CPU-only machine's answers")
def test_without_cuda_auto_is_the_cpu_in_fp32_and_cuda_is_bad_input():
    assert resolve(Training()) == CPU and resolve(None) == CPU and resolve(Training(device="cpu")) == CPU
    with pytest.raises(InputError, match="train.device"):
        resolve(Training(device="cuda"))
    with pytest.raises(InputError, match="train.precision"):
        resolve(Training(device="cpu", precision="bf16"))
    with pytest.raises(ValueError):
        Training(device="tpu")


def _tiny_fit(compute):
    """A tiny model trained by train.fit on random clips; its weights afterwards."""
    from edgeser.data.dataset import Corpus, Split
    from edgeser.recipe import Distill
    from edgeser.train import fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 400, generator=g), torch.arange(24) % 2
    corpus = Corpus(["a", "b"], {"train": Split(x, y, ["s"] * 24), "val": Split(x[:8], y[:8], ["v"] * 8)})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(400, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    info = fit(model, corpus, Distill(epochs=2, batch_size=8, min_steps=0),
               lambda m, xb, yb, idx: torch.nn.functional.cross_entropy(m(xb), yb), seed=1, compute=compute)
    return model, info


def test_cpu_training_is_bit_identical_with_and_without_the_train_section():
    a, ia = _tiny_fit(None)
    b, ib = _tiny_fit(Training(device="cpu"))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert ia["history"] == ib["history"] and ib["compute"] == {"device": "cpu", "precision": "fp32"}


@pytest.mark.skipif(not CUDA, reason="no CUDA device here: the CUDA training path was not run on this machine")
def test_cuda_training_runs_in_mixed_precision_and_returns_the_model_to_the_cpu():
    model, info = _tiny_fit(Training(device="cuda"))
    assert info["compute"]["device"].startswith("cuda") and info["compute"]["precision"] in ("bf16", "fp16")
    assert all(p.device.type == "cpu" for p in model.parameters())
