"""The on-disk audio store: decoded once, keyed by content (a changed file is the only one decoded again), read
a batch at a time with the same numbers as the in-memory corpus; KD views on disk; batches from workers."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from edgeser.data.dataset import load_corpus
from edgeser.data.store import AudioStore, lossless_int16
from edgeser.errors import InputError
from edgeser.recipe import Data


def _corpus(root, lengths=(0.4, 0.5, 0.7)):
    """4 speakers x 2 labels of tones (PCM16), some longer and some shorter than the 0.5 s clip, and one
    file that is not audio."""
    rows = ["path,label,speaker"]
    for s in range(4):
        for j, lab in enumerate(("a", "b")):
            sec = lengths[(s + j) % len(lengths)]
            t = np.arange(int(16000 * sec)) / 16000
            x = 0.3 * np.sin(2 * np.pi * (150 + 60 * s + 200 * j) * t) * (1 + 0.1 * np.sin(7 * t))
            sf.write(root / f"s{s}_{lab}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
            rows.append(f"s{s}_{lab}.wav,{lab},spk{s}")
    (root / "junk.wav").write_text("not audio")
    rows.append("junk.wav,a,spk0")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv", Data(manifest=root / "m.csv", clip_seconds=0.5, val_speakers=0.25, test_speakers=0.25)


def test_stored_corpus_reads_the_same_numbers_as_in_memory(tmp_path):
    m, cfg = _corpus(tmp_path)
    mem = load_corpus(m, cfg)
    disk = load_corpus(m, cfg, store=AudioStore(tmp_path / "store", 16000))
    assert mem.classes == disk.classes and mem.skipped == disk.skipped == {"text file, not audio": 1}
    for name in mem.splits:
        a, b = mem.splits[name], disk.splits[name]
        assert not isinstance(b.x, torch.Tensor)  # read from the store, not held
        assert b.x.shape == a.x.shape and torch.equal(b.x[:], a.x)  # bit for bit (PCM16 stored as int16)
        assert torch.equal(b.x[torch.tensor([1, 0])], a.x[[1, 0]])
        assert torch.equal(a.y, b.y) and a.speakers == b.speakers
        assert (a.full is None) == (b.full is None)
        if a.full is not None:
            assert [len(w) for w in a.full] == list(b.full.lengths)
            assert all(np.array_equal(u, v) for u, v in zip(a.full, b.full))


def test_the_store_decodes_only_what_changed(tmp_path):
    m, cfg = _corpus(tmp_path)
    store = AudioStore(tmp_path / "store", 16000)
    first = load_corpus(m, cfg, store=store)
    assert store.decoded == 8  # every usable file once (the junk one is recorded as bad, not decoded again)
    again = AudioStore(tmp_path / "store", 16000)
    load_corpus(m, cfg, store=again)
    assert again.decoded == 0
    # one file's content changes (same name, same length): it alone is decoded again, and its key changes
    x, sr = sf.read(tmp_path / "s2_b.wav", dtype="float32")
    sf.write(tmp_path / "s2_b.wav", x * 0.5, sr, subtype="PCM_16")
    changed = AudioStore(tmp_path / "store", 16000)
    second = load_corpus(m, cfg, store=changed)
    assert changed.decoded == 1
    keys = lambda c: {k for s in c.splits.values() for k in (s.full if s.full is not None else s.x.utterances).keys}
    assert len(keys(first) - keys(second)) == 1 and len(keys(second) - keys(first)) == 1
    # another setting (the store's rate) is other objects
    assert AudioStore(tmp_path / "store", 8000).key(tmp_path / "s0_a.wav") != changed.key(tmp_path / "s0_a.wav")


def test_int16_only_when_lossless(tmp_path):
    pcm = (np.arange(-5, 5) / 32768).astype(np.float32)
    assert lossless_int16(pcm) is not None and lossless_int16(pcm + 1e-6) is None
    sf.write(tmp_path / "f.wav", np.linspace(-0.5, 0.5, 8000, dtype=np.float32) + 1e-6, 16000, subtype="FLOAT")
    store = AudioStore(tmp_path / "store", 16000)
    key, n = store.put(tmp_path / "f.wav")
    assert np.load(store.object_path(key)).dtype == np.float32 and n == 8000
    assert np.array_equal(store.read(key), sf.read(tmp_path / "f.wav", dtype="float32")[0])


def test_a_store_that_cannot_be_written_is_bad_input(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="data.store"):
        AudioStore(tmp_path / "file" / "store", 16000)


def test_kd_views_on_disk_equal_views_in_memory(tmp_path):
    from edgeser.kd import kd_views

    m, cfg = _corpus(tmp_path)
    store = AudioStore(tmp_path / "store", 16000)
    train = load_corpus(m, cfg, store=store).splits["train"]
    mem_train = load_corpus(m, cfg).splits["train"]
    aug = lambda seed: (lambda g: (lambda x: x + 0.01 * torch.randn(x.shape, generator=g)))(torch.Generator().manual_seed(seed))
    a = kd_views(mem_train, 2, aug(3), seed=5)
    b = kd_views(train, 2, aug(3), seed=5, store=store, key="k")
    assert isinstance(a.x, torch.Tensor) and not isinstance(b.x, torch.Tensor)
    assert b.x.shape == a.x.shape and torch.equal(b.x[:], a.x) and torch.equal(a.y, b.y)
    assert len(list((tmp_path / "store" / "views").glob("*.npy"))) == 1
    c = kd_views(train, 2, lambda x: 1 / 0, seed=5, store=store, key="k")  # made once: read back, not remade
    assert torch.equal(c.x[:], a.x)


def test_batches_from_workers_equal_batches_in_process(tmp_path):
    from edgeser.data.dataset import crop_starts
    from edgeser.data.loader import read_batches

    m, cfg = _corpus(tmp_path)
    train = load_corpus(m, cfg, store=AudioStore(tmp_path / "store", 16000)).splits["train"]
    assert train.full is not None  # some utterances are longer than the clip: random crops
    gen = torch.Generator().manual_seed(0)
    plan = [(idx, crop_starts(train.full.lengths, idx, train.x.shape[1], gen))
            for idx in (torch.tensor([0, 2]), torch.tensor([3, 1]))]
    plan.append((torch.tensor([1]), None))
    here = list(read_batches(train, plan, 0))
    there = list(read_batches(train, plan, 2))
    assert len(here) == 3 and all(torch.equal(a, b) for a, b in zip(here, there))
    assert torch.equal(here[2], train.x[torch.tensor([1])])


def test_compress_with_an_unwritable_store_exits_2_and_writes_nothing(tmp_path, tiny_recipe_path):
    from typer.testing import CliRunner

    from edgeser.cli import app

    (tmp_path / "file").write_text("x")
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["compress", "--recipe", str(tiny_recipe_path), "--out", str(run), "--no-progress",
                                   "--set", f"data.store={tmp_path / 'file' / 'store'}"])
    assert res.exit_code == 2 and "data.store" in res.output and "is a file" in res.output
    assert not run.exists()
