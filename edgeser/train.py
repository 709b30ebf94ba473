"""One training loop for every stage: AdamW, ReduceLROnPlateau on validation UA, best-epoch weights kept."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F

from edgeser.metrics import classification_metrics
from edgeser.recipe import Train


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(model, split, classes) -> dict:
    logits = predict(model, split.x)
    return classification_metrics(split.y.numpy(), logits.argmax(1).numpy(), classes)


def kd_loss(student_logits, teacher_logits, y, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  log_target=True, reduction="batchmean")
    return alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student_logits, y)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light waveform augmentation: random gain (±6 dB), circular shift, and white noise at 20-40 dB SNR."""
    b = x.shape[0]
    gain = 10 ** ((torch.rand(b, 1, generator=gen) * 12 - 6) / 20)
    shift = int(torch.randint(0, x.shape[1], (1,), generator=gen))
    x = torch.roll(x, shift, dims=1) * gain
    rms = x.pow(2).mean(1, keepdim=True).sqrt()
    snr = 20 + 20 * torch.rand(b, 1, generator=gen)
    return x + torch.randn(x.shape, generator=gen) * rms * 10 ** (-snr / 20)


def fit(model, corpus, cfg: Train, loss_fn: Callable, *, seed: int, progress=None, desc: str = "train",
        params=None, on_epoch: Callable | None = None, use_augment: bool = True) -> dict:
    """Train `model` with loss_fn(model, x, y, idx) on corpus.splits['train']; keep the best val-UA weights."""
    train, val = corpus.splits["train"], corpus.splits["val"]
    gen = torch.Generator().manual_seed(seed)
    # frozen parameters stay in the optimiser: they get no gradient (AdamW skips them) until unfrozen
    params = list(params if params is not None else model.parameters())
    history = []
    best = {"ua": -1.0, "state": copy.deepcopy(model.state_dict()), "epoch": 0}
    if cfg.epochs == 0 or not params:
        return {"history": history, "best_epoch": 0}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
    n = len(train.y)
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    task = progress.add_task(desc, total=cfg.epochs * steps) if progress else None
    for epoch in range(1, cfg.epochs + 1):
        if on_epoch:
            on_epoch(epoch)
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = train.x[idx]
            if use_augment:
                x = augment(x, gen)
            loss = loss_fn(model, x, train.y[idx], idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            if progress:
                progress.update(task, advance=1, description=f"{desc} epoch {epoch}/{cfg.epochs}")
        val_m = evaluate(model, val, corpus.classes)
        sched.step(val_m["ua"])
        history.append({"epoch": epoch, "loss": total / n, "val_ua": val_m["ua"], "lr": opt.param_groups[0]["lr"]})
        if val_m["ua"] > best["ua"]:
            best = {"ua": val_m["ua"], "state": copy.deepcopy(model.state_dict()), "epoch": epoch}
    model.load_state_dict(best["state"])
    if progress:
        progress.remove_task(task)
    return {"history": history, "best_epoch": best["epoch"], "best_val_ua": best["ua"]}
