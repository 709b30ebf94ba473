"""Transfer learning of SoundNet-8 to speech emotion: strategies, progressive unfreezing and the MMD term.

Strategies (recipe `teacher.strategy`):
- scratch: random init, everything trains;
- last_layer: pretrained trunk frozen, no attention gate, only the final linear layer trains;
- full: pretrained, everything trains from the first epoch;
- transfer_attention: pretrained, attention head; the trunk is frozen for `freeze_epochs`, then unfrozen one
  block per `unfreeze_every` epochs, top blocks (conv7) first. Loss 0.7 CE + 0.3 MMD when source audio is given.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeser.checkpoint import Stochastic
from edgeser.models.soundnet import SoundNet8
from edgeser.errors import InputError
from edgeser.recipe import Teacher

N_BLOCKS = 7


def build_teacher(cfg: Teacher, n_classes: int, strategy: str) -> tuple[SoundNet8, dict]:
    model = SoundNet8(n_classes, cfg.width_mult, cfg.dropout, cfg.sample_rate, attention=strategy != "last_layer")
    info = {"strategy": strategy}
    if cfg.pretrained is not None and strategy != "scratch":
        from edgeser.models.soundnet_weights import WeightsError, apply_soundnet_weights

        try:
            info["pretrained"] = apply_soundnet_weights(model, cfg.pretrained) | {"path": str(cfg.pretrained)}
        except WeightsError as e:
            raise InputError(f"teacher.pretrained: {e}") from None
    return model, info


def frozen_blocks(strategy: str, epoch: int, cfg: Teacher) -> int:
    """How many of the lowest trunk blocks are frozen during `epoch` (1-based)."""
    if strategy == "last_layer":
        return N_BLOCKS
    if strategy != "transfer_attention":
        return 0
    unfrozen = 0 if epoch <= cfg.freeze_epochs else 1 + (epoch - cfg.freeze_epochs - 1) // cfg.unfreeze_every
    return max(0, N_BLOCKS - unfrozen)


def params_for(model: SoundNet8, strategy: str):
    """Parameters the optimiser sees (frozen ones get no gradient and are skipped by AdamW)."""
    if strategy == "last_layer":
        return list(model.head.fc.parameters())
    return list(model.parameters())


def mmd_rbf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Biased squared MMD between two feature batches, a sum of Gaussian kernels around the median distance."""
    x = torch.cat([a, b])
    d = torch.cdist(x, x).pow(2)
    med = d.detach()[d.detach() > 0].median() if (d > 0).any() else torch.tensor(1.0)
    k = sum(torch.exp(-d / (med * s)) for s in (0.25, 1.0, 4.0))
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def teacher_loss(cfg: Teacher, source: torch.Tensor | None, seed: int, labels=None):
    """CE, or ce_weight CE + mmd_weight MMD(source-domain, target-domain features) when source audio exists.
    `labels` (train.label_loss): the label term instead of CE on y, e.g. against vote distributions."""
    gen = torch.Generator().manual_seed(seed)

    def loss(model: SoundNet8, x, y, idx):
        h = model.embed(x)
        ce = F.cross_entropy(model.head(h), y) if labels is None else labels(model.head(h), y, idx)
        if source is None or cfg.mmd_weight == 0:
            return ce
        pick = torch.randint(0, len(source), (len(x),), generator=gen)
        return cfg.ce_weight * ce + cfg.mmd_weight * mmd_rbf(model.embed(source[pick].to(x.device)), h)

    return Stochastic(loss, [gen])


def load_source_audio(folder, samples: int, limit: int = 512) -> torch.Tensor:
    """Source-domain clips (e.g. environmental sounds) cut to the target clip length."""
    import numpy as np

    from edgeser.data.audio import BadAudio, fix_length, load_audio

    clips = []
    for p in sorted(folder.rglob("*.wav"))[:limit]:
        try:
            clips.append(fix_length(load_audio(p), samples))
        except BadAudio:
            continue
    if not clips:
        raise InputError(f"teacher.source_audio: no usable WAV files in {folder}")
    return torch.from_numpy(np.stack(clips))
