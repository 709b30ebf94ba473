"""One training loop for every stage: AdamW, ReduceLROnPlateau on validation UA, best-epoch weights kept."""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgeser import distributed as dist
from edgeser.data.dataset import crop_starts, utterance_lengths
from edgeser.data.loader import read_batches
from edgeser.device import model_device
from edgeser.device import resolve as resolve_compute
from edgeser.metrics import classification_metrics
from edgeser.recipe import Train


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with n intra-op threads. The small student trains single-threaded: its ops are tiny, and
    on a busy 2-core machine two spinning threads per op made distillation 17x slower (504 s against 29 s)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Batched no-grad outputs of a module (put in eval mode) or of any function of a batch."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    dev = model_device(model)  # batches go to the model's device, outputs come back (no-ops on the CPU)
    return torch.cat([model(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


def predict_split(model, split, batch_size: int = 64) -> torch.Tensor:
    """Logits of a split: its whole utterances when it has them (equal lengths batched), else its clips."""
    if getattr(split, "full", None) is None:
        return predict(model, split.x, batch_size)
    from edgeser.runtimes import length_groups

    out: list = [None] * len(split.full)
    for group in length_groups(split.full):  # equal lengths batched, batch_size utterances read at a time
        for a in range(0, len(group), batch_size):
            idx = group[a : a + batch_size]
            logits = predict(model, torch.from_numpy(np.stack([split.full[i] for i in idx])), batch_size)
            for i, row in zip(idx, logits):
                out[i] = row
    return torch.stack(out)


def evaluate(model, split, classes) -> dict:
    logits = predict_split(model, split)
    return classification_metrics(split.y.numpy(), logits.argmax(1).numpy(), classes)


def kd_loss(student_logits, teacher_logits, y, temperature: float, alpha: float, labels: Callable | None = None,
            idx=None):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y); with `labels` (label_loss), the
    label term is labels(student_logits, y, idx) instead (the vote distributions of data.labels: soft)."""
    t = temperature
    teacher_logits = teacher_logits.to(student_logits.device)
    kl = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  log_target=True, reduction="batchmean")
    hard = F.cross_entropy(student_logits, y) if labels is None else labels(student_logits, y, idx)
    return alpha * t * t * kl + (1 - alpha) * hard


def class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, N / (C * n_c) over the C classes present (0 for absent ones): the weights of
    the examples average 1, and each class carries the same total weight."""
    counts = torch.bincount(y, minlength=n_classes).float()
    present = int((counts > 0).sum())
    return torch.where(counts > 0, len(y) / (present * counts.clamp(min=1)), torch.zeros(()))


def soft_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of KL(target || softmax(logits)), each row times its `weight`: the cross-entropy (less
    the targets' entropy, a constant) against a distribution; F.cross_entropy(logits, y) for one-hot targets."""
    kl = F.kl_div(F.log_softmax(logits, 1), target, reduction="none").sum(1)
    return kl.mean() if weight is None else (kl * weight).mean()


def label_loss(split, n_classes: int, balanced: bool = False) -> Callable | None:
    """The label term for batches of `split` (rows idx < len(split.y); extra rows, e.g. SMOTE, after them).

    Without vote distributions: None (plain cross-entropy on y), or with `balanced` (recipe `balanced`, the
    default) cross-entropy with each example weighted by class_weights of its class, so every class carries
    the same weight and training optimises UA rather than WA. With vote distributions (split.target,
    data.labels: soft): soft_loss against them, always class-balanced. Extra rows and rows without votes have
    one-hot targets."""
    target = getattr(split, "target", None)
    weights, n = class_weights(split.y, n_classes), len(split.y)
    if target is None:
        if not balanced:
            return None
        return lambda logits, y, idx: (F.cross_entropy(logits, y, reduction="none") * weights.to(y.device)[y]).mean()

    def loss(logits, y, idx):
        t = F.one_hot(y, n_classes).to(logits.dtype)
        if idx is not None:
            real = idx < n
            t[real.to(t.device)] = target[idx[real]].to(t.device, logits.dtype)
        return soft_loss(logits, t, weights.to(y.device)[y])

    return loss


def label_loss_name(split, labels: Callable | None) -> str:
    """What label_loss(split, ...) returned, for metrics.json."""
    if labels is None:
        return "ce"
    return "ce (class-balanced)" if getattr(split, "target", None) is None else "soft-label kl (class-balanced)"


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light waveform augmentation: random gain (±6 dB), circular shift, and white noise at 20-40 dB SNR."""
    b = x.shape[0]
    gain = 10 ** ((torch.rand(b, 1, generator=gen) * 12 - 6) / 20)
    shift = int(torch.randint(0, x.shape[1], (1,), generator=gen))
    x = torch.roll(x, shift, dims=1) * gain
    rms = x.pow(2).mean(1, keepdim=True).sqrt()
    snr = 20 + 20 * torch.rand(b, 1, generator=gen)
    return x + torch.randn(x.shape, generator=gen) * rms * 10 ** (-snr / 20)


def make_augment(cfg, samples: int, seed: int) -> Callable:
    """The waveform augmentation for training: light gain/shift/noise always, plus the recipe's switches."""
    from edgeser.checkpoint import Stochastic
    from edgeser.data.augment import Augmenter, load_noise_bank

    gen = torch.Generator().manual_seed(seed)
    bank = None
    if cfg.noise and cfg.noise_folder is not None:
        bank = load_noise_bank(cfg.noise_folder, samples)
    extra = Augmenter(time_stretch=cfg.time_stretch, pitch_shift=cfg.pitch_shift, noise=cfg.noise,
                      snr_db=cfg.snr_db, noise_bank=bank, p=cfg.p, seed=seed)
    return Stochastic(lambda x: extra(augment(x, gen)), [gen, extra.gen])


def scaled_epochs(cfg: Train, steps_per_epoch: int) -> int:
    """The epochs a loop runs: cfg.epochs, raised so that training takes at least cfg.min_steps optimiser steps
    (a small corpus has few batches per epoch: 126 clips are 4 batches, so 15 epochs were 60 steps). 0 stays 0."""
    if cfg.epochs == 0:
        return 0
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(1, steps_per_epoch)))


def plateau_epochs(cfg: Train, steps_per_epoch: int) -> int:
    """ReduceLROnPlateau's patience in epochs: cfg.plateau_steps optimiser steps, at least 2 epochs. Counted in
    epochs it halved the teacher's lr every few steps on a corpus of 4 batches per epoch, and 75 epochs ended
    at lr ~ 0 after epoch 20 (espeak small dev corpus: best epochs 12 and 14, teacher below the baseline)."""
    return max(2, math.ceil(cfg.plateau_steps / max(1, steps_per_epoch)))


def _batches(n: int, n_extra: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of row indices; rows >= n are extra rows (e.g. SMOTE samples)."""
    order = torch.randperm(n, generator=gen)
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if n_extra:
        extra = torch.randperm(n_extra, generator=gen) + n
        out += [extra[i : i + batch_size] for i in range(0, n_extra, batch_size)]
        out = [out[i] for i in torch.randperm(len(out), generator=gen)]
    return out


def fit(model, corpus, cfg: Train, loss_fn: Callable, *, seed: int, progress=None, desc: str = "train",
        params=None, on_epoch: Callable | None = None, augment_fn: Callable | None = None,
        extra=None, checkpoint=None, select: Callable | None = None, keep_initial: bool = True,
        workers: int = 0, compute=None) -> dict:
    """Train `model` with loss_fn(model, x, y, idx) on corpus.splits['train']; keep the best val-UA weights.

    `extra` (a Split, e.g. SMOTE samples in feature space) adds rows indexed from len(train) on; they are
    not augmented. `checkpoint` (checkpoint.EpochCheckpoint): saved after every epoch with the optimiser,
    scheduler, the global generators and those augment_fn and loss_fn declare (checkpoint.Stochastic); a valid
    one is continued from, with identical results. A generator they use without declaring it is not restored.
    `select(model) -> float`: what the kept weights maximise instead of val UA, the untrained model (epoch 0)
    included; QAT keeps the epoch whose outputs are closest to its FP32 student's (stages.qat.fidelity).
    `keep_initial=False`: the model as it came in is no candidate (a freshly initialised student: its
    near-uniform outputs can sit closer to an uncertain teacher than any trained epoch). `workers`: DataLoader
    processes reading the batches (data.workers; data/loader.py). `compute`: the recipe's `train` section
    (device.resolve: the CPU in fp32 when None or without CUDA; else CUDA, mixed precision outside QAT); the
    model is back on the CPU when fit returns.
    """
    train, val = corpus.splits["train"], corpus.splits["val"]
    lengths = None if train.full is None else utterance_lengths(train.full)
    gen = torch.Generator().manual_seed(seed)
    # frozen parameters stay in the optimiser: they get no gradient (AdamW skips them) until unfrozen
    params = list(params if params is not None else model.parameters())
    history = []
    best = {"ua": -1.0, "state": copy.deepcopy(model.state_dict()), "epoch": 0}
    if cfg.epochs == 0 or not params:
        return {"history": history, "best_epoch": 0}
    if select is not None:
        best["ua"] = dist.on_main(lambda: select(model)) if keep_initial else -math.inf
    comp = resolve_compute(compute, quantised=hasattr(model, "act_quants"))  # QAT (QuantStudent): fp32
    model.to(comp.device)
    for p in params:  # parameters outside the model (hint regressors) go along
        p.data = p.data.to(comp.device)
    scaler = comp.scaler()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, n_extra = len(train.y), 0 if extra is None else len(extra.y)
    # under torchrun each rank trains on its shard of every global batch of world x batch_size rows (distributed.py)
    world, progress, checkpoint = dist.world_size(), progress if dist.is_main() else None, dist.main_writes(checkpoint)
    step_loss = dist.wrap(model, loss_fn, params, seed)  # loss_fn(model, ...), under DDP when distributed
    steps = len(_batches(n, n_extra, cfg.batch_size * world, torch.Generator()))
    epochs = scaled_epochs(cfg, steps)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=plateau_epochs(cfg, steps))
    task = progress.add_task(desc, total=epochs * steps) if progress else None
    start = 1
    if checkpoint is not None:
        from edgeser.checkpoint import generators, rng_state, set_rng_state

        gens = [gen, *generators(augment_fn, loss_fn)]
        saved = checkpoint.load()
        if saved is not None:
            model.load_state_dict(saved["model"])
            with torch.no_grad():  # params may include some outside the model (hint regressors)
                for p, v in zip(params, saved["params"]):
                    p.copy_(v)
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            set_rng_state(saved["rng"], gens)
            history, best, start = saved["history"], saved["best"], saved["epoch"] + 1
            if progress:
                progress.update(task, advance=saved["epoch"] * steps)
    for epoch in range(start, epochs + 1):
        if on_epoch:
            on_epoch(epoch)
        model.train()
        total = 0.0
        # the epoch's batches and random crops are drawn first (the same draws, in the same order, as reading
        # each batch in turn), then read from the store by read_batches (data.workers processes, or this one)
        shards = [dist.shard(idx) for idx in _batches(n, n_extra, cfg.batch_size * world, gen)]
        plan = [(idx, None if train.full is None else crop_starts(lengths, idx, train.x.shape[1], gen))
                for idx, _, _ in shards if idx[0] < n]  # the train split keeps whole utterances only for
        audio = read_batches(train, plan, workers)  # data.train_crops: random (load_corpus)
        for idx, rows, weight in shards:  # (idx, len(idx), 1.0) in one process
            if idx[0] < n:
                x, y = next(audio), train.y[idx]
                if augment_fn is not None:
                    x = augment_fn(x)
            else:
                x, y = extra.x[idx - n], extra.y[idx - n]
            x, y = x.to(comp.device), y.to(comp.device)  # no-ops on the CPU
            with comp.autocast():
                loss = step_loss(x, y, idx)
            opt.zero_grad()
            scaled = loss if weight == 1 else loss * weight
            if scaler is None:
                scaled.backward()
                opt.step()
            else:
                scaler.scale(scaled).backward()
                scaler.step(opt)
                scaler.update()
            total += loss.item() * rows
            if progress:
                progress.update(task, advance=1, description=f"{desc} epoch {epoch}/{epochs}")
        total = dist.all_reduce_sum(total)
        dist.sync_module(model)  # rank 0's BatchNorm statistics and quantiser scales on every rank
        val_m = dist.on_main(lambda: evaluate(model, val, corpus.classes))  # the same val UA on every rank
        sched.step(val_m["ua"])
        history.append({"epoch": epoch, "loss": total / (n + n_extra), "val_ua": val_m["ua"], "lr": opt.param_groups[0]["lr"]})
        score = val_m["ua"] if select is None else dist.on_main(lambda: select(model))
        if select is not None:
            history[-1]["val_select"] = score
        if score > best["ua"]:
            best = {"ua": score, "state": copy.deepcopy(model.state_dict()), "epoch": epoch}
        if checkpoint is not None:
            checkpoint.save({"epoch": epoch, "model": model.state_dict(), "params": [p.detach() for p in params],
                             "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "rng": rng_state(gens), "history": history,
                             "best": best})
    model.load_state_dict(best["state"])
    model.to("cpu")
    for p in params:
        p.data = p.data.cpu()
    if progress:
        progress.remove_task(task)
    return {"history": history, "best_epoch": best["epoch"], "epochs": epochs, "steps_per_epoch": steps,
            "compute": comp.describe(),
            ("best_val_ua" if select is None else "best_val_select"): best["ua"]}
