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

    `equalise` scales each DFT output channel (DTFT bin) up to the same range before the one per-tensor output
    quantiser, and folds 1/c^2 into that channel's mel weights, so the float graph is unchanged: speech puts
    most energy in a few bins, and one scale for all 200 outputs left the median output below one int8 step."""

    def __init__(self, fe):
        super().__init__()
        self.fe = copy.deepcopy(fe)
        self.in_q = ActQuant()
        self.kernel_samples = int(self.fe.dft.kernel_size[0])
        self.hop = int(self.fe.dft.stride[0])
        self.dft = QConv1d(self.fe.dft)
        self.dft.weight.requires_grad_(False)
        self.dft_q = ActQuant()
        del self.fe.dft

    @torch.no_grad()
    def equalise(self, wav: torch.Tensor, max_gain: float) -> torch.Tensor:
        """Per channel k, c_k = min(max_gain, largest channel peak / channel k's peak) on `wav` (levelled):
        DFT weights row k times c_k, mel column k over c_k^2. Returns c."""
        x = (wav / peak_level(wav)).unsqueeze(1)
        peak = torch.nn.functional.conv1d(x, self.dft.weight, stride=self.hop).abs().amax(dim=(0, 2))
        c = (peak.max() / peak.clamp_min(1e-12)).clamp(1.0, max_gain)
        self.dft.weight.mul_(c[:, None, None])
        self.fe.mel.div_(c[None, :] ** 2)
        return c

    def forward(self, wav):
        return self.fe.normalise(self.frames(wav, restore=False))

    def spectrum(self, x):
        """(B, samples) levelled waveform -> (B, 2F, T) INT8 DFT outputs."""
        return self.dft_q(self.dft(self.in_q(x.unsqueeze(1))))

    def frames(self, wav, restore: bool = True):
        """Un-normalised log-mel per frame (B, n_mels, T): the part a stream caches."""
        return level_frames(wav, self.spectrum, self.fe.log_power, restore)


class QuantStudent(nn.Module):
    def __init__(self, student: Student):
        super().__init__()
        student = copy.deepcopy(student).eval()
        self.frontend = QuantFrontend(student.frontend)
        self.in_q = ActQuant()
        convs, conv_q, relu_q = [], [], []
        for block in student.body.blocks:
            conv, bn = block[0], block[1]
            convs.append(QConv1d(conv, bn))
            conv_q.append(ActQuant())
            relu_q.append(ActQuant())
        self.convs, self.conv_q, self.relu_q = nn.ModuleList(convs), nn.ModuleList(conv_q), nn.ModuleList(relu_q)
        self.pool_q = ActQuant()
        # No output quantiser: int8 logits are 1/127 of their range apart, so near-ties became exact ties that
        # a runtime off by one step (HTP's fp16 front-end) broke the other way. The head's INT8 GEMM gives float
        # logits; QNN HTP needs a quantised output and gets a 16-bit one (`onnx_export.htp_head16`).
        self.head = QLinear(student.body.head)
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
        return self.head(self.pool_q(x.mean(-1)))

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
