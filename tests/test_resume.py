"""Nothing lost: determinism, kill -9 and resume, stage cache keys, epoch checkpoints, a full disk mid-write."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from edgeser.fileio import load_state, save_state, sha256
from edgeser.pipeline import compress
from edgeser.recipe import load_recipe

EDGESER = str(Path(sys.executable).parent / "edgeser")


def hashes(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    out = {name: sha256(run / a["path"]) for name, a in manifest["artifacts"].items()}
    for stage in ("teacher", "distill", "prune", "qat"):
        out[stage] = sha256(run / "stages" / stage / "model.pt")
    return out


def accuracy(run: Path) -> dict:
    """Every metric that does not measure time."""
    out = {}
    for stage in ("teacher", "distill", "prune", "qat"):
        m = json.loads((run / "stages" / stage / "metrics.json").read_text())
        out[stage] = {"test": m["test"], "val": m.get("val")}
    report = json.loads((run / "report.json").read_text())
    out["artifacts"] = {a["name"]: (a.get("ua"), a.get("agreement"), a.get("max_abs_logit_diff"))
                        for a in report["artifacts"] if a.get("status") == "verified"}
    # every verified artifact has all three figures (a misspelt key would compare None with None)
    assert out["artifacts"] and all(None not in v for v in out["artifacts"].values()), out["artifacts"]
    return out


# `edgeser` with every training loop's epochs logged: fit wrapped before the stages import it (the __main__
# guard: a stage that starts a process by spawn imports this file again, and must not run compress again)
EPOCH_LOGGING_CLI = """
import json
import os


def logging_fit(real_fit, log):
    def fit(*args, on_epoch=None, desc="train", **kw):
        def logged(epoch):
            with open(log, "a") as f:
                f.write(json.dumps([desc, epoch]) + "\\n")
            if on_epoch is not None:
                on_epoch(epoch)
        return real_fit(*args, on_epoch=logged, desc=desc, **kw)
    return fit


if __name__ == "__main__":
    import edgeser.train as train

    train.fit = logging_fit(train.fit, os.environ["EPOCH_LOG"])
    from edgeser.cli import main

    main()
