"""The QAT student's export graph rewritten in ops that ExecuTorch's XNNPACK partitioner takes whole, for the
`executorch-*` formats. Export-only: the models' own source (and so every other artifact's bytes) is untouched.

The maths is the same op for op, and the quantisation is the QAT model's own: the same Q/DQ ops with the same
frozen scales and zero points (per-channel int8 weights), not a PT2E quantizer's recalibration. What
changes is only how a few steps are spelled, each a rejection the partitioner reported (WhyNoPartition):

- `unsqueeze(1)` (not on the trailing dimension) -> `reshape(B, 1, -1)`;
- the mel weight `mel.unsqueeze(-1)` computed in the graph ("weight not a static param") -> a buffer;
- `amax` over a dimension -> `reshape(B, 1, 1, -1).max(dim=3, keepdim=True)`;
- the time mean over (B, C, T) -> `unsqueeze(-1).mean((2, 3), keepdim=True)`;
- the head: int8 weights dequantised in the graph feeding float logits ("expected output node to have a
  dequantized node": XNNPACK's int8 GEMM wants a quantised output, which the QAT model deliberately has not)
  -> the same dequantised weights as a float buffer, so the head is an f32 GEMM of the int8-grid activations
  and int8-grid weights: the products the int8 GEMM sums, in float.

- the two-range DFT's one conv, split (or sliced) in two, and its `where` (none of them delegated) -> two convs
  of the two halves' int8 rows, and an exact 0/1 mask from arithmetic (QuantFrontend.quantised_dft: halves,
  masked);
- the front-end's zero-padding to whole hops (a Pad of a computed length) -> none: the graph takes whole hops;
- QuantFrontend.combine's reshape and slices of the DFT's output -> a grouped one-hot conv (a bin's J
  positions summed) and one-hot convs picking the levels.

The graph takes whole hops: a caller zero-pads the clip to the next multiple of the hop, which changes no frame
and no level when the kernel is one sample longer than a whole number of hops (801 = 2 x 400 + 1: `whole_hops`;
the frames then end exactly at the last block). The DFT is QuantFrontend's strided int8 conv over the blocks.

XNNPACK reshapes allow one dynamic dimension, so the graph has a batch of 1 and any number of hops; `Runner`
feeds clips one at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.models.frontend import LEVEL_FLOOR


def dequantised(m) -> torch.Tensor:
    """The int8 weights of a frozen QConv1d / QLinear times their scales: exactly the values it dequantises."""
    return m.w_int8.float() * m.w_scale.reshape(-1, *([1] * (m.w_int8.dim() - 1)))


def _max_last(x: torch.Tensor, batch: int) -> torch.Tensor:
    """max over everything but the batch, as (batch, 1, 1, 1)."""
    return x.reshape(batch, 1, 1, -1).max(dim=3, keepdim=True)[0]


class DelegableGraph(nn.Module):
    """`q`: QuantStudent.to_export() (quantized_decomposed Q/DQ ops, int8 weight buffers)."""

    def __init__(self, q):
        super().__init__()
        self.q = q
        fe = q.frontend
        self.register_buffer("mel_w", fe.fe.mel.unsqueeze(-1).clone())
        self.hop, self.blocks = fe.hop, fe.taps  # the shortest input, in whole hops
        self.whole_hops = fe.blocked  # zero-padding to whole hops adds no frame
        if fe.blocked:  # QuantFrontend.combine as convs: a frame's J blocks, picked by one-hot kernels of J + 1
            j = fe.positions
            for i in range(j):  # the levels of position i, each its own buffer (a static weight: XNNPACK left
                # convs with a selected slice of one buffer outside its delegate)
                pick = torch.zeros(1, 1, j + 1)
                pick[0, 0, i] = 1.0
                self.register_buffer(f"pick_level{i}", pick)
            w = torch.zeros(fe.n_bins, j, j + 1)  # grouped (one group a bin): sum_j partial_j(block t + j)
            for i in range(j):
                w[:, i, i] = 1.0
            self.register_buffer("sum_positions", w)
        self.register_buffer("head_w", dequantised(q.head))
        if fe.two_ranges:  # the DFT's coarse and fine rows as two int8 convs (QuantFrontend.two_range)
            d, half = fe.dft, fe.dft.w_int8.shape[0] // 2
            for name, rows in (("coarse", slice(0, half)), ("fine", slice(half, None))):
                self.register_buffer(f"dft_{name}_int8", d.w_int8[rows].clone())
                self.register_buffer(f"dft_{name}_scale", d.w_scale[rows].clone())
                self.register_buffer(f"dft_{name}_zp", d.w_zp[rows].clone())
                self.register_buffer(f"dft_{name}_bias", None if d.w_bias is None else d.w_bias[rows].clone())

    def dft_halves(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-range DFT conv's coarse and fine outputs, each its own per-channel int8 conv (QConv1d's export
        forward on half the rows) of the frames through its own Q/DQ of in_q (the same values): with one Q/DQ
        feeding both convs, XNNPACK's partitioner cut the graph into two delegates there."""
        from edgeser.quant.ops import QD

        fe = self.q.frontend
        d = fe.dft

        def half(n: str) -> torch.Tensor:
            w = QD.dequantize_per_channel(getattr(self, f"dft_{n}_int8"), getattr(self, f"dft_{n}_scale"),
                                          getattr(self, f"dft_{n}_zp"), 0, -127, 127, torch.int8)
            return F.conv1d(fe.in_q(frames), w, getattr(self, f"dft_{n}_bias"), d.stride, d.padding)

        return half("coarse"), half("fine")

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        q, fe = self.q, self.q.frontend
        b = wav.shape[0]
        g = _max_last(wav.abs(), b).clamp_min(LEVEL_FLOOR).reshape(b, 1)  # frontend.peak_level
        if fe.blocked:  # every whole hop is a block (the graph takes whole hops: no slice, no pad)
            rows = (wav / g).reshape(b, -1, self.hop)
            level = rows.abs().reshape(b, -1, 1, self.hop).max(dim=3, keepdim=True)[0].reshape(b, -1, 1)
            level = level.clamp_min(LEVEL_FLOOR)
            f, level = (rows / level).reshape(b, 1, -1), level.reshape(b, 1, -1)
        else:
            f, level = fe.dft_input(wav / g)
        halves = (lambda _: self.dft_halves(f)) if fe.two_ranges else None
        spec = fe.quantised_dft(fe.in_q(f), halves=halves, masked=True)  # QuantFrontend.spectrum
        if fe.blocked:  # QuantFrontend.combine: a grouped conv of kernel J + 1 sums the frames whose last
            # block has a next sample
            spec = F.conv1d(spec * level, self.sum_positions, groups=fe.n_bins)
            top = None
            for i in range(fe.positions):
                lv = F.conv1d(level, getattr(self, f"pick_level{i}"))
                top = lv if top is None else torch.maximum(top, lv)
            spec, level = spec / top, top
        lp = torch.log(F.conv1d(spec.pow(2), self.mel_w).clamp_min(1e-10)) + 2.0 * torch.log(level)  # log_frames
        peak = _max_last(lp, b).reshape(b, 1, 1)  # LogMel.normalise
        mel = (torch.maximum(lp, peak - fe.fe.range) - peak) * (2.0 / fe.fe.range) + 1.0
        x = q.in_q(mel)  # QuantStudent.classify
        for conv, cq, rq in zip(q.convs, q.conv_q, q.relu_q):
            x = rq(torch.relu(cq(conv(x))))
        pooled = x.unsqueeze(-1).mean((2, 3), keepdim=True).reshape(b, -1)
        return F.linear(q.pool_q(pooled), self.head_w, q.head.w_bias)
