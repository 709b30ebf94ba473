"""The quantised student: built from a float Student (BN folded), trained with fake-quant, exported with Q/DQ."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.models.frontend import LEVEL_FLOOR, peak_level
from edgeser.models.student import Student
from edgeser.quant.fakequant import ActQuant, QConv1d, QLinear


class BlockFrames(nn.Module):
    """(B, samples) of whole hops -> its frames (B, K, T) each divided by its peak, and the peaks (B, 1, T), for a
    kernel one sample longer than whole hops (801 = 2 x 400 + 1): the waveform reshaped to (B, hop, blocks),
    frame t = blocks t .. t + taps - 2 and the first sample of block t + taps - 1; its peak, the largest of
    those blocks' peaks and that sample. The frames end exactly at the last block: zero-padding a clip to whole
    hops adds no frame and no peak. Two spellings of the same values (bit for bit):

    - `forward`: slices of the blocks and one concat, a copy of the samples (the ONNX graphs, LiteRT). The
      one-hot convs cost 26 % of the INT8 student's time in onnxruntime (issue 17), the slices a copy;
    - `by_one_hot`: block i of each frame picked by a depthwise conv with a one-hot kernel (3 MACs a sample),
      the last block's first sample by a conv with one output channel, the peaks by the same convs: for
      ExecuTorch's XNNPACK delegate, which left dynamic slices and max pools outside it (delegable_graph).
    Im2col's Gather (and Tensor.unfold's index arithmetic) stayed outside the QNN HTP graph."""

    def __init__(self, fe):
        super().__init__()
        self.hop, self.taps, self.k = fe.hop, fe.taps, fe.kernel_samples
        if self.k % self.hop != 1:
            raise ValueError(f"blocked frames need a kernel one sample longer than whole hops, not {self.k} "
                             f"samples at a hop of {self.hop}")
        for i in range(self.taps - 1):  # depthwise one-hot kernels: block i of each frame (static weights)
            pick = torch.zeros(self.hop, 1, self.taps)
            pick[:, 0, i] = 1.0
            self.register_buffer(f"pick{i}", pick)
            self.register_buffer(f"pick_peak{i}", pick[:1].clone())
        last = torch.zeros(1, self.hop, self.taps)  # the last block's first sample (the frame's 801st), as a conv
        last[0, 0, -1] = 1.0
        self.register_buffer("pick_last", last)
        self.register_buffer("pick_last_peak", last.clone())  # its own: XNNPACK rewrites each

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        rows = x.reshape(b, -1, self.hop)  # (B, blocks, hop)
        cols = rows.transpose(1, 2)  # (B, hop, blocks)
        n = cols.shape[2] - self.taps + 1  # frames
        last = cols[:, :1, self.taps - 1:self.taps - 1 + n]  # the last block's first sample
        frames = torch.cat([cols[:, :, i:i + n] for i in range(self.taps - 1)] + [last], dim=1)  # (B, K, T)
        peak = rows.abs().amax(dim=2).unsqueeze(1)  # (B, 1, blocks)
        level = last.abs()
        for i in range(self.taps - 1):
            level = torch.maximum(level, peak[:, :, i:i + n])
        level = level.clamp_min(LEVEL_FLOOR)
        return frames / level, level

    def by_one_hot(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        rows = x.reshape(b, -1, self.hop)  # (B, blocks, hop)
        cols = rows.transpose(1, 2)  # (B, hop, blocks)
        parts = [F.conv1d(cols, getattr(self, f"pick{i}"), groups=self.hop) for i in range(self.taps - 1)]
        frames = torch.cat(parts + [F.conv1d(cols, self.pick_last)], dim=1)  # (B, K, T)
        peak = rows.abs().reshape(b, -1, 1, self.hop).max(dim=3, keepdim=True)[0].reshape(b, 1, -1)
        level = F.conv1d(cols.abs(), self.pick_last_peak)  # the frame's peak: its last sample, then its blocks
        for i in range(self.taps - 1):
            level = torch.maximum(level, F.conv1d(peak, getattr(self, f"pick_peak{i}")))
        level = level.clamp_min(LEVEL_FLOOR)
        return frames / level, level


class QuantFrontend(nn.Module):
    """The log-mel front-end with its DFT in INT8 (W8A8), each frame levelled on its own (block floating point):

        clip peak level -> frames (B, K, T) of K samples every hop -> each frame / its level -> int8
        -> DFT as a 1x1 conv over a frame's samples (int8 weights, pre-emphasis folded in) -> int8
        -> power, mel, log (float) -> + 2 log(level)

    A frame's level is its peak |sample|. In float this is the FP32 student's front-end exactly: the DFT is
    linear, so the level a frame loses before it comes back as 2 log(level) after the log. In INT8 each frame
    reaches the DFT through all of int8's steps, and its DFT outputs use the output quantiser's range whatever
    the frame's loudness: with one level per clip the quiet frames of real speech sat on a few int8 steps.
    Measured on the espeak varlen development corpus (a student distilled from a log-mel CNN teacher, 200
    validation / 280 held-out clips, the float body, each quantiser alone): the INT8 input agreed with FP32 on
    98.5 / 98.6 % of clips with one level per clip, 100 / 98.9 % levelled per frame; the INT8 output on 95.0 /
    96.4 %, and 97.5 / 98.6 %.

    `equalise` scales each DFT output channel (DTFT bin) up to the same range before the one per-tensor output
    quantiser, and folds 1/c^2 into that channel's mel weights, so the float graph is unchanged: speech puts
    most energy in a few bins, and one scale for all 200 outputs left the median output below one int8 step."""

    def __init__(self, fe):
        super().__init__()
        self.fe = copy.deepcopy(fe)
        self.in_q = ActQuant()
        self.kernel_samples = k = int(self.fe.dft.kernel_size[0])  # one frame, pre-emphasis included
        self.hop = int(self.fe.dft.stride[0])
        self.taps = -(-k // self.hop)  # the whole hops a frame touches (export graphs that frame by blocks)
        conv = nn.Conv1d(k, self.fe.dft.out_channels, 1, bias=False)
        conv.weight.data = self.fe.dft.weight.detach().reshape(-1, k, 1).clone()
        self.dft = QConv1d(conv)
        self.dft.weight.requires_grad_(False)
        self.dft_q = ActQuant()
        self.gain: float | None = None  # two_range(): the fine range's gain, a constant of the graph
        self.framer = BlockFrames(self) if k % self.hop == 1 else None
        self.im2col = False  # the same frames by im2col: Core ML converts no pad of a computed length (export/coreml)
        del self.fe.dft

    def n_frames(self, samples: int) -> int:
        return (samples - self.kernel_samples) // self.hop + 1

    def levelled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, samples) -> its frames (B, K, T), each divided by its level, and the levels (B, 1, T): the frame's
        peak |sample|, floored."""
        if self.framer is not None and not self.im2col:  # zero-padded to whole hops (a spelling of the length
            # that torch.export takes for any)
            n = x.shape[1]
            blocks = (n + self.hop - 1) // self.hop
            return self.framer(F.pad(x, (0, blocks * self.hop - n)))
        # other framings: im2col (torch.export of Tensor.unfold guards "T != 1"), an ONNX Gather
        frames = F.unfold(x[:, None, None, :], (1, self.kernel_samples), stride=(1, self.hop))
        level = frames.abs().amax(1, keepdim=True).clamp_min(LEVEL_FLOOR)
        return frames / level, level

    @torch.no_grad()
    def equalise(self, wav: torch.Tensor, max_gain: float) -> torch.Tensor:
        """Per channel k, c_k = min(max_gain, largest channel peak / channel k's peak) on `wav` (levelled):
        DFT weights row k times c_k, mel column k over c_k^2. Returns c."""
        frames, _ = self.levelled(wav / peak_level(wav))
        peak = F.conv1d(frames, self.dft.weight[: self.fe.mel.shape[1]]).abs().amax(dim=(0, 2))
        c = (peak.max() / peak.clamp_min(1e-12)).clamp(1.0, max_gain)
        self.dft.weight.mul_(c.repeat(2 if self.two_ranges else 1)[:, None, None])
        self.fe.mel.div_(c[None, :] ** 2)
        return c

    def two_range(self, gain: float) -> None:
        """Give the INT8 DFT a second, `gain` times finer output range: the DFT conv gets its rows again times
        `gain` (one conv, 2 x 2F outputs: onnxruntime fuses it into one QLinearConv; two convs on one input it
        left in float), all quantised with the first half's output scale, so the second half resolves steps
        `gain` times smaller and saturates at 1/gain of the range. Each output takes its fine value where that
        did not saturate, else the coarse one (`quantised_dft`): about log2(gain) more bits for quiet outputs,
        at twice the DFT's MACs. With one int8 range the median frame's largest DFT output used a third of it
        (frames are levelled by their sample peak), and the DFT output quantiser alone cost the FP32 student's
        decisions on 2-3 % of clips on the espeak varlen corpus."""
        if gain <= 1:
            raise ValueError(f"two_range wants a gain > 1, not {gain}")
        if self.two_ranges:
            raise ValueError("the INT8 DFT already has two ranges")
        w = self.dft.weight.detach()
        conv = nn.Conv1d(self.kernel_samples, 2 * w.shape[0], 1, bias=False)
        conv.weight.data = torch.cat([w, w * float(gain)]).clone()
        self.dft = QConv1d(conv)
        self.dft.weight.requires_grad_(False)
        self.register_buffer("fine_gain", torch.tensor(float(gain)))  # saved with the model (load_qat)
        self.gain = float(gain)  # a Python float: torch.export cannot read a buffer's value

    @property
    def two_ranges(self) -> bool:
        return self.gain is not None

    def quantised_dft(self, f: torch.Tensor, conv=None, halves=None, masked: bool = False) -> torch.Tensor:
        """(B, K, T) int8 frames (in_q's output) -> (B, 2F, T) INT8 DFT outputs, through the fine range where
        there is one (two_range). `conv(module, f)`: how the graph computes a QConv1d (default: the module).

        Spellings for graphs whose runtimes reject an op (the values are the same): halves(f) -> the coarse and
        the fine half's conv outputs as two convs, for ExecuTorch's XNNPACK partitioner, which left the split or
        slices of one conv's output outside its delegates; masked: the range chosen by an exact 0/1 mask from
        arithmetic instead of where (no LESS / SELECT: TFLite Micro and XNNPACK have neither)."""
        if not self.two_ranges:
            return self.dft_q(self.dft(f) if conv is None else conv(self.dft, f))
        if halves is not None:
            coarse, fine = (self.dft_q.quantise(h) for h in halves(f))
        else:
            y = self.dft(f) if conv is None else conv(self.dft, f)
            half = y.shape[1] // 2
            if not self.dft_q.export:  # (no slice op in an export graph)
                self.dft_q.observe_(y[:, :half])  # the scale is the coarse range's
            coarse, fine = torch.split(self.dft_q.quantise(y), half, dim=1)
        g = self.gain
        fine = fine * (1.0 / g)  # steps of scale / g
        step = self.dft_q.export_scale if self.dft_q.export else float(self.dft_q.scale)
        # saturated: +-127 or -128 steps; one step under the limit keeps a value the coarse range also rounds
        limit = (126.5 / g) * step
        if not masked:
            return torch.where(fine.abs() < limit, fine, coarse)
        # |fine| is a whole number k of steps step / g and the limit lies halfway between two, so t is
        # (126.5 - k) * 2, never 0, and t / |t| is exactly +1 where `where` keeps fine, else -1: the mask is
        # exactly 1 or 0 (not clamp(t, 0, 1): TFLite makes that RELU_0_TO_1, which TFLite Micro lacks)
        t = (limit - fine.abs()) * (2.0 * g / step)
        keep = 0.5 * (t / t.abs()) + 0.5
        return keep * fine + (1.0 - keep) * coarse

    def forward(self, wav):
        return self.fe.normalise(self.frames(wav, restore=False))

    def spectrum(self, x):
        """(B, samples) clip-levelled waveform -> (B, 2F, T) INT8 DFT outputs of the frames each levelled to its
        own peak, and those peaks (B, 1, T)."""
        frames, level = self.levelled(x)
        return self.quantised_dft(self.in_q(frames)), level

    def log_frames(self, x):
        """(B, samples) clip-levelled waveform -> its log-mel power per frame (B, n_mels, T), each frame's level
        restored."""
        spec, level = self.spectrum(x)
        return self.fe.log_power(spec) + 2.0 * torch.log(level)

    def frames(self, wav, restore: bool = True):
        """Un-normalised log-mel per frame (B, n_mels, T): the part a stream caches (frontend.level_frames: the
        clip's level comes back only with restore)."""
        g = peak_level(wav)
        lp = self.log_frames(wav / g)
        return lp + 2.0 * torch.log(g).unsqueeze(-1) if restore else lp