"""


def run_quiet(recipe_path, out: Path, **kw):
    return compress(load_recipe(recipe_path), out, console=Console(quiet=True), show_progress=False, **kw)


def test_same_recipe_twice_is_byte_identical(tiny_run, tiny_recipe_path, tmp_path):
    first, _ = tiny_run
    second = tmp_path / "again"
    run_quiet(tiny_recipe_path, second)
    assert hashes(second) == hashes(first)  # every ONNX, TorchScript, pt2, CoreML file and stage model
    assert accuracy(second) == accuracy(first)


def test_kill_9_in_distill_then_resume_is_byte_identical(tiny_run, tiny_recipe_path, tmp_path):
    ref, _ = tiny_run
    run = tmp_path / "killed"
    p = subprocess.Popen([EDGESER, "compress", "--recipe", str(tiny_recipe_path), "--out", str(run), "--no-progress"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while p.poll() is None and not any((run / "stages/distill").glob("ckpt-*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before distillation checkpointed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "stages/distill/done.json").exists() and not (run / "manifest.json").exists()
    saved = load_state(run / "stages/distill/ckpt-distill.pt")["epoch"]  # epochs 1..saved are finished
    assert saved >= 1
    cli, log = tmp_path / "cli.py", tmp_path / "epochs.jsonl"
    cli.write_text(EPOCH_LOGGING_CLI)
    r = subprocess.run([sys.executable, str(cli), "compress", "--recipe", str(tiny_recipe_path), "--out", str(run),
                        "--no-progress", "--resume"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "EPOCH_LOG": str(log)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "teacher: finished before with the same inputs" in r.stdout.replace("\n", " ")
    started = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    total = json.loads((run / "stages/distill/metrics.json").read_text())["train"]["epochs"]
    # only the epochs after the checkpoint ran (a distillation from scratch gives the same bytes, so the hashes
    # alone cannot tell), and the teacher, finished before the kill, trained no epoch at all
    assert [e for d, e in started if d == "distill"] == list(range(saved + 1, total + 1))
    assert not [e for d, e in started if d == "teacher"]
    assert [e for d, e in started if d == "qat"][:1] == [1]  # the later stages ran whole (and were logged)
    assert hashes(run) == hashes(ref)


def test_resume_reruns_only_what_changed(tiny_run, tiny_recipe_path, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    before = {s: (run / "stages" / s / "done.json").stat().st_mtime_ns for s in ("teacher", "distill", "qat")}
    t = time.perf_counter()
    run_quiet(tiny_recipe_path, run, resume=True)
    assert hashes(run) == hashes(tiny_run[0])
    assert all((run / "stages" / s / "done.json").stat().st_mtime_ns == m for s, m in before.items())
    assert time.perf_counter() - t < 40  # data and report only (a full run takes longer)
    changed = load_recipe(tiny_recipe_path, ["qat.lr=0.001"])
    compress(changed, run, console=Console(quiet=True), show_progress=False, resume=True)
    assert (run / "stages/distill/done.json").stat().st_mtime_ns == before["distill"]  # upstream kept
    assert (run / "stages/qat/done.json").stat().st_mtime_ns != before["qat"]  # the changed stage ran again
    # a tampered output invalidates its stage
    (run / "stages/prune/model.pt").write_bytes(b"corrupt")
    compress(changed, run, console=Console(quiet=True), show_progress=False, resume=True)
    assert sha256(run / "stages/prune/model.pt") == sha256(tiny_run[0] / "stages/prune/model.pt")


def _tiny_fit(checkpoint, stop_after=None, seed=0, ran=None):
    """A 4-epoch fit of a tiny MLP; `ran` collects ("epoch", n) for each epoch started and ("batch", n) for each
    loss computed in epoch n."""
    from edgeser.data.dataset import Corpus, Split
    from edgeser.recipe import Train
    from edgeser.resume import seed_everything
    from edgeser.train import fit

    seed_everything(seed)
    g = torch.Generator().manual_seed(1)
    split = lambda n: Split(torch.randn(n, 64, generator=g), torch.randint(0, 3, (n,), generator=g), ["s"] * n)  # noqa: E731
    corpus = Corpus(classes=["a", "b", "c"], splits={"train": split(48), "val": split(16), "test": split(8)})
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    aug_gen = torch.Generator().manual_seed(7)

    from edgeser.checkpoint import Stochastic

    # an augmentation names its generator (checkpoint.Stochastic), so the epoch checkpoint restores it
    augment = Stochastic(lambda x: x + 0.1 * torch.randn(x.shape, generator=aug_gen), [aug_gen])

    ran = [] if ran is None else ran

    def on_epoch(epoch):
        if stop_after is not None and epoch > stop_after:
            raise KeyboardInterrupt  # the process dies here
        ran.append(("epoch", epoch))

    def loss(m, x, y, idx):
        ran.append(("batch", ran[-1][1]))
        return torch.nn.functional.cross_entropy(m(x), y)
    cfg = Train(epochs=4, lr=0.01, batch_size=8)
    info = fit(model, corpus, cfg, loss, seed=seed, augment_fn=augment, on_epoch=on_epoch, checkpoint=checkpoint)
    return model, info


def test_fit_resumes_from_epoch_checkpoint(tmp_path):
    from edgeser.checkpoint import EpochCheckpoint

    def epochs(ran, kind="epoch"):
        return [n for k, n in ran if k == kind]

    ran = []
    straight, info = _tiny_fit(EpochCheckpoint(tmp_path / "a.pt", "k"), ran=ran)
    assert epochs(ran) == [1, 2, 3, 4] and epochs(ran, "batch") == [e for e in (1, 2, 3, 4) for _ in range(6)]
    ck = EpochCheckpoint(tmp_path / "b.pt", "k")
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(ck, stop_after=2)
    assert ck.load()["epoch"] == 2
    ran = []
    resumed, info2 = _tiny_fit(ck, ran=ran)  # a fresh process would rebuild everything the same way
    # only epochs 3 and 4 ran, 6 batches of 8 each: a rerun from scratch (checkpoint not loaded) ends with the
    # same weights, since it is deterministic, so the comparisons below alone would not notice
    assert epochs(ran) == [3, 4] and epochs(ran, "batch") == [3] * 6 + [4] * 6
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert info["history"] == info2["history"]
    assert EpochCheckpoint(tmp_path / "b.pt", "other key").load() is None  # a checkpoint of other inputs is ignored


def test_full_disk_mid_write_leaves_nothing_done(tiny_run, tiny_recipe_path, tmp_path, monkeypatch):
    import edgeser.models.io as common

    real_save_state = common.save_state

    def partial_then_enospc(obj, f):
        f.write(b"PK\x03\x04 half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_state_disk_full_in_qat(dest, state):
        if "stages/qat" in str(dest):
            monkeypatch.setattr(torch, "save", partial_then_enospc)
        try:
            return real_save_state(dest, state)
        finally:
            monkeypatch.undo() if "stages/qat" in str(dest) else None

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    for f in ("manifest.json", "report.json", "stages/qat/done.json", "stages/qat/model.pt"):
        (run / f).unlink()
    monkeypatch.setattr(common, "save_state", save_state_disk_full_in_qat)
    with pytest.raises(OSError, match="No space left"):
        run_quiet(tiny_recipe_path, run, resume=True)
    monkeypatch.setattr(common, "save_state", real_save_state)
    qat = run / "stages/qat"
    assert not (qat / "model.pt").exists() and not (qat / "done.json").exists()
    assert not [p for p in qat.iterdir() if ".tmp" in p.name]  # no half-written temp file left behind
    assert not (run / "manifest.json").exists()
    from typer.testing import CliRunner

    from edgeser.cli import app

    r = CliRunner().invoke(app, ["verify", str(run)])
    assert r.exit_code == 2 and "manifest.json" in r.output  # verify does not take the run as finished
    run_quiet(tiny_recipe_path, run, resume=True)
    assert hashes(run) == hashes(tiny_run[0])


def test_atomic_save_state_on_full_disk(tmp_path, monkeypatch):
    dest = tmp_path / "m.pt"
    save_state(dest, {"w": torch.ones(2)})
    good = sha256(dest)

    def enospc(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OSError):
        save_state(dest, {"w": torch.zeros(2)})
    assert sha256(dest) == good and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
