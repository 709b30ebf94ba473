"""SoundNet-8 trunk (conv1-conv7 of Aytar et al. 2016) with a speech-emotion head.

Input: mono waveform in [-1, 1], shape (B, samples). It is scaled x256 as in the original release.
Head: global pooled conv7 features -> sigmoid attention gate -> dropout -> linear over the classes.
"""
from __future__ import annotations

import torch
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
    def __init__(self, dim: int, n_classes: int, dropout: float):
        super().__init__()
        self.gate = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(h * torch.sigmoid(self.gate(h))))


class SoundNet8(nn.Module):
    def __init__(self, n_classes: int, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        layers, c_in = [], 1
        for i, (c, k, s, p, pool) in enumerate(SOUNDNET8, start=1):
            c_out = max(4, int(round(c * width_mult)))
            block = [nn.Conv1d(c_in, c_out, k, s, p), nn.BatchNorm1d(c_out, eps=1e-5), nn.ReLU()]
            if pool > 1:
                block.append(nn.MaxPool1d(pool, pool, ceil_mode=True))
            layers.append(nn.Sequential(*block))
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.head = GatedHead(c_in, n_classes, dropout)
        self.width_mult = width_mult

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        return self.trunk((wav * 256.0).unsqueeze(1))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(wav).mean(-1))
