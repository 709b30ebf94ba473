"""Training batches read from the split's rows (in memory, or the on-disk store) by a torch DataLoader.

The training loop decides everything random itself, in its own process and order: which rows form each batch,
and where each random crop starts (dataset.crop_starts). The DataLoader only reads the audio of the batches it
is handed, in order, so `data.workers` changes how fast batches arrive, never what they hold: with 0 workers
the reads happen in the training process, as they always did.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from edgeser.data.dataset import read_crops


class _Batches(Dataset):
    def __init__(self, split, plan: list[tuple[torch.Tensor, list[int] | None]]):
        self.split, self.plan = split, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> torch.Tensor:
        idx, starts = self.plan[k]
        if starts is None:
            return self.split.x[idx]
        return read_crops(self.split.full, idx, starts, self.split.x.shape[1])


def read_batches(split, plan: list[tuple[torch.Tensor, list[int] | None]], workers: int = 0):
    """The audio (B, samples) of each planned batch, in order. plan: (row indices, crop starts or None for the
    split's clips). workers > 0: read ahead by that many worker processes (two batches each)."""
    if workers == 0:
        ds = _Batches(split, plan)
        return (ds[k] for k in range(len(ds)))
    return iter(DataLoader(_Batches(split, plan), batch_size=None, shuffle=False, num_workers=workers,
                           prefetch_factor=2, persistent_workers=False))
