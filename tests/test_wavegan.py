"""data.augment.generative: the class-conditional WaveGAN (edgeser/data/wavegan.py) and the minority-class
growth of the train split (edgeser/data/oversample.py), on tiny clips."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from edgeser.data import oversample, wavegan
from edgeser.data.dataset import Corpus, Split
from edgeser.data.rows import RowFile
from edgeser.recipe import Generative, RecipeError, validate

SR = 16000


def tones(n: int, freq: float, amp: float, samples: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    f = freq * (1 + 0.05 * torch.randn(n, 1, generator=gen))
    a = amp * (0.7 + 0.6 * torch.rand(n, 1, generator=gen))
    return a * torch.sin(2 * torch.pi * f * t + 2 * torch.pi * torch.rand(n, 1, generator=gen))


def db(x: torch.Tensor) -> torch.Tensor:
    return 20 * x.pow(2).mean(1).sqrt().log10()


def corpus(samples=512, counts=(12, 4, 2)) -> Corpus:
    """Train split with `counts` clips per class; val and test with 3 per class."""
    def split(per_class, seed):
        x = torch.cat([tones(n, 200 * (c + 1), 0.3, samples, seed + c) for c, n in enumerate(per_class)])
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
        return Split(x, y, [f"s{seed}"] * len(y))

    return Corpus(["a", "b", "c"], {"train": split(counts, 0), "val": split((3, 3, 3), 10),
                                    "test": split((3, 3, 3), 20)})


def cfg(**kw) -> Generative:
    return Generative(enabled=True, **({"steps": 2, "batch_size": 4, "max_seconds": 60} | kw))


@pytest.fixture(autouse=True)
def one_thread():
    """Steps of tiny convolutions: one thread is faster on a shared machine, and the outcome the same each run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_time_bound_stops_training_and_is_measured():
    x, y = tones(8, 300, 0.3, 512, 0), torch.zeros(8, dtype=torch.long)
    _, info = wavegan.train_wavegan(x, y, 1, cfg(steps=3), seed=0, width=4)
    assert info["steps"] == 3 and info["stopped_by"] == "steps" and not info["time_bound_hit"]
    start = time.perf_counter()
    _, info = wavegan.train_wavegan(x, y, 1, cfg(steps=100_000, max_seconds=1.0), seed=0, width=4)
    took = time.perf_counter() - start
    assert info["time_bound_hit"] and info["stopped_by"] == "time" and info["steps"] >= 2
    assert took <= 1.0 + 0.25 and info["seconds"] <= 1.0, (took, info)


class CountingRows(RowFile):
    """A row source on disk that records how many rows each read asks for."""

    def __init__(self, path, digest):
        super().__init__(path, digest)
        self.reads: list[int] = []

    def gather(self, ix):
        self.reads.append(len(ix))
        return super().gather(ix)


def test_the_train_split_grows_to_balance_and_val_test_stay(tmp_path):
    c = corpus()
    np.save(tmp_path / "train.npy", c.splits["train"].x.numpy())
    rows = CountingRows(tmp_path / "train.npy", "train-rows")
    c.splits["train"] = Split(rows, c.splits["train"].y, c.splits["train"].speakers)
    grown, info = oversample.grow_minority(c, cfg(steps=3), 512, seed=0, cache_dir=tmp_path / "gen")
    train = grown.splits["train"]
    assert rows.reads and max(rows.reads) <= 4  # batches only, never the whole split
    assert info["generated"] == {"b": 8, "c": 10} and info["after"] == {"a": 12, "b": 12, "c": 12}
    assert train.x.shape == (18 + 18, 512) and torch.bincount(train.y).tolist() == [12, 12, 12]
    assert train.speakers[18:] == ["generated"] * 18 and torch.equal(train.x[:18], rows[:])
    new = train.x[18:]
    assert new.dtype == torch.float32 and torch.isfinite(new).all() and new.abs().max() <= 1
    assert torch.equal(train.y[18:], torch.tensor([1] * 8 + [2] * 10))
    for name in ("val", "test"):
        assert grown.splits[name] is c.splits[name]
    assert info["steps"] == 3 and not info["time_bound_hit"] and info["train_seconds"] > 0
    # a ratio: each minority class up to half the majority count (6); one already there gets none
    _, info = oversample.grow_minority(corpus(counts=(12, 8, 2)), cfg(target=0.5), 512, 0, tmp_path / "half")
    assert info["generated"] == {"c": 4}


def test_off_or_balanced_leaves_the_corpus(tmp_path):
    c = corpus()
    assert oversample.grow_minority(c, Generative(), 512, 0, tmp_path) == (c, {"enabled": False})
    even = corpus(counts=(4, 4, 4))
    out, info = oversample.grow_minority(even, cfg(), 512, 0, tmp_path)
    assert out is even and info["generated"] == {} and not info["trained"] and list(tmp_path.iterdir()) == []


