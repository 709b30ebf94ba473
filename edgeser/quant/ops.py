"""Register torch.ops.quantized_decomposed (from torchao) without its import-time chatter."""
from __future__ import annotations

import torch

from edgeser.quiet import quiet

with quiet():
    import torchao.quantization.pt2e  # noqa: F401

QD = torch.ops.quantized_decomposed
