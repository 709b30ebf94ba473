"""Where the training loops run (recipe `train`): the device, and mixed precision on CUDA.

On the CPU (device cpu, or auto without CUDA) nothing changes: fp32, no autocast, no scaler; the moves to the
device are no-ops, so results are bit for bit those of a CPU-only build. On CUDA: the model and each batch go
to the GPU (under torchrun the rank's local GPU, gradients over NCCL: distributed.py), and the forward runs
under torch.autocast in bf16 (where the GPU has it) or fp16 with a GradScaler. The QAT loop always trains in
fp32: its fake quantisers round to the INT8 grid, which a 16-bit forward would blur.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from edgeser.errors import InputError


@dataclass(frozen=True)
class Compute:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32

    @property
    def amp(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self):
        """A GradScaler for fp16 (bf16 and fp32 need none), else None."""
        return torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": {None: "fp32", torch.bfloat16: "bf16",
                                                            torch.float16: "fp16"}[self.dtype]}


CPU = Compute(torch.device("cpu"), None)


def resolve(cfg, quantised: bool = False) -> Compute:
    """cfg: the recipe's `train` section (None: the CPU). quantised: the QAT loop (fp32 whatever cfg says)."""
    if cfg is None:
        return CPU
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise InputError("train.device: cuda, but this torch sees no CUDA device (torch.cuda.is_available() is "
                         f"False; torch {torch.__version__}); use auto or cpu")
    if cfg.device == "cpu" or not cuda:
        if cfg.precision not in ("auto", "fp32"):
            raise InputError(f"train.precision: {cfg.precision} is for CUDA; training here runs on the CPU in fp32")
        return CPU
    from edgeser import distributed as dist

    device = torch.device("cuda", dist.local_rank() % torch.cuda.device_count())
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = None if quantised or precision == "fp32" else {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Compute(device, dtype)


def model_device(model) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a plain function or an empty module)."""
    if isinstance(model, torch.nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return torch.device("cpu")
