"""The QAT student's export graph rewritten in ops that ExecuTorch's XNNPACK partitioner takes whole, for the
`executorch-*` formats. Export-only: the models' own source (and so every other artifact's bytes) is untouched.

The maths is the same op for op, and the quantisation is the QAT model's own: the same Q/DQ ops with the same
frozen scales (symmetric, zero point 0, per-channel int8 weights), not a PT2E quantizer's recalibration. What
changes is only how a few steps are spelled, each a rejection the partitioner reported (WhyNoPartition):

- `unsqueeze(1)` (not on the trailing dimension) -> `reshape(B, 1, -1)`;
- the mel weight `mel.unsqueeze(-1)` computed in the graph ("weight not a static param") -> a buffer;
- `amax` over a dimension -> `reshape(B, 1, 1, -1).max(dim=3, keepdim=True)`;
- the time mean over (B, C, T) -> `unsqueeze(-1).mean((2, 3), keepdim=True)`;
- the head: int8 weights dequantised in the graph feeding float logits ("expected output node to have a
  dequantized node": XNNPACK's int8 GEMM wants a quantised output, which the QAT model deliberately has not)
  -> the same dequantised weights as a float buffer, so the head is an f32 GEMM of the int8-grid activations
  and int8-grid weights: the products the int8 GEMM sums, in float.

- the DFT conv (kernel 801, stride 400 over the waveform) -> the same int8 weights cut into blocks of one hop, as
  a kernel-3 conv over the waveform reshaped to (B, hop, blocks): XNNPACK's int8 conv took 2.1-3.2 ms for the
  strided 801-tap kernel at 2 s of audio and 0.46-0.58 ms blocked, with identical outputs (measured here on a
  tiny student). The graph then takes whole hops: a caller zero-pads the clip to the next multiple of the hop,
  which changes nothing when the kernel is one sample longer than a whole number of hops (801 = 2 x 400 + 1:
  the same frames, the same peak; `blocked_dft` is False, and the plain conv kept, otherwise).

XNNPACK reshapes allow one dynamic dimension, so the graph has a batch of 1 and any number of hops; `Runner`
feeds clips one at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.models.frontend import LEVEL_FLOOR
from edgeser.quant.ops import QD


def dequantised(m) -> torch.Tensor:
    """The int8 weights of a frozen QConv1d / QLinear times their scales: exactly the values it dequantises."""
    return m.w_int8.float() * m.w_scale.reshape(-1, *([1] * (m.w_int8.dim() - 1)))


def blocked_dft_weight(dft, hop: int) -> torch.Tensor:
    """The DFT conv's int8 weights (2F, 1, K) at stride `hop` as a stride-1 conv over (hop channels, blocks):
    (2F, hop, ceil(K / hop)), the taps zero-padded to whole blocks."""
    k = dft.w_int8.shape[-1]
    taps = -(-k // hop)
    w = torch.zeros(dft.w_int8.shape[0], taps * hop, dtype=torch.int8)
    w[:, :k] = dft.w_int8[:, 0]
    return w.reshape(-1, taps, hop).transpose(1, 2).contiguous()


def _max_last(x: torch.Tensor, batch: int) -> torch.Tensor:
    """max over everything but the batch, as (batch, 1, 1, 1)."""
    return x.reshape(batch, 1, 1, -1).max(dim=3, keepdim=True)[0]


class DelegableGraph(nn.Module):
    """`q`: QuantStudent.to_export() (quantized_decomposed Q/DQ ops, int8 weight buffers)."""

    def __init__(self, q):
        super().__init__()
        self.q = q
        self.register_buffer("mel_w", q.frontend.fe.mel.unsqueeze(-1).clone())
        dft, hop = q.frontend.dft, q.frontend.hop
        k = dft.w_int8.shape[-1]
        self.hop, self.blocks = hop, -(-k // hop)
        self.blocked_dft = k % hop == 1  # padding to whole hops adds no frame (see the module docstring)
        if self.blocked_dft:
            self.register_buffer("dft_w_blocks", blocked_dft_weight(dft, hop))
        self.register_buffer("head_w", dequantised(q.head))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        q, fe = self.q, self.q.frontend
        b = wav.shape[0]
        g = _max_last(wav.abs(), b).clamp_min(LEVEL_FLOOR).reshape(b, 1)  # frontend.peak_level
        spec = fe.dft_q(self._dft(wav / g, b))  # QuantFrontend.spectrum
        lp = torch.log(F.conv1d(spec.pow(2), self.mel_w).clamp_min(1e-10))  # LogMel.log_power
        peak = _max_last(lp, b).reshape(b, 1, 1)  # LogMel.normalise
        mel = (torch.maximum(lp, peak - fe.fe.range) - peak) * (2.0 / fe.fe.range) + 1.0
        x = q.in_q(mel)  # QuantStudent.classify
        for conv, cq, rq in zip(q.convs, q.conv_q, q.relu_q):
            x = rq(torch.relu(cq(conv(x))))
        pooled = x.unsqueeze(-1).mean((2, 3), keepdim=True).reshape(b, -1)
        return F.linear(q.pool_q(pooled), self.head_w, q.head.w_bias)

    def _dft(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """(B, samples) levelled waveform -> its input quantiser -> (B, 2F, T) DFT outputs, with the QConv1d's
        own int8 weights. The quantiser is elementwise, so it may follow the reshape, as XNNPACK needs (a
        dequantize feeding the conv directly)."""
        fe = self.q.frontend
        if not self.blocked_dft:
            return fe.dft(fe.in_q(x.reshape(b, 1, -1)))
        blocks = fe.in_q(x.reshape(b, -1, self.hop).transpose(1, 2))  # (B, hop, samples / hop)
        dft = fe.dft
        w = QD.dequantize_per_channel(self.dft_w_blocks, dft.w_scale, dft.w_zp, 0, -127, 127, torch.int8)
        return F.conv1d(blocks, w)
