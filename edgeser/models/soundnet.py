"""SoundNet-8 trunk (conv1-conv7 of Aytar et al. 2016) with a speech-emotion head.

Input: mono 16 kHz waveform in [-1, 1], shape (B, samples). With `sample_rate=22050` it is resampled inside
to SoundNet's native rate (linear interpolation: an upsampling, so nothing aliases). It is scaled x256 as in
the original release. Head: globally pooled conv7 features -> sigmoid attention gate -> dropout -> linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (out_channels, kernel, stride, pad, maxpool) for conv1..conv7; in_channels chain from 1.
SOUNDNET8 = [
    (16, 64, 2, 32, 8),
    (32, 32, 2, 16, 8),
    (64, 16, 2, 8, 1),
    (128, 8, 2, 4, 1),
    (256, 4, 2, 2, 4),
    (512, 4, 2, 2, 1),
    (1024, 4, 2, 2, 1),
]


class GatedHead(nn.Module):
    def __init__(self, dim: int, n_classes: int, dropout: float, attention: bool = True):
        super().__init__()
        self.gate = nn.Linear(dim, dim) if attention else None
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            h = h * torch.sigmoid(self.gate(h))
        return self.fc(self.drop(h))


class SoundNet8(nn.Module):
    def __init__(self, n_classes: int, width_mult: float = 1.0, dropout: float = 0.2, sample_rate: int = 16000,
                 attention: bool = True):
        super().__init__()
        layers, c_in = [], 1
        for c, k, s, p, pool in SOUNDNET8:
            c_out = max(4, int(round(c * width_mult)))
            block = [nn.Conv1d(c_in, c_out, k, s, p), nn.BatchNorm1d(c_out, eps=1e-5), nn.ReLU()]
            if pool > 1:
                block.append(nn.MaxPool1d(pool, pool, ceil_mode=True))
            layers.append(nn.Sequential(*block))
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.head = GatedHead(c_in, n_classes, dropout, attention)
        self.width_mult, self.sample_rate, self.attention = width_mult, sample_rate, attention
        self.frozen_blocks = 0  # the lowest N trunk blocks: no gradient, BN statistics fixed

    def config(self) -> dict:
        return {"n_classes": self.head.fc.out_features, "width_mult": self.width_mult,
                "sample_rate": self.sample_rate, "attention": self.attention}

    def freeze_bottom(self, n: int) -> None:
        """Freeze the lowest `n` of the 7 trunk blocks (progressive unfreezing lowers n, top blocks first)."""
        self.frozen_blocks = n
        for i, block in enumerate(self.trunk):
            block.requires_grad_(i >= n)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self.trunk[: self.frozen_blocks]:
            block.eval()
        return self

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Globally pooled conv7 features (B, C): the transferred representation."""
        x = wav.unsqueeze(1)
        if self.sample_rate != 16000:
            x = F.interpolate(x, scale_factor=self.sample_rate / 16000, mode="linear", align_corners=False)
        return self.trunk(x * 256.0).mean(-1)

    def block_features(self, wav: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
        """Time-pooled outputs of trunk blocks (1-based), for feature (hint) distillation."""
        x = wav.unsqueeze(1)
        if self.sample_rate != 16000:
            x = F.interpolate(x, scale_factor=self.sample_rate / 16000, mode="linear", align_corners=False)
        x, out = x * 256.0, {}
        for i, block in enumerate(self.trunk, start=1):
            x = block(x)
            if i in blocks:
                out[i] = x.mean(-1)
        return out

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(wav))
