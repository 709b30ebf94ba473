"""Hand-written INT8 fake-quant, legal for every target (TensorRT, QNN HTP, CoreML, onnxruntime).

- weights: symmetric per-channel int8 (axis 0, range -127..127, zero point 0), BN folded first;
- activations: per-tensor int8, scales calibrated, then frozen: symmetric (-128..127, zero point 0), or unsigned
  after a ReLU (zero point -128) where the target allows it (not TensorRT: its zero points must be 0);
- Q/DQ on the front-end input and its DFT output, the body input, after each Conv + ReLU, and on the pooled
  features before the head (the logits stay float).

`export=True` swaps the rounding arithmetic for `torch.ops.quantized_decomposed` Q/DQ ops with int8
weight buffers; the formulas are identical, so fake-quant and the exported graph agree bit for bit.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.quant.ops import QD


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class ActQuant(nn.Module):
    """Per-tensor activation quantiser with a max-abs observer (EMA after the first batch). Symmetric (zero point
    0, steps -128..127 of `scale`), or unsigned for a ReLU's output (zero point -128: 0..255 steps of `scale`,
    twice the resolution of [0, max], and onnxruntime drops the ReLU before it and fuses Conv -> Q into one
    QLinearConv: ReluQuantFusion wants the zero point at the type's minimum)."""

    def __init__(self, momentum: float = 0.1, unsigned: bool = False):
        super().__init__()
        self.unsigned = unsigned
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("initialised", torch.tensor(False))
        self.momentum = momentum
        self.observe = True
        self.enabled = True
        self.export = False

    def freeze_export(self):
        """Fix the scale as a Python constant so the exported graph carries it as an initializer."""
        self.export = True
        self.export_scale = float(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.observe_(x)
        return self.quantise(x)

    def observe_(self, x: torch.Tensor) -> None:
        """The observer's step on x (calibration, or training until observers freeze); nothing at export."""
        if self.export:
            return
        if self.observe and (self.training or not bool(self.initialised)):
            amax = x.detach().abs().amax().clamp(min=1e-8) / (255.0 if self.unsigned else 127.0)
            if bool(self.initialised):
                self.scale.mul_(1 - self.momentum).add_(self.momentum * amax)
            else:
                self.scale.copy_(amax)
                self.initialised.fill_(True)

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """x through this quantiser's int8 steps at its current scale, without observing x (a tensor observed
        only in part: QuantFrontend's two-range DFT)."""
        zp = -128 if self.unsigned else 0
        if self.export:
            s = self.export_scale
            q = QD.quantize_per_tensor(x, s, zp, -128, 127, torch.int8)
            return QD.dequantize_per_tensor(q, s, zp, -128, 127, torch.int8)
        if not self.enabled:
            return x
        s = float(self.scale)
        return torch.clamp(_round_ste(x * (1.0 / s)), -128 - zp, 127 - zp) * s


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    return (w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp(min=1e-8) / 127.0).float()


class _QWeight(nn.Module):
    """Shared weight handling for QConv1d / QLinear: fake-quant in training, int8 buffer at export."""

    def setup(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.export = False
        self.enabled = True

    def weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The float weight and bias the layer computes with (QConv1d folds its BN in here)."""
        return self.weight, self.bias

    def qweight(self, w: torch.Tensor) -> torch.Tensor:
        if self.export:
            return QD.dequantize_per_channel(self.w_int8, self.w_scale, self.w_zp, 0, -127, 127, torch.int8)
        if not self.enabled:
            return w
        s = weight_scales(w).reshape(-1, *([1] * (w.dim() - 1)))
        return torch.clamp(_round_ste(w / s), -127, 127) * s

    def freeze_int8(self):
        """Store int8 weights and their scales as buffers for the export graph."""
        w, b = self.weight_bias()
        w = w.detach()
        self.register_buffer("w_bias", None if b is None else b.detach().clone())
        s = weight_scales(w)
        q = torch.clamp(torch.round(w / s.reshape(-1, *([1] * (w.dim() - 1)))), -127, 127)
        self.register_buffer("w_int8", q.to(torch.int8))
        self.register_buffer("w_scale", s)
        self.register_buffer("w_zp", torch.zeros(len(s), dtype=torch.int64))


def _fold(w: torch.Tensor, b: torch.Tensor | None, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of Conv followed by BN with its running statistics (differentiable in w, gamma, beta)."""
    g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b0 = b if b is not None else torch.zeros_like(bn.running_mean)
    return w * g[:, None, None], (b0 - bn.running_mean) * g + bn.bias


class QConv1d(_QWeight):
    """Fake-quant Conv1d. Given a BN, it is folded in on every forward from the BN's running statistics;
    while `bn_update` is on (training), those statistics still follow the batches, then they freeze."""

    def __init__(self, conv: nn.Conv1d, bn: nn.BatchNorm1d | None = None):
        super().__init__()
        self.setup(conv.weight, conv.bias)
        self.bn = None if bn is None else copy.deepcopy(bn)
        self.bn_update = False
        self.stride, self.padding = conv.stride, conv.padding
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size

    def weight_bias(self):
        if self.bn is None:
            return self.weight, self.bias
        return _fold(self.weight, self.bias, self.bn)

    def forward(self, x):
        if self.export:
            return F.conv1d(x, self.qweight(None), self.w_bias, self.stride, self.padding)
        if self.bn is not None and self.bn_update and self.training:
            with torch.no_grad():  # update the running statistics from this batch's float conv output
                y = F.conv1d(x, self.weight, self.bias, self.stride, self.padding)
                F.batch_norm(y, self.bn.running_mean, self.bn.running_var, training=True,
                             momentum=self.bn.momentum or 0.1, eps=self.bn.eps)
        w, b = self.weight_bias()
        return F.conv1d(x, self.qweight(w), b, self.stride, self.padding)


class QLinear(_QWeight):
    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.setup(fc.weight, fc.bias)
        self.in_features, self.out_features = fc.in_features, fc.out_features

    def forward(self, x):
        if self.export:
            return F.linear(x, self.qweight(None), self.w_bias)
        return F.linear(x, self.qweight(self.weight), self.bias)


def fold_bn(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> nn.Conv1d:
    """Conv followed by BN (eval statistics) -> one Conv with bias."""
    fused = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    w, b = _fold(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), bn)
    fused.weight.data, fused.bias.data = w.detach(), b.detach()
    return fused
