"""A small class-conditional WaveGAN (Donahue et al. 2019, "Adversarial audio synthesis") over the raw 16 kHz
waveform. The generator maps a latent and a class embedding through a dense layer and four stride-4
transposed 1-D convolutions (kernel 25), with class-conditional batch norm (a gain and shift per class and
channel) and leaky ReLUs before each, into a tanh clip; the discriminator mirrors it with stride-4 convolutions,
leaky ReLUs and phase shuffle, and reads the class through a projection (Miyato & Koyama 2018). It generates at
the clip's own rate and length (no lower internal rate): the first layer has ceil(samples / 256) steps, the
output is cropped to `samples`.

Loss: hinge, with spectral norm on the discriminator, one discriminator step per generator step (the recipe of
the projection-discriminator GANs). WaveGAN used WGAN-GP with five critic steps per generator step; the
gradient penalty needs a second backward pass through the critic, so under a CPU time bound
(data.augment.generative.max_seconds) WGAN-GP gets several times fewer generator updates. Spectral norm bounds
the critic's Lipschitz constant as the penalty does, for one power iteration per layer.

Training batches are class-balanced (a class uniformly, then one of its clips), so the minority classes the
generator is for are seen as often as the majority. Rows are read a batch at a time (`x[idx]`). Every random
draw comes from a seeded generator; the global RNG is left as it was.
"""
from __future__ import annotations

import itertools
import math
import time

import torch
from torch import nn
from torch.nn.utils import spectral_norm

UP = 4  # stride of each layer
LAYERS = 4  # so the first layer is samples / 256 long
KERNEL = 25
Z_DIM = 64


def first_length(samples: int) -> int:
    return math.ceil(samples / UP**LAYERS)


