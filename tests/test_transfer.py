"""Transfer learning: unfreezing schedule, frozen blocks really frozen, MMD, strategies end to end."""
from __future__ import annotations

import torch

from edgeser.models.soundnet import SoundNet8
from edgeser.recipe import Teacher
from edgeser.transfer import frozen_blocks, mmd_rbf, params_for, teacher_loss


def test_unfreezing_schedule_top_blocks_first():
    cfg = Teacher(freeze_epochs=2, unfreeze_every=2)
    got = [frozen_blocks("transfer_attention", e, cfg) for e in range(1, 18)]
    assert got[:2] == [7, 7]  # backbone frozen
    assert got[2:6] == [6, 6, 5, 5]  # conv7 first, then conv6, ...
    assert got[-1] == 0 and sorted(got, reverse=True) == got
    assert frozen_blocks("last_layer", 5, cfg) == 7 and frozen_blocks("full", 1, cfg) == 0


def test_frozen_blocks_get_no_gradient_and_keep_bn_stats():
    torch.manual_seed(0)
    m = SoundNet8(4, width_mult=0.25)
    m.freeze_bottom(5)
    m.train()
    bn_frozen, bn_live = m.trunk[0][1], m.trunk[6][1]
    before = bn_frozen.running_mean.clone(), bn_live.running_mean.clone()
    m(torch.randn(4, 16000) * 0.1).sum().backward()
    assert all(p.grad is None for p in m.trunk[:5].parameters())
    assert all(p.grad is not None for p in m.trunk[5:].parameters())
    assert torch.equal(bn_frozen.running_mean, before[0]) and not torch.equal(bn_live.running_mean, before[1])


def test_last_layer_trains_only_the_classifier():
    m = SoundNet8(4, width_mult=0.25, attention=False)
    assert m.head.gate is None
    assert [p.shape for p in params_for(m, "last_layer")] == [torch.Size([4, 256]), torch.Size([4])]


def test_mmd_separates_domains():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    same, shifted = mmd_rbf(a, b), mmd_rbf(a, b + 2.0)
    assert same < 0.1 and shifted > 10 * same


def test_teacher_loss_mixes_ce_and_mmd():
    torch.manual_seed(0)
    m = SoundNet8(4, width_mult=0.25)
    x, y = torch.randn(4, 16000) * 0.1, torch.tensor([0, 1, 2, 3])
    cfg = Teacher()
    ce = teacher_loss(cfg, None, 0)(m, x, y, None)
    mixed = teacher_loss(cfg, torch.randn(6, 16000), 0)(m, x, y, None)
    assert torch.isfinite(mixed) and not torch.isclose(ce, mixed)


def test_soundnet_native_rate_resamples_inside():
    m = SoundNet8(4, width_mult=0.25, sample_rate=22050).eval()
    x = torch.randn(2, 16000) * 0.1
    assert m(x).shape == (2, 4)
    assert m.trunk[0](torch.zeros(1, 1, 22050)).shape[-1] > m.trunk[0](torch.zeros(1, 1, 16000)).shape[-1]


def test_finetune_cli_runs_teacher_stage_only(tiny_recipe_path, tmp_path):
    from typer.testing import CliRunner

    from edgeser.cli import app

    out = tmp_path / "ft"
    res = CliRunner().invoke(app, ["finetune", "--recipe", str(tiny_recipe_path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "test UA" in res.output and (out / "stages/teacher/model.pt").is_file()
    assert not (out / "stages/distill").exists()
    res = CliRunner().invoke(app, ["finetune", "--recipe", str(tiny_recipe_path), "--out", str(out),
                                   "--set", "teacher.strategy=full"])
    assert res.exit_code == 2 and "teacher.pretrained" in res.output