def test_the_cache_is_reused_and_keyed_by_data_and_settings(tmp_path, monkeypatch):
    first, info = oversample.grow_minority(corpus(), cfg(), 512, 0, tmp_path)
    assert info["trained"] and not info["cached"]

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(wavegan, "train_wavegan", no_training)
    again, info2 = oversample.grow_minority(corpus(), cfg(), 512, 0, tmp_path)
    assert info2["cached"] and not info2["trained"] and info2["steps"] == info["steps"]
    assert torch.equal(again.splits["train"].x, first.splits["train"].x)
    for changed in [(corpus(), cfg(lr=1e-3), 0), (corpus(), cfg(), 1), (corpus(counts=(12, 4, 3)), cfg(), 0)]:
        with pytest.raises(AssertionError, match="trained again"):
            oversample.grow_minority(changed[0], changed[1], 512, changed[2], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [info["cache_key"]]  # the failed rebuilds wrote nothing


def test_a_build_that_fails_while_writing_leaves_no_cache(tmp_path, monkeypatch):
    save = oversample.save_state

    def full_disk(dest, state):
        if dest.name == "clips.pt":  # after generator.pt was written
            raise OSError("disk full")
        save(dest, state)

    monkeypatch.setattr(oversample, "save_state", full_disk)
    with pytest.raises(OSError, match="disk full"):
        oversample.grow_minority(corpus(), cfg(), 512, 0, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(oversample, "save_state", save)
    _, info = oversample.grow_minority(corpus(), cfg(), 512, 0, tmp_path)
    assert info["trained"] and sorted(p.name for p in (tmp_path / info["cache_key"]).iterdir()) == sorted(
        oversample.FILES)


def test_the_class_conditions_the_clips():
    """A quiet low tone against a loud high one: after 60 steps each class's generated clips are nearer their
    own class's level (dB). (Their spectral centroids did not separate within a few hundred CPU steps.)"""
    x = torch.cat([tones(32, 300, 0.01, 512, 1), tones(32, 3000, 0.5, 512, 2)])
    y = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    g, info = wavegan.train_wavegan(x, y, 2, cfg(steps=60, batch_size=8, lr=2e-3, max_seconds=600), 0, width=8)
    assert info["steps"] == 60
    fake, fy = wavegan.synthesize(g, {0: 32, 1: 32}, 512, seed=1)
    real = [db(x[y == c]).mean() for c in (0, 1)]
    made = [db(fake[fy == c]).mean() for c in (0, 1)]
    for c in (0, 1):
        assert abs(made[c] - real[c]) < abs(made[c] - real[1 - c]), (real, made)


def test_synthesize_checks_its_arguments():
    g = wavegan.Generator(2, 512, width=4)
    with pytest.raises(ValueError, match="512-sample"):
        wavegan.synthesize(g, {0: 1}, 1000, 0)
    with pytest.raises(ValueError, match="outside"):
        wavegan.synthesize(g, {2: 1}, 512, 0)
    x, y = wavegan.synthesize(g, {}, 512, 0)
    assert x.shape == (0, 512) and y.shape == (0,)


@pytest.mark.parametrize("bad, field", [({"target": 1.5}, "target"), ({"target": 0}, "target"),
                                        ({"target": "more"}, "target"), ({"max_seconds": 0}, "max_seconds"),
                                        ({"steps": 0}, "steps"), ({"batch_size": True}, "batch_size"),
                                        ({"lr": -1}, "lr"), ({"epochs": 3}, "epochs")])
def test_bad_settings_are_rejected_by_the_schema(bad, field):
    with pytest.raises(RecipeError, match=f"data.augment.generative.{field}"):
        validate({"data": {"synth": {}, "augment": {"generative": bad}}})


def test_the_data_stage_records_it_and_resume_reads_the_cache(tmp_path, monkeypatch):
    from rich.console import Console

    from edgeser.pipeline import compress
    from tests.conftest import recipe_with

    recipe = validate(recipe_with(("data.synth", {"seed": 0, "clips_per_class": 6, "n_speakers": 6,
                                                  "clip_seconds": 0.25}), ("data.clip_seconds", 0.25),
                                  ("data.label_map", {"sad": "neutral"}),
                                  ("data.augment.generative", {"enabled": True, "steps": 2, "batch_size": 4})))
    run = tmp_path / "run"
    compress(recipe, run, console=Console(quiet=True), show_progress=False, until="data")
    m = json.loads((run / "stages/data/metrics.json").read_text())
    g = m["generative"]
    assert g["trained"] and g["steps"] == 2 and sum(g["generated"].values()) > 0
    assert g["after"]["happy"] == g["after"]["neutral"] == 2 * g["before"]["happy"]
    assert m["sizes"]["train"] == sum(g["after"].values()) and "generated" in m["speakers"]["train"]
    assert "generated" not in m["speakers"]["val"] + m["speakers"]["test"]
    monkeypatch.setattr(wavegan, "train_wavegan", lambda *a, **k: pytest.fail("trained again"))
    compress(recipe, run, console=Console(quiet=True), show_progress=False, until="data", resume=True)
    m2 = json.loads((run / "stages/data/metrics.json").read_text())
    assert m2["generative"]["cached"] and m2["sizes"] == m["sizes"]
