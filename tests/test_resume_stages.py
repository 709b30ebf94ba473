"""Resume in stages other than distill: the teacher (2 epochs, interrupted after the first) and QAT (3 epochs,
interrupted after the second: the resumed epoch is one with the observers frozen) continue from their epoch
checkpoint, run only the last epoch again, and end byte-identical to an uninterrupted run."""
from __future__ import annotations

import json
import shutil

import pytest
from rich.console import Console

import edgeser.kd as kd_loop  # kd_fit (distill, prune, QAT) calls train.fit from here
import edgeser.stages.teacher as teacher_stage
from edgeser.fileio import load_state, sha256
from edgeser.pipeline import compress
from edgeser.recipe import load_recipe


class Interrupted(RuntimeError):
    """Stands for the process dying at the start of an epoch."""


def spy_fit(monkeypatch, desc: str, die_at: int | None = None) -> dict:
    """Wrap the fit of train_teacher and of kd_fit (distill, prune and QAT): record, for the loop named `desc`, the
    epochs it starts and its training forward passes (one per batch); with `die_at`, raise Interrupted when
    that epoch starts (after the checkpoint of the epoch before it is written)."""
    module = teacher_stage if desc == "teacher" else kd_loop
    real, seen = module.fit, {"epochs": [], "batches": 0}

    def fit(model, corpus, cfg, loss_fn, *, on_epoch=None, **kw):
        if kw.get("desc") != desc:
            return real(model, corpus, cfg, loss_fn, on_epoch=on_epoch, **kw)

        def epoch_spy(epoch):
            if epoch == die_at:
                raise Interrupted(f"{desc} epoch {epoch}")
            seen["epochs"].append(epoch)
            if on_epoch is not None:
                on_epoch(epoch)

        def count_batch(module, args):  # a training forward is a batch; eval forwards are val and select
            if module.training:
                seen["batches"] += 1

        # (the loss itself is left alone: fit finds the random generators whose state the checkpoint saves by
        # walking loss_fn, and a wrapper would change what it finds)
        # on the head: the teacher's loss calls embed and head, not forward; QAT's calls forward, which ends in it
        hook = model.head.register_forward_pre_hook(count_batch)
        try:
            return real(model, corpus, cfg, loss_fn, on_epoch=epoch_spy, **kw)
        finally:
            hook.remove()

    monkeypatch.setattr(module, "fit", fit)
    return seen


def rerun(recipe_path, run, stage: str, epochs: int):
    """A tiny run's folder with `epochs` epochs of `stage`: resume keeps the stages before it (their keys are
    unchanged) and trains `stage` again; until=stage leaves the later stages out."""
    recipe = load_recipe(recipe_path, [f"{stage}.epochs={epochs}"])
    return compress(recipe, run, console=Console(quiet=True), show_progress=False, until=stage, resume=True)


@pytest.mark.parametrize("stage, epochs", [("teacher", 2), ("qat", 3)])
def test_stage_interrupted_resumes_from_its_epoch_checkpoint(tiny_run, tiny_recipe_path, tmp_path, monkeypatch,
                                                             stage, epochs):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    shutil.copytree(tiny_run[0], straight)
    shutil.copytree(tiny_run[0], broken)
    folder = f"stages/{stage}"
    ref = spy_fit(monkeypatch, stage)
    rerun(tiny_recipe_path, straight, stage, epochs)
    metrics = json.loads((straight / folder / "metrics.json").read_text())
    steps = metrics["train"]["steps_per_epoch"]
    every = list(range(1, epochs + 1))
    assert metrics["train"]["epochs"] == epochs and ref["epochs"] == every and ref["batches"] == epochs * steps
    upstream = "data" if stage == "teacher" else "prune"
    done = (broken / "stages" / upstream / "done.json").stat().st_mtime_ns

    monkeypatch.undo()
    first = spy_fit(monkeypatch, stage, die_at=epochs)
    with pytest.raises(Interrupted):
        rerun(tiny_recipe_path, broken, stage, epochs)
    assert first["epochs"] == every[:-1] and first["batches"] == (epochs - 1) * steps
    ckpt = broken / folder / f"ckpt-{stage}.pt"
    assert load_state(ckpt)["epoch"] == epochs - 1  # the last finished epoch
    assert not (broken / folder / "done.json").exists()

    monkeypatch.undo()
    again = spy_fit(monkeypatch, stage)
    rerun(tiny_recipe_path, broken, stage, epochs)
    # only what was left ran: the last epoch (a restart from scratch would run them all, and gives the same
    # bytes, so the hashes below cannot tell the two apart), and nothing upstream trained again
    assert again["epochs"] == [epochs] and again["batches"] == steps
    if upstream != "data":  # (data always runs: it loads the corpus)
        assert (broken / "stages" / upstream / "done.json").stat().st_mtime_ns == done
    assert not ckpt.exists()  # a finished stage removes its checkpoint
    assert sha256(broken / folder / "model.pt") == sha256(straight / folder / "model.pt")
    got = json.loads((broken / folder / "metrics.json").read_text())
    assert got["test"] == metrics["test"] and got["train"]["history"] == metrics["train"]["history"]
    assert got["train"]["best_epoch"] == metrics["train"]["best_epoch"]
