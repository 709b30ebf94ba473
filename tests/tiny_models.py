"""Small hand-built INT8 SER models in export form (quantized_decomposed Q/DQ), shared by the export-check tests."""
import math

import torch
import torch.nn.functional as F

import edgeser.quant.ops  # noqa: F401  registers torch.ops.quantized_decomposed

qd = torch.ops.quantized_decomposed
SHAPE = (1, 16000)


def _qdq(x, s):
    q = qd.quantize_per_tensor(x, s, 0, -128, 127, torch.int8)
    return qd.dequantize_per_tensor(q, s, 0, -128, 127, torch.int8)


class TinySER(torch.nn.Module):
    """float DFT/mel/log front-end -> 2 x Conv1d+ReLU -> mean -> Linear (int8 if quantised)."""

    def __init__(self, quantised=True, quant_dft=False, k=16, mels=8, c=8, n_classes=4, float_logits=False,
                 w8a16_c2=False, relu_fused=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        n, f = torch.arange(400.0), torch.arange(k, dtype=torch.float32)[:, None]
        ker = torch.cat([torch.cos(2 * math.pi * f * n / 400), torch.sin(2 * math.pi * f * n / 400)])
        self.k, self.quantised, self.quant_dft = k, quantised, quant_dft
        self.float_logits, self.w8a16_c2 = float_logits, w8a16_c2  # the project's head; a bug to catch
        self.relu_fused = relu_fused  # conv -> ReLU -> Q, no Q between a conv and its ReLU (qat.relu_quant)
        self.register_buffer("dft", ker[:, None, :])
        self.register_buffer("mel", torch.rand(k, mels, generator=g))
        for name, shape in (("c1", (c, mels, 3)), ("c2", (c, c, 3)), ("fc", (n_classes, c))):
            w = torch.randn(shape, generator=g) * 0.2
            s = w.abs().flatten(1).amax(1) / 127
            q = torch.round(w / s.view(-1, *[1] * (w.dim() - 1))).clamp(-127, 127).to(torch.int8)
            self.register_buffer(f"{name}_q", q)
            self.register_buffer(f"{name}_s", s)
            self.register_buffer(f"{name}_z", torch.zeros(shape[0], dtype=torch.int64))
            self.register_buffer(f"{name}_w", w)
            self.register_buffer(f"{name}_b", torch.randn(shape[0], generator=g) * 0.1)

    def _w(self, name):
        if not self.quantised:
            return getattr(self, f"{name}_w")
        return qd.dequantize_per_channel(getattr(self, f"{name}_q"), getattr(self, f"{name}_s"),
                                         getattr(self, f"{name}_z"), 0, -127, 127, torch.int8)

    def forward(self, x):
        a = _qdq if self.quantised else (lambda t, s: t)
        if self.quant_dft:  # the project's layout: Q/DQ around the DFT conv, float mel/log island
            y = _qdq(F.conv1d(_qdq(x.unsqueeze(1), 0.01), self.dft, stride=160), 0.5)
        else:
            y = F.conv1d(x.unsqueeze(1), self.dft, stride=160)
        p = y[:, : self.k] ** 2 + y[:, self.k:] ** 2
        m = torch.log(torch.matmul(p.transpose(1, 2), self.mel).transpose(1, 2) + 1e-6)
        h = a((m - m.mean(-1, keepdim=True)) / 4.0, 0.05)
        b = (lambda t, s: t) if self.relu_fused else a
        h = a(F.relu(b(F.conv1d(h, self._w("c1"), self.c1_b, padding=1), 0.1)), 0.1)
        c2 = F.conv1d(h, self._w("c2"), self.c2_b, padding=1)
        h = a(F.relu(torch.tanh(c2) if self.w8a16_c2 else b(c2, 0.1)), 0.1)  # tanh: no INT8 layer fuses it
        h = a(h.mean(-1), 0.1)
        out = F.linear(h, self._w("fc"), self.fc_b)
        return out if self.float_logits else a(out, 0.05)