class Generator(nn.Module):
    def __init__(self, n_classes: int, samples: int, width: int = 16, z_dim: int = Z_DIM):
        super().__init__()
        self.n_classes, self.samples, self.width, self.z_dim = n_classes, samples, width, z_dim
        self.l0 = first_length(samples)
        chans = [width * 2 ** (LAYERS - 1 - i) for i in range(LAYERS)] + [1]  # 128, 64, 32, 16, 1 at width 16
        self.embed = nn.Embedding(n_classes, z_dim)
        self.fc = nn.Linear(2 * z_dim, chans[0] * self.l0)
        self.ups = nn.ModuleList(nn.ConvTranspose1d(a, b, KERNEL, UP, padding=KERNEL // 2 - 1, output_padding=1)
                                 for a, b in itertools.pairwise(chans))
        # conditional batch norm before every layer (as in the projection-discriminator GANs): each class has
        # its own gain and shift per channel, so it picks the channels, and through them the filters, of each
        # scale; a class only in the latent (or a class bias) was not separated in a few hundred steps
        self.norms = nn.ModuleList(nn.BatchNorm1d(c, affine=False) for c in chans[:-1])
        self.gains = nn.ModuleList(nn.Embedding(n_classes, c) for c in chans[:-1])
        self.shifts = nn.ModuleList(nn.Embedding(n_classes, c) for c in chans[:-1])
        for e in [*self.gains, *self.shifts]:
            nn.init.zeros_(e.weight)
        # He init by each output's real fan-in (C_in * kernel / stride: PyTorch's default for a transposed conv
        # counts C_out * kernel), zero biases: with the defaults the signal shrinks layer by layer until the
        # clip is the biases' pattern, the same whatever the latent and the class
        nn.init.kaiming_normal_(self.fc.weight, a=0.2, nonlinearity="leaky_relu")
        nn.init.zeros_(self.fc.bias)
        for i, up in enumerate(self.ups):
            gain = 2.0 if i < len(self.ups) - 1 else 0.1  # the first clips quiet (about -20 dBFS), as speech is
            nn.init.normal_(up.weight, std=math.sqrt(gain / (up.in_channels * KERNEL / UP)))
            nn.init.zeros_(up.bias)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(len(z), -1, self.l0)
        for i, up in enumerate(self.ups):
            h = self.norms[i](h) * (1 + self.gains[i](y)[:, :, None]) + self.shifts[i](y)[:, :, None]
            h = nn.functional.leaky_relu(h, 0.2)  # with ReLU the units died within a few hundred steps
            h = up(h)
        return torch.tanh(h[:, 0, : self.samples])

    def config(self) -> dict:
        return {"n_classes": self.n_classes, "samples": self.samples, "width": self.width, "z_dim": self.z_dim}


def phase_shuffle(h: torch.Tensor, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """WaveGAN's phase shuffle: shift the whole batch by a random -n..n samples (reflect-padded), so the
    discriminator cannot key on the generator's transposed-convolution phase artifacts."""
    if n == 0 or gen is None:
        return h
    k = int(torch.randint(-n, n + 1, (), generator=gen))
    if k == 0:
        return h
    padded = nn.functional.pad(h, (max(k, 0), max(-k, 0)), mode="reflect")
    return padded[..., : h.shape[-1]] if k > 0 else padded[..., -h.shape[-1]:]


class Discriminator(nn.Module):
    def __init__(self, n_classes: int, samples: int, width: int = 16, shuffle: int = 2):
        super().__init__()
        self.samples, self.shuffle = samples, shuffle
        self.padded = first_length(samples) * UP**LAYERS
        chans = [1] + [width * 2**i for i in range(LAYERS)]  # 1, 16, 32, 64, 128
        self.convs = nn.ModuleList(spectral_norm(nn.Conv1d(a, b, KERNEL, UP, padding=KERNEL // 2 - 1))
                                   for a, b in itertools.pairwise(chans))
        self.fc = spectral_norm(nn.Linear(chans[-1] * first_length(samples), 1))
        self.project = spectral_norm(nn.Embedding(n_classes, chans[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        h = nn.functional.pad(x, (0, self.padded - x.shape[-1]))[:, None]
        for i, conv in enumerate(self.convs):
            h = nn.functional.leaky_relu(conv(h), 0.2)
            if i < len(self.convs) - 1:
                h = phase_shuffle(h, self.shuffle, gen)
        return self.fc(h.flatten(1))[:, 0] + (self.project(y) * h.mean(-1)).sum(1)


def _balanced_batch(by_class: list[torch.Tensor], batch: int, gen: torch.Generator) -> torch.Tensor:
    """Row indices: each row a class drawn uniformly among those with clips, then one of its clips."""
    present = [c for c, rows in enumerate(by_class) if len(rows)]
    cls = torch.tensor(present)[torch.randint(0, len(present), (batch,), generator=gen)]
    out = torch.empty(batch, dtype=torch.long)
    for c in cls.unique().tolist():
        sel = (cls == c).nonzero()[:, 0]
        out[sel] = by_class[c][torch.randint(0, len(by_class[c]), (len(sel),), generator=gen)]
    return out


def train_wavegan(x, y: torch.Tensor, n_classes: int, cfg, seed: int, progress=None, width: int = 16):
    """Train a generator on rows x (N, samples) with labels y, for at most cfg.steps generator steps and at
    most cfg.max_seconds of wall time: training stops before a step that would end past the bound (a step's
    time estimated as the slowest of the last 8; the first step always runs). cfg: batch_size, lr, steps, max_seconds
    (edgeser.recipe.Generative). Returns (generator in eval mode, info)."""
    start = time.perf_counter()
    y = torch.as_tensor(y).long()
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"train_wavegan: {len(x)} rows and {len(y)} labels (need as many, at least one)")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"train_wavegan: labels must lie in 0..{n_classes - 1}")
    samples = int(x.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g, d = Generator(n_classes, samples, width), Discriminator(n_classes, samples, width)
    gen = torch.Generator().manual_seed(seed + 1)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    by_class = [torch.nonzero(y == c)[:, 0] for c in range(n_classes)]
    task = progress.add_task("data: training the WaveGAN", total=cfg.steps) if progress else None
    step, recent, losses, stopped_by = 0, [], {"d": float("nan"), "g": float("nan")}, "steps"
    while step < cfg.steps:
        now = time.perf_counter()
        if step and now - start + max(recent[-8:]) > cfg.max_seconds:
            stopped_by = "time"
            break
        idx = _balanced_batch(by_class, cfg.batch_size, gen)
        real, cls = torch.as_tensor(x[idx], dtype=torch.float32), y[idx]
        z = torch.randn(len(idx), g.z_dim, generator=gen)
        fake = g(z, cls)
        loss_d = (torch.relu(1 - d(real, cls, gen)).mean() + torch.relu(1 + d(fake.detach(), cls, gen)).mean())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = -d(fake, cls, gen).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        losses = {"d": loss_d.item(), "g": loss_g.item()}
        step += 1
        recent.append(time.perf_counter() - now)
        if progress:
            progress.update(task, completed=step)
    if progress:
        progress.remove_task(task)
    g.eval()
    seconds = time.perf_counter() - start
    info = {"steps": step, "seconds": round(seconds, 3), "stopped_by": stopped_by,
            "time_bound_hit": stopped_by == "time", "max_seconds": cfg.max_seconds, "max_steps": cfg.steps,
            "median_step_seconds": round(sorted(recent)[len(recent) // 2], 4), "loss_d": losses["d"], "loss_g": losses["g"],
            "generator_params": sum(p.numel() for p in g.parameters())}
    return g, info


@torch.no_grad()
def synthesize(generator: Generator, counts: dict[int, int], samples: int, seed: int, batch: int = 64):
    """counts[c] clips of each class c (classes in sorted order): (x (M, samples) float32, y (M,) int64).
    The generator makes its own clip length; `samples` must be it."""
    if samples != generator.samples:
        raise ValueError(f"synthesize: the generator makes {generator.samples}-sample clips, {samples} asked")
    bad = [c for c in counts if not 0 <= c < generator.n_classes or counts[c] < 0]
    if bad:
        raise ValueError(f"synthesize: class(es) {bad} outside 0..{generator.n_classes - 1} or negative counts")
    gen = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((counts[c],), c, dtype=torch.long) for c in sorted(counts)] or
                  [torch.zeros(0, dtype=torch.long)])
    generator.eval()
    parts = [generator(torch.randn(len(y[i: i + batch]), generator.z_dim, generator=gen), y[i: i + batch])
             for i in range(0, len(y), batch)]
    x = torch.cat(parts) if parts else torch.zeros(0, samples)
    return x.float().contiguous(), y


def load_generator(state: dict) -> Generator:
    """A generator from {"config": Generator.config(), "state": state_dict} (edgeser.fileio.load_state)."""
    c = state["config"]
    g = Generator(int(c["n_classes"]), int(c["samples"]), int(c["width"]), int(c["z_dim"]))
    g.load_state_dict(state["state"])
    return g.eval()
