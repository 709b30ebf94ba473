"""The QAT freeze schedule (edgeser/stages/qat.py): activation observers update during the first
`freeze_observers_after` epochs, folded-BN statistics during the first `freeze_bn_after`, then both stay fixed."""
from __future__ import annotations

import shutil

import torch
from rich.console import Console

import edgeser.kd as kd_loop  # kd_fit (distill, prune, QAT) calls train.fit from here
from edgeser.pipeline import compress
from edgeser.quant.fakequant import ActQuant, QConv1d
from edgeser.recipe import QAT, load_recipe


def test_qat_defaults_observe_two_epochs_and_keep_bn_frozen():
    cfg = QAT()
    assert (cfg.freeze_observers_after, cfg.freeze_bn_after) == (2, 0)


def _state(q) -> tuple[torch.Tensor, torch.Tensor]:
    """(every activation scale, every folded BN's running mean and var), flattened."""
    scales = torch.stack([m.scale.clone() for m in q.modules() if isinstance(m, ActQuant)])
    bn = torch.cat([torch.cat([m.bn.running_mean, m.bn.running_var]) for m in q.modules()
                    if isinstance(m, QConv1d) and m.bn is not None])
    return scales, bn.clone()


def test_qat_freezes_observers_then_bn_on_schedule(tiny_run, tiny_recipe_path, tmp_path, monkeypatch):
    """4 QAT epochs, observers for 2, BN for 1: every training batch records the flags it ran with and whether
    it moved the scales or the BN statistics; epochs that should be frozen move nothing, the others do."""
    real, batches, epoch = kd_loop.fit, [], [0]

    def fit(model, corpus, cfg, loss_fn, *, on_epoch=None, **kw):
        assert kw.get("desc") == "qat"  # data .. prune are kept from the tiny run: only QAT trains

        def epoch_spy(e):
            epoch[0] = e
            on_epoch(e)

        def before(module, args):
            if module.training:
                observe = {m.observe for m in module.modules() if isinstance(m, ActQuant)}
                bn_update = {m.bn_update for m in module.modules() if isinstance(m, QConv1d) and m.bn is not None}
                batches.append({"epoch": epoch[0], "observe": observe, "bn_update": bn_update,
                                "before": _state(module)})

        def after(module, args, out):
            if module.training:
                batches[-1]["after"] = _state(module)

        hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
        try:
            return real(model, corpus, cfg, loss_fn, on_epoch=epoch_spy, **kw)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(kd_loop, "fit", fit)
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    recipe = load_recipe(tiny_recipe_path, ["qat.epochs=4", "qat.freeze_observers_after=2", "qat.freeze_bn_after=1"])
    compress(recipe, run, console=Console(quiet=True), show_progress=False, until="qat", resume=True)

    assert sorted({b["epoch"] for b in batches}) == [1, 2, 3, 4]
    for e in (1, 2, 3, 4):
        mine = [b for b in batches if b["epoch"] == e]
        assert mine
        assert all(b["observe"] == {e <= 2} for b in mine), f"epoch {e}: observers {mine[0]['observe']}"
        assert all(b["bn_update"] == {e <= 1} for b in mine), f"epoch {e}: BN updates {mine[0]['bn_update']}"
        scales_moved = any(not torch.equal(b["before"][0], b["after"][0]) for b in mine)
        bn_moved = any(not torch.equal(b["before"][1], b["after"][1]) for b in mine)
        assert scales_moved == (e <= 2), f"epoch {e}: activation scales {'moved' if scales_moved else 'fixed'}"
        assert bn_moved == (e <= 1), f"epoch {e}: BN statistics {'moved' if bn_moved else 'fixed'}"
    # frozen means frozen: from the first frozen batch on, the scales are those the last observed batch left
    frozen = [b for b in batches if b["epoch"] >= 3]
    last_observed = [b for b in batches if b["epoch"] == 2][-1]["after"][0]
    assert all(torch.equal(b["before"][0], last_observed) and torch.equal(b["after"][0], last_observed)
               for b in frozen)
