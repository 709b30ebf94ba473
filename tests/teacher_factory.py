"""Teachers defined in Python, for `teacher.module: tests.teacher_factory:<name>` (tests/test_external_teacher.py)
and the TorchScript teachers there: small waveform CNNs, no training needed to check the plumbing."""
from __future__ import annotations

import torch
from torch import nn

# the synthetic corpus's classes reversed: the corpus sorts them (angry, happy, neutral, sad)
REVERSED = ["sad", "neutral", "happy", "angry"]


class WaveCNN(nn.Module):
    """Raw waveform -> strided Conv1d stack -> mean over time -> Linear: (batch, samples) -> (batch, n_classes)."""

    def __init__(self, n_classes: int = 4, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(1, width, 16, stride=8), nn.ReLU(), nn.Conv1d(width, width, 8, stride=4),
                                  nn.ReLU())
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x.unsqueeze(1)).mean(-1))


class NamedCNN(WaveCNN):
    """A module that names its own output classes (the `classes` attribute the loader reads)."""

    def __init__(self):
        super().__init__()
        self.classes = list(REVERSED)


def build() -> nn.Module:
    """The factory of `teacher.module`: called with no arguments; the weights come from teacher.checkpoint."""
    torch.manual_seed(1234)  # a fixed init, so a test can tell it from the checkpoint's weights
    return NamedCNN()


def broken() -> nn.Module:
    raise RuntimeError("this factory fails")


def not_a_module():
    return {"weights": 1}


class TinyWav2Vec(nn.Module):
    """A wav2vec2-like classifier: a conv feature encoder over the raw waveform (strided Conv1d + GELU, 320x
    down: 20 ms frames at 16 kHz), a projection, transformer encoder layers, mean pooling, a linear head.

    normalize: each clip to zero mean and unit variance first, in the graph, as Hugging Face's
    Wav2Vec2FeatureExtractor(do_normalize=True) does for wav2vec2 / emotion2vec fine-tunes. Without it the teacher
    hears level: trained with +-6 dB random gain, the one of bench/external_teacher.py kept its own decision on
    only 82.5 % of held-out clips played 6 dB louder (espeak varlen corpus, 280 clips)."""

    def __init__(self, n_classes: int = 4, dim: int = 32, layers: int = 1, heads: int = 2, normalize: bool = False):
        super().__init__()
        self.normalize = normalize
        convs, c_in = [], 1
        for k, s in ((10, 5), (8, 4), (4, 4), (4, 4)):
            convs += [nn.Conv1d(c_in, dim, k, stride=s), nn.GELU()]
            c_in = dim
        self.encoder = nn.Sequential(*convs)
        self.norm = nn.LayerNorm(dim)
        self.transformer = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True), layers,
            enable_nested_tensor=False)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = x - x.mean(-1, keepdim=True)
            x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-7)
        h = self.norm(self.encoder(x.unsqueeze(1)).transpose(1, 2))
        return self.head(self.transformer(h).mean(1))


class LogMelCNN(nn.Module):
    """Log-mel CNN at any rate (TorchScript-able): STFT power -> triangular mel bands -> log -> Conv1d x 2 ->
    mean -> Linear."""

    def __init__(self, n_classes: int = 4, sample_rate: int = 8000, n_mels: int = 32, width: int = 32):
        super().__init__()
        self.n_fft, self.hop = int(0.032 * sample_rate), int(0.01 * sample_rate)
        self.register_buffer("window", torch.hann_window(self.n_fft))
        self.register_buffer("mel", _mel_bank(sample_rate, self.n_fft, n_mels))
        self.body = nn.Sequential(nn.Conv1d(n_mels, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
                                  nn.Conv1d(width, width, 5, padding=2, stride=2), nn.BatchNorm1d(width), nn.ReLU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True).abs() ** 2
        mel = torch.log(torch.matmul(self.mel, spec) + 1e-6)
        mel = mel - mel.mean(dim=(1, 2), keepdim=True)
        return self.head(self.body(mel).mean(-1))


def _mel_bank(sr: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular mel filters (n_mels, n_fft // 2 + 1)."""
    def mel(f):
        return 2595 * torch.log10(1 + f / 700)

    edges = 700 * (10 ** (torch.linspace(0, float(mel(torch.tensor(sr / 2.0))), n_mels + 2) / 2595) - 1)
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return torch.clamp(torch.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), min=0)


def train_briefly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 3e-3,
                  batch: int = 16, seed: int = 0, log=None) -> nn.Module:
    """A few AdamW steps of cross-entropy on (clips, labels) at the model's own rate; returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(y), (min(batch, len(y)),), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f"step {step + 1}/{steps}: loss {float(loss.detach()):.3f}")
    return model.eval()


def export_onnx(model: nn.Module, path, classes: list[str] | None, samples: int = 16000) -> None:
    """ONNX with dynamic batch and length (torch.onnx dynamo exporter), the class names in metadata_props."""
    import json
    import warnings

    import onnx

    b, n = torch.export.Dim("batch", max=4096), torch.export.Dim("samples", min=1024, max=16000 * 120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(2, samples),), str(path), dynamo=True, external_data=False,
                          input_names=["audio"], output_names=["logits"], dynamic_shapes=({0: b, 1: n},),
                          opset_version=18, verbose=False)
    if classes is not None:
        proto = onnx.load(str(path))
        proto.metadata_props.add(key="classes", value=json.dumps(classes))
        onnx.save(proto, str(path))
