"""Transfer learning: unfreezing schedule, frozen blocks really frozen, MMD, strategies end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("weights", [None, (0.2, 0.9)])
def test_teacher_loss_is_ce_weight_ce_plus_mmd_weight_mmd(weights):
    """The loss, computed by hand: ce_weight CE(head(embed(x)), y) + mmd_weight MMD(embed(source picks), embed(x)),
    the source clips picked by a generator seeded with `seed`. The documented default is 0.7 CE + 0.3 MMD."""
    cfg = Teacher() if weights is None else Teacher(ce_weight=weights[0], mmd_weight=weights[1])
    if weights is None:
        assert (cfg.ce_weight, cfg.mmd_weight) == (0.7, 0.3)
    torch.manual_seed(0)
    m = SoundNet8(4, width_mult=0.25).eval()  # eval: no dropout, BN running statistics, so two calls agree
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 16000, generator=g) * 0.1, torch.tensor([0, 1, 2, 3])
    t = torch.arange(16000) / 16000
    source = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in (100.0, 300.0, 500.0, 700.0, 900.0, 1100.0)])
    got = teacher_loss(cfg, source, seed=5)(m, x, y, None)
    with torch.no_grad():
        pick = torch.randint(0, len(source), (len(x),), generator=torch.Generator().manual_seed(5))
        h = m.embed(x)
        ce = F.cross_entropy(m.head(h), y)
        mmd = mmd_rbf(m.embed(source[pick]), h)
    assert float(mmd) > 0.05 * float(ce)  # both terms count, so swapped or dropped weights change the sum
    want = cfg.ce_weight * ce + cfg.mmd_weight * mmd
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (float(got), float(want))
    assert not torch.allclose(got, ce) and not torch.allclose(got, cfg.mmd_weight * ce + cfg.ce_weight * mmd)
    # mmd_weight 0 (or no source audio): plain cross-entropy, unweighted
    assert torch.allclose(teacher_loss(cfg.model_copy(update={"mmd_weight": 0.0}), source, 5)(m, x, y, None), ce)
    assert torch.allclose(teacher_loss(cfg, None, 5)(m, x, y, None), ce)


def _trunk_inputs(m: SoundNet8) -> list:
    seen = []
    m.trunk[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))  # conv1 block
    return seen


def _linear_upsample(x: np.ndarray, rate: float) -> np.ndarray:
    """F.interpolate(mode="linear", align_corners=False): output sample i reads input position (i + 0.5) / rate
    - 0.5, clamped to the ends."""
    pos = (np.arange(int(len(x) * rate)) + 0.5) / rate - 0.5
    return np.interp(pos, np.arange(len(x)), x)


def test_soundnet_native_rate_resamples_inside():
    """sample_rate=22050: the 16 kHz input reaches the trunk as 22050 / 16000 times the samples, linearly
    interpolated (and x256), in forward, embed and block_features alike."""
    # float64: in float32 the interpolation positions themselves are rounded (0.1 off near the end of a clip)
    m = SoundNet8(4, width_mult=0.25, sample_rate=22050).double().eval()
    x = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    seen = _trunk_inputs(m)
    assert m(x).shape == (2, 4)
    assert seen[0].shape == (2, 1, 22050)  # 16000 * 22050 / 16000
    want = np.stack([_linear_upsample(c, 22050 / 16000) for c in x.numpy()]) * 256.0
    assert np.abs(seen[0][:, 0].numpy() - want).max() < 1e-6
    # block_features resamples the same way (hint distillation reads it): its conv7 features are embed's
    feats = m.block_features(x, [7])[7]
    assert seen[1].shape == (2, 1, 22050)
    assert torch.allclose(feats, m.embed(x), atol=1e-9)
    # at 16 kHz nothing is resampled
    m16 = SoundNet8(4, width_mult=0.25).double().eval()
    seen16 = _trunk_inputs(m16)
    m16(x)
    assert seen16[0].shape == (2, 1, 16000) and torch.equal(seen16[0][:, 0], x * 256.0)


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
