"""The quantised student: built from a float Student (BN folded), trained with fake-quant, exported with Q/DQ."""
from __future__ import annotations

import copy

import torch
from torch import nn

from edgeser.models.frontend import level_frames, peak_level
from edgeser.models.student import Student
from edgeser.quant.fakequant import ActQuant, QConv1d, QLinear


class QuantFrontend(nn.Module):
    """The log-mel front-end with its DFT conv in INT8 (W8A8); the peak level, power, mel, log and scaling stay
    float. The input quantiser sees the peak-levelled waveform (LogMel.frames), so its scale fits every level.

    The DFT conv is split into groups of output channels (DTFT bins), each with its own per-tensor output
    quantiser (`regroup`, at calibration): speech puts most energy in a few bins, so one scale for all 200
    outputs left the median output below one int8 step. Each group is a plain INT8 conv with per-tensor
    activations, legal on every target; the groups' outputs are concatenated before the (float) power."""

    def __init__(self, fe, group_sizes: list[int] | None = None):
        super().__init__()
        self.fe = copy.deepcopy(fe)
        self.in_q = ActQuant()
        self.kernel_samples = int(self.fe.dft.kernel_size[0])
        self.hop = int(self.fe.dft.stride[0])
        w = self.fe.dft.weight.detach()
        del self.fe.dft
        self._build(w, group_sizes or [w.shape[0]])

    def _build(self, w: torch.Tensor, sizes: list[int]) -> None:
        convs, start = [], 0
        for n in sizes:
            conv = nn.Conv1d(1, n, self.kernel_samples, stride=self.hop, bias=False)
            conv.weight.data = w[start : start + n].clone()
            q = QConv1d(conv)
            q.weight.requires_grad_(False)
            convs.append(q)
            start += n
        self.group_sizes = list(sizes)
        self.dft = nn.ModuleList(convs)
        self.dft_q = nn.ModuleList([ActQuant() for _ in sizes])

    @torch.no_grad()
    def regroup(self, wav: torch.Tensor, groups: int) -> None:
        """Order the DTFT bins by their largest output on `wav` (levelled) and split them into `groups` groups of
        about equal size, real and imaginary parts of a bin together; the mel weights follow the new order."""
        w = torch.cat([c.weight.detach() for c in self.dft])
        if groups <= 1:
            return
        spec = torch.nn.functional.conv1d((wav / peak_level(wav)).unsqueeze(1), w, stride=self.hop)
        peak = spec.abs().amax(dim=(0, 2))
        f = len(peak) // 2
        bins = torch.argsort(torch.maximum(peak[:f], peak[f:]), descending=True)
        order, sizes = [], []
        for part in torch.tensor_split(bins, groups):
            part = part.sort().values
            order += part.tolist() + (part + f).tolist()
            sizes.append(2 * len(part))
        perm = torch.tensor(order)
        self.fe.mel = self.fe.mel[:, perm].contiguous()
        self._build(w[perm], sizes)

    def forward(self, wav):
        return self.fe.normalise(self.frames(wav))

    def spectrum(self, x):
        """(B, samples) levelled waveform -> (B, 2F, T) INT8 DFT outputs, one quantiser per group of bins."""
        x = self.in_q(x.unsqueeze(1))
        parts = [q(conv(x)) for conv, q in zip(self.dft, self.dft_q)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def frames(self, wav):
        """Un-normalised log-mel per frame (B, n_mels, T): the part a stream caches."""
        return level_frames(wav, self.spectrum, self.fe.log_power)


class QuantStudent(nn.Module):
    def __init__(self, student: Student, dft_groups: list[int] | None = None):
        super().__init__()
        student = copy.deepcopy(student).eval()
        self.frontend = QuantFrontend(student.frontend, dft_groups)
        self.in_q = ActQuant()
        convs, conv_q, relu_q = [], [], []
        for block in student.body.blocks:
            conv, bn = block[0], block[1]
            convs.append(QConv1d(conv, bn))
            conv_q.append(ActQuant())
            relu_q.append(ActQuant())
        self.convs, self.conv_q, self.relu_q = nn.ModuleList(convs), nn.ModuleList(conv_q), nn.ModuleList(relu_q)
        self.pool_q = ActQuant()
        self.head = QLinear(student.body.head)
        self.out_q = ActQuant()
        self.mel_augment = None  # training only (frequency masking)

    def forward(self, wav):
        mel = self.frontend(wav)
        if self.training and self.mel_augment is not None:
            mel = self.mel_augment(mel)
        return self.classify(mel)

    def classify(self, mel):
        """Normalised log-mel (B, n_mels, T) -> logits."""
        x = self.in_q(mel)
        for conv, cq, rq in zip(self.convs, self.conv_q, self.relu_q):
            x = rq(torch.relu(cq(conv(x))))
        return self.out_q(self.head(self.pool_q(x.mean(-1))))

    def act_quants(self):
        return [m for m in self.modules() if isinstance(m, ActQuant)]

    def set_observe(self, on: bool):
        for m in self.act_quants():
            m.observe = on

    def set_bn_update(self, on: bool):
        """BN statistics follow the batches (on) or stay frozen (off); BN is folded into the convs either way."""
        for m in self.convs:
            m.bn_update = on

    def set_quant(self, on: bool):
        for m in self.modules():
            if isinstance(m, (ActQuant, QConv1d, QLinear)):
                m.enabled = on

    def to_export(self) -> "QuantStudent":
        """A copy whose graph uses quantized_decomposed Q/DQ ops and int8 weight buffers."""
        m = copy.deepcopy(self).eval()
        m.set_observe(False)
        for mod in m.modules():
            if isinstance(mod, (QConv1d, QLinear)):
                mod.freeze_int8()
                mod.export = True
            if isinstance(mod, ActQuant):
                mod.freeze_export()
        return m