class QuantStudent(nn.Module):
    """The student with INT8 weights and activations. Each block is Conv (BN folded) -> [Q/DQ] -> ReLU -> Q/DQ.

    relu_unsigned (recipe qat.relu_quant): the quantiser after each ReLU is unsigned
    (zero point -128: 0..255 steps, twice the resolution of [0, max]), and there is none between a conv and its
    ReLU: onnxruntime then drops the ReLU (ReluQuantFusion) and runs each block as one QLinearConv. False: all
    symmetric (zero point 0, which TensorRT needs), with a quantiser on each conv's output too, so that
    onnxruntime still runs the convs in INT8 (without it they became float FusedConv). Kept in the buffer
    `relu_unsigned_flag` for load_qat."""

    def __init__(self, student: Student, relu_unsigned: bool = False):
        super().__init__()
        student = copy.deepcopy(student).eval()
        self.frontend = QuantFrontend(student.frontend)
        self.in_q = ActQuant()
        self.relu_unsigned = relu_unsigned
        self.register_buffer("relu_unsigned_flag", torch.tensor(relu_unsigned))
        convs, conv_q, relu_q = [], [], []
        for block in student.body.blocks:
            conv, bn = block[0], block[1]
            convs.append(QConv1d(conv, bn))
            conv_q.append(nn.Identity() if relu_unsigned else ActQuant())
            relu_q.append(ActQuant(unsigned=relu_unsigned))
        self.convs, self.conv_q, self.relu_q = nn.ModuleList(convs), nn.ModuleList(conv_q), nn.ModuleList(relu_q)
        self.pool_q = ActQuant()  # symmetric: QNN HTP's 16-bit head (onnx_export.htp_head16) needs zero point 0
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
