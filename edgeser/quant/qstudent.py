"""The quantised student: built from a float Student (BN folded), trained with fake-quant, exported with Q/DQ."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgeser.models.frontend import LEVEL_FLOOR, peak_level
from edgeser.models.student import Student
from edgeser.quant.fakequant import ActQuant, QConv1d, QLinear

# what stages/qat writes: its stage key carries it, so `--resume` re-runs QAT after a layout change (issue 17:
# per-frame -> per-block levelling) instead of keeping a model file load_qat then refuses
LAYOUT = "blocks-1"


class QuantFrontend(nn.Module):
    """The log-mel front-end with its DFT in INT8 (W8A8), levelled block by block (block floating point):

        clip peak level -> blocks of one hop, each / its own peak -> int8 -> the DFT's partial sums over each
        block, one per position j of a block in a frame (one strided int8 conv) -> int8
        -> frame t = sum_j partial_j(block t + j) x that block's level / the frame's level (float)
        -> power, mel, log (float) -> + 2 log(frame level)

    For a kernel one sample longer than J whole hops (801 = 2 x 400 + 1, `blocked`): frame t spans blocks t ..
    t + J - 1 and the first sample of block t + J, whose DFT weight (a Hann window's end, 8e-6 of its row's
    largest) is 0 in int8, as is the first one's. In float this is the FP32 student's front-end exactly: the DFT
    is linear, so what a block loses in its level comes back when the partial sums are weighted by it, and what
    the frame loses comes back as 2 log(level) after the log. In INT8 each block reaches the DFT through all of
    int8's steps whatever its loudness, and its partial sums use the output quantiser's range (with one level
    per clip the quiet frames of real speech sat on a few int8 steps; issue 11). The frame keeps a level of its
    own (the largest of its blocks'), so powers stay in the range fp16 front-ends (QNN HTP, the ANE) carry.

    Issue 17: the earlier layout levelled each frame, which needs the frames themselves (801 x T samples, each
    sample twice) divided and quantised before a 1x1 conv; in onnxruntime that copying cost more than the DFT.
    Blocks are the waveform itself, and the strided conv frames nothing. Each frame still depends on its own
    samples only, so a stream computes it once (`edgeser stream`). Measured with bench/generalization.py (the
    demo recipe, 3 speaker folds on each espeak corpus small / ravdess / varlen): INT8 UA 44.7 / 45.2 / 50.0 %
    (per frame 44.2 / 45.2 / 50.0), the robustness suite's worst INT8 = FP32 agreement 98.4 / 98.3 / 98.2 %
    (per frame 98.4 / 98.2 / 97.0); one level per clip (before edgeser 0.2) had agreed with FP32 on 50 % of
    clips at -20 dB.

    Other kernels (not J whole hops + 1) take each frame by im2col, levelled by its own peak, and a 1x1 conv.

    `equalise` scales each DFT output channel (DTFT bin) up to the same range before the one per-tensor output
    quantiser, and folds 1/c^2 into that channel's mel weights, so the float graph is unchanged: speech puts
    most energy in a few bins, and one scale for all outputs left the median output below one int8 step.

    `int32_output` (qat.dft_output int32, for onnxruntime and PyTorch graphs) drops the output quantiser: the
    partial sums stay the int32 sums of int8 products, so equalise and the fine range (`two_range`) have
    nothing left to do, and onnxruntime runs the DFT as one u8 x s8 MatMulInteger (export/int32_dft.py)."""

    def __init__(self, fe):
        super().__init__()
        self.fe = copy.deepcopy(fe)
        self.in_q = ActQuant()
        self.kernel_samples = k = int(self.fe.dft.kernel_size[0])  # one frame, pre-emphasis included
        self.hop = int(self.fe.dft.stride[0])
        self.taps = -(-k // self.hop)  # the whole hops a frame touches (J + 1 when blocked)
        self.blocked = k % self.hop == 1
        w = self.fe.dft.weight.detach()  # (2F, 1, K)
        if self.blocked:
            self.positions = j = (k - 1) // self.hop
            tail = w[:, 0, -1].abs() / w[:, 0].abs().amax(1)
            if float(tail.max()) * 127 >= 0.5:
                raise ValueError(f"the DFT kernel's last tap is {float(tail.max()):.2e} of its row's largest, not 0 "
                                 "in int8: blocked frames drop it")
            # rows k * J + j: bin k's weights on position j of a frame (a bin's positions side by side: the
            # export graphs sum them with a grouped conv)
            conv = nn.Conv1d(1, j * w.shape[0], self.hop, stride=self.hop, bias=False)
            conv.weight.data = w[:, :, : j * self.hop].reshape(j * w.shape[0], 1, self.hop).clone()
        else:
            self.positions = 1
            conv = nn.Conv1d(k, w.shape[0], 1, bias=False)
            conv.weight.data = w.reshape(-1, k, 1).clone()
        self.n_bins = int(w.shape[0])  # 2F: the DFT's outputs per frame
        self.dft = QConv1d(conv)
        self.dft.weight.requires_grad_(False)
        self.dft_q = ActQuant()
        self.gain: float | None = None  # two_range(): the fine range's gain, a constant of the graph
        self.register_buffer("blocked_flag", torch.tensor(self.blocked))  # load_qat: files of the frame layout
        self.unfold_blocks = False  # the same blocks by im2col (export/coreml.unfold_blocks)
        del self.fe.dft

    def n_frames(self, samples: int) -> int:
        return (samples - self.kernel_samples) // self.hop + 1

    def dft_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, samples) -> what the INT8 DFT conv reads, levelled, and the levels. Blocked: the clip in whole blocks
        (B, 1, blocks x hop), each divided by its peak, and those peaks (B, 1, blocks); else the frames
        (B, K, T) by im2col, each divided by its peak, and the peaks (B, 1, T). Peaks are floored."""
        b = x.shape[0]
        if self.blocked:  # zero-padded to whole hops (a spelling of the length torch.export takes for any): the
            # last block is then never a frame's (its next sample does not exist), and combine drops it
            n = x.shape[1]
            blocks = (n + self.hop - 1) // self.hop
            if self.unfold_blocks:  # (Core ML) hop - 1 zeros, a constant pad, and im2col drops the rest
                rows = F.unfold(F.pad(x, (0, self.hop - 1))[:, None, None, :], (1, self.hop),
                                stride=(1, self.hop)).transpose(1, 2)
            else:  # zeros appended as a concat: fewer than a hop, and a clip is at least one frame, so the
                # slice they are shaped from lies inside it (torch.export proves it; Core ML converts neither
                # this concat nor a pad of a computed length)
                zeros = torch.zeros_like(x[:, : blocks * self.hop - n])
                rows = torch.cat([x, zeros], dim=1).reshape(b, blocks, self.hop)
            level = rows.abs().amax(dim=2, keepdim=True).clamp_min(LEVEL_FLOOR)  # (B, blocks, 1)
            return (rows / level).reshape(b, 1, -1), level.reshape(b, 1, -1)
        # torch.export of Tensor.unfold guards "T != 1"; F.unfold does not
        frames = F.unfold(x[:, None, None, :], (1, self.kernel_samples), stride=(1, self.hop))
        level = frames.abs().amax(1, keepdim=True).clamp_min(LEVEL_FLOOR)
        return frames / level, level

    def combine(self, parts: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocked: (B, 2F x J, blocks) partial sums of the levelled blocks, their levels (B, 1, blocks) -> each
        frame's DFT (B, 2F, T), sum_j partial_j(block t + j) x level(block t + j), over the frame's level, the
        largest of its blocks', and that level (B, 1, T). Otherwise the frames' DFT and levels as they are."""
        if not self.blocked:
            return parts, level
        b, j_ = parts.shape[0], self.positions
        # frames: as many as blocks less J (the last block, zero-padded, is no frame's); position j reads blocks
        # j .. j + frames - 1, a slice with a constant end (-(J - j)): a computed one broke Core ML's conversion
        # one reshape (the conv's output then has one consumer: onnxruntime fuses the DFT into QLinearConv only
        # so), a split into positions (no Gather: QNN HTP; a select made torch.export guard "frames != 1")
        p = torch.split(parts.reshape(b, self.n_bins, j_, -1), 1, dim=2)
        lv = [level[:, :, j:j - j_] for j in range(j_)]
        top = lv[0]
        for v in lv[1:]:
            top = torch.maximum(top, v)
        spec = None  # the levels' ratios are (B, 1, T): one multiply of the partial sums each
        for j in range(j_):
            term = p[j].squeeze(2)[:, :, j:j - j_] * (lv[j] / top)
            spec = term if spec is None else spec + term
        return spec, top

    @torch.no_grad()
    def equalise(self, wav: torch.Tensor, max_gain: float) -> torch.Tensor:
        """Per channel k, c_k = min(max_gain, largest channel peak / channel k's peak) on `wav` (levelled, over
        every position's partial sums): DFT weights of bin k times c_k, mel column k over c_k^2. Returns c."""
        if self.two_ranges:
            raise ValueError("equalise before two_range")
        x, _ = self.dft_input(wav / peak_level(wav))
        d = self.dft
        out = F.conv1d(x, d.weight, None, d.stride).abs().amax(dim=(0, 2))  # (2F x J,)
        peak = out.reshape(-1, self.positions).amax(1)
        c = (peak.max() / peak.clamp_min(1e-12)).clamp(1.0, max_gain)
        self.dft.weight.mul_(c.repeat_interleave(self.positions)[:, None, None])
        self.fe.mel.div_(c[None, :] ** 2)
        return c

    def two_range(self, gain: float) -> None:
        """Give the INT8 DFT a second, `gain` times finer output range: the DFT conv gets its rows again times
        `gain` (one conv, 2 x its outputs: onnxruntime fuses it into one QLinearConv; two convs on one input it
        left in float), all quantised with the first half's output scale, so the second half resolves steps
        `gain` times smaller and saturates at 1/gain of the range. Each output takes its fine value where that
        did not saturate, else the coarse one (`quantised_dft`): about log2(gain) more bits for quiet outputs,
        at twice the DFT's MACs. With one int8 range the median frame's largest DFT output used a third of it
        (frames levelled by their sample peak), and the DFT output quantiser alone cost the FP32 student's
        decisions on 2-3 % of clips on the espeak varlen corpus."""
        if gain <= 1:
            raise ValueError(f"two_range wants a gain > 1, not {gain}")
        if self.two_ranges or self.int32:
            raise ValueError("the INT8 DFT already has two ranges" if self.two_ranges else
                             "two_range: the INT8 DFT has int32 outputs (int32_output)")
        w, d = self.dft.weight.detach(), self.dft
        conv = nn.Conv1d(w.shape[1], 2 * w.shape[0], w.shape[2], stride=d.stride, bias=False)
        conv.weight.data = torch.cat([w, w * float(gain)]).clone()
        self.dft = QConv1d(conv)
        self.dft.weight.requires_grad_(False)
        self.register_buffer("fine_gain", torch.tensor(float(gain)))  # saved with the model (load_qat)
        self.gain = float(gain)  # a Python float: torch.export cannot read a buffer's value

    @property
    def two_ranges(self) -> bool:
        return self.gain is not None

    def int32_output(self) -> None:
        """The INT8 DFT without an output quantiser (qat.dft_output int32): its outputs are the int32 sums of the
        int8 blocks and int8 weights, times the two scales, in float. Nothing is rounded after the products, so
        the one error left in the DFT is the input's int8 step (the fine range's 2x MACs, its select and
        equalise were all there to shrink the output step). onnxruntime runs it as one u8 x s8 MatMulInteger
        (export.int32_dft); PyTorch graphs (TorchScript, pt2) as a conv of the dequantised int8 values."""
        if self.two_ranges:
            raise ValueError("int32_output: the INT8 DFT has two output ranges")
        self.dft_q = None
        self.register_buffer("int32_flag", torch.tensor(True))  # load_qat

    @property
    def int32(self) -> bool:
        return self.dft_q is None

    def quantised_dft(self, f: torch.Tensor, conv=None, halves=None, masked: bool = False) -> torch.Tensor:
        """in_q's output (dft_input) -> the INT8 DFT conv's outputs (B, 2F x J, blocks), or (B, 2F, T) for
        im2col frames, through the fine range where there is one (two_range). `conv(module, f)`: how the graph
        computes a QConv1d (default: the module).

        Spellings for graphs whose runtimes reject an op (the values are the same): halves(f) -> the coarse and
        the fine half's conv outputs as two convs, for ExecuTorch's XNNPACK partitioner, which left the split or
        slices of one conv's output outside its delegates; masked: the range chosen by an exact 0/1 mask from
        arithmetic instead of where (no LESS / SELECT: TFLite Micro and XNNPACK have neither)."""
        if halves is not None and self.two_ranges:
            coarse, fine = (self.dft_q.quantise(h) for h in halves(f))
        else:
            y = self.dft(f) if conv is None else conv(self.dft, f)
            if self.int32:  # int32 sums, no output quantiser (int32_output)
                return y
            if not self.two_ranges:
                return self.dft_q(y)
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

    def spectrum(self, x, conv=None, masked: bool = False):
        """(B, samples) clip-levelled waveform -> (B, 2F, T) the frames' DFT from the INT8 DFT's outputs, each
        frame levelled by its own level, and those levels (B, 1, T). conv, masked: quantised_dft's."""
        f, level = self.dft_input(x)
        return self.combine(self.quantised_dft(self.in_q(f), conv, masked=masked), level)

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
