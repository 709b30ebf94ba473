"""The student: log-mel front-end inside the model, then a small Conv1d stack and a linear head.

Takes 16 kHz PCM (B, samples) and returns logits (B, classes), so every exported artifact does too.
"""
from __future__ import annotations

import torch
from torch import nn

from edgeser.models.frontend import LogMel


class Body(nn.Module):
    """Conv1d-BN-ReLU blocks over mel frames, mean over time, linear head. Pruned and quantised."""

    def __init__(self, n_mels: int, channels: list[int], n_classes: int, kernel_size: int = 3):
        super().__init__()
        blocks, c_in = [], n_mels
        for i, c in enumerate(channels):
            stride = 2 if 0 < i < len(channels) - 1 else 1
            blocks.append(nn.Sequential(
                nn.Conv1d(c_in, c, kernel_size, stride, kernel_size // 2, bias=False),
                nn.BatchNorm1d(c), nn.ReLU()))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(mel).mean(-1))


class Student(nn.Module):
    def __init__(self, n_classes: int, channels: list[int], kernel_size: int = 3, frontend: dict | None = None):
        super().__init__()
        self.frontend = LogMel(**(frontend or {}))
        self.body = Body(self.frontend.mel.shape[0], channels, n_classes, kernel_size)
        self.mel_augment = None  # training only, e.g. frequency masking; not part of the exported graph

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled last-block features). x: PCM (B, samples), or a log-mel (B, n_mels, T), e.g. SMOTE."""
        mel = self.frontend(x) if x.dim() == 2 else x
        if self.training and self.mel_augment is not None:
            mel = self.mel_augment(mel)
        pooled = self.body.blocks(mel).mean(-1)
        return self.body.head(pooled), pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def student_config(body: Body) -> dict:
    """Channel widths as they are now (after pruning), to rebuild the model from a state_dict."""
    convs = [b[0] for b in body.blocks]
    return {"channels": [c.out_channels for c in convs], "kernel_size": convs[0].kernel_size[0],
            "n_classes": body.head.out_features}
