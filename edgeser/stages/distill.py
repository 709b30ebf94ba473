"""Stage 3: distil the teacher into the small student (logit KD with temperature and alpha).

The teacher's logits are computed once, on the train set plus `aug_views` augmented copies of it (more for a
small corpus: distill.min_kd_rows), and cached in stages/distill/teacher_logits.pt; the prune fine-tune and
QAT stages reuse them. Running the big raw-waveform teacher on every batch would cost several times the
student's own training.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from edgeser import distributed as dist
from edgeser.data.dataset import Corpus, Split, random_crops
from edgeser.fileio import load_state, save_state, sha256
from edgeser.models.student import Student, student_config
from edgeser.stages.common import Context, load_teacher, model_stats, save_model
from edgeser.train import (evaluate, fit, kd_loss, label_loss, label_loss_name, make_augment, predict, predict_split,
                           torch_threads)


def kd_views(train: Split, views: int, augment_fn, seed: int = 0) -> Split:
    """The train split followed by `views` augmented copies (deterministic for the recipe's seed); where the
    split keeps whole utterances (data.train_crops: random), each copy is a new random crop of them."""
    gen, idx = torch.Generator().manual_seed(seed), torch.arange(len(train.y))
    crop = (lambda: train.x) if train.full is None else (lambda: random_crops(train.full, idx, train.x.shape[1], gen))
    xs = [train.x] + [augment_fn(crop()) for _ in range(views)]
    target = None if train.target is None else train.target.repeat(views + 1, 1)
    return Split(torch.cat(xs), train.y.repeat(views + 1), train.speakers * (views + 1), target=target)


def view_count(d, n_train: int) -> int:
    """Augmented KD views: distill.aug_views, raised (at most 32) until n_train x (1 + views) >= min_kd_rows."""
    need = math.ceil(d.min_kd_rows / max(1, n_train)) - 1 if d.min_kd_rows else 0
    return max(d.aug_views, min(32, need))


def kd_corpus(ctx: Context) -> tuple[Corpus, torch.Tensor]:
    """(corpus whose train split holds the augmented views, teacher logits for each of its rows)."""
    d, seed = ctx.recipe.distill, ctx.recipe.seed
    teacher_path = ctx.stage_dir("teacher") / "model.pt"
    x0 = ctx.corpus.splits["train"]
    views = view_count(d, len(x0.y))
    train = kd_views(x0, views, make_augment(ctx.recipe.data.augment, x0.x.shape[1], seed + 100), seed + 100)
    cache = ctx.stage_dir("distill") / "teacher_logits.pt"
    aug = ctx.recipe.data.augment.model_dump(mode="json")
    key = f"{sha256(teacher_path)}:{views}:{seed}:{len(train.y)}:{sorted(aug.items())}:{d.hint_layers}:val"
    blob = None
    if dist.is_main():  # under torchrun rank 0 reads or (re)computes the cache; the others then read its file
        blob = load_state(cache) if cache.is_file() else None
        if blob is None or blob.get("key") != key:
            teacher = load_teacher(teacher_path)
            blob = {"key": key, "logits": predict(teacher, train.x),
                    "val_logits": predict_split(teacher, ctx.corpus.splits["val"]),
                    "hints": {str(i): predict(lambda x, i=i: teacher.block_features(x, [i])[i], train.x)
                              for i in d.hint_layers}}
            save_state(cache, blob)
    dist.barrier()
    if blob is None:
        blob = load_state(cache)
        if blob.get("key") != key:
            raise RuntimeError(f"{cache}: rank {dist.rank()} computed another teacher-logit key than rank 0")
    ctx.hints = {int(k): v for k, v in blob.get("hints", {}).items()}
    ctx.teacher_val_logits = blob["val_logits"]
    return dataclasses.replace(ctx.corpus, splits={**ctx.corpus.splits, "train": train}), blob["logits"]


def teacher_fidelity(teacher_val_logits: torch.Tensor, val: Split):
    """select() for distill and prune (select: teacher_kl): minus the mean KL(teacher || student) of the softmax
    outputs over the validation utterances, so the kept epoch is the one closest to the teacher."""
    want = F.log_softmax(teacher_val_logits, 1)

    def score(model) -> float:
        got = F.log_softmax(predict_split(model, val), 1)
        return -float(F.kl_div(got, want, log_target=True, reduction="batchmean"))

    return score


def kd_objective(teacher_logits: torch.Tensor, temperature: float, alpha: float, hints=None, hint_weight=0.0,
                 labels=None):
    """Logit KD, plus (when `hints` = {block: (teacher features (N, C), regressor)}) feature distillation:
    MSE between the L2-normalised regressed student features and the teacher's, on real rows only.
    `labels` (train.label_loss): the label term against vote distributions instead of CE."""

    def loss(model, x, y, idx):
        if not hints:
            return kd_loss(model(x), teacher_logits[idx], y, temperature, alpha, labels, idx)
        logits, pooled = model.forward_features(x)
        total = kd_loss(logits, teacher_logits[idx], y, temperature, alpha, labels, idx)
        real = idx < len(next(iter(hints.values()))[0])
        if real.any():
            for feats, reg in hints.values():
                s = F.normalize(reg(pooled[real]), dim=1)
                total = total + hint_weight / len(hints) * F.mse_loss(s, F.normalize(feats[idx[real]], dim=1),
                                                                      reduction="sum") / int(real.sum())
        return total

    return loss


def live_kd_objective(source, temperature: float, alpha: float, gen: torch.Generator, crop_min: float,
                      min_samples: int, labels=None):
    """KD from `source` computed on the batch itself (QAT from its FP32 student): each batch is first cut to a
    random crop of crop_min..1 of its length, so the quantised model learns the source's decisions on short
    input too, not only at the training clip length."""
    source.eval()

    def loss(model, x, y, idx):
        n = x.shape[1]
        frac = crop_min + (1 - crop_min) * float(torch.rand((), generator=gen))
        m = max(min_samples, min(n, int(n * frac)))
        start = int(torch.randint(0, n - m + 1, (), generator=gen))
        xc = x[:, start : start + m]
        with torch.no_grad():
            target = source(xc)
        return kd_loss(model(xc), target, y, temperature, alpha, labels, idx)

    return loss


def smote_rows(model: Student, train: Split, logits: torch.Tensor, seed: int) -> tuple[Split, torch.Tensor]:
    """SMOTE in the student's feature space (its log-mel): synthetic minority-class rows, each with the
    teacher logits of its nearest real same-class row as KD target."""
    from edgeser.data.augment import smote

    feats = predict(model.frontend, train.x)
    syn, y = smote(feats, train.y, torch.Generator().manual_seed(seed))
    targets = torch.empty(len(y), logits.shape[1])
    for c in y.unique():
        real, fake = (train.y == c).nonzero()[:, 0], (y == c).nonzero()[:, 0]
        near = torch.cdist(syn[fake].flatten(1), feats[real].flatten(1)).argmin(1)
        targets[fake] = logits[real[near]]
    return Split(syn, y, ["smote"] * len(y)), targets


def kd_fit(ctx: Context, model, cfg, seed: int, desc: str, use_smote: bool = True, use_hints: bool = False,
           kd_source=None, **kw) -> dict:
    """Train `model` by KD from the cached teacher logits (shared by distill, prune and QAT), or live from
    `kd_source` on random crops of the same views (live_kd_objective; cfg.alpha and cfg.crop_min).

    Frequency masking (recipe data.augment.freq_mask) acts on the model's log-mel during training; SMOTE
    rows are used for the float student only (QAT's front-end is quantised, so it sees real audio only).
    """
    corpus, logits = kd_corpus(ctx)
    d, aug = ctx.recipe.distill, ctx.recipe.data.augment
    extra = None
    if aug.smote and use_smote:
        extra, extra_logits = smote_rows(model, corpus.splits["train"], logits, seed)
        logits = torch.cat([logits, extra_logits])
    if aug.freq_mask:
        from edgeser.data.augment import freq_mask

        gen = torch.Generator().manual_seed(dist.rank_seed(seed))  # each rank its own masks (seed on rank 0)
        model.mel_augment = lambda mel: freq_mask(mel, gen, fraction=0.2)
    hints, params = None, None
    if use_hints and d.hint_layers:
        torch.manual_seed(seed)
        width = model.body.head.in_features
        hints = {i: (f, torch.nn.Linear(width, f.shape[1])) for i, f in ctx.hints.items()}
        params = list(model.parameters()) + [p for _, reg in hints.values() for p in reg.parameters()]
    # None: CE; else class-balanced CE (cfg.balanced) or the vote distributions (data.labels: soft)
    labels = label_loss(corpus.splits["train"], len(corpus.classes), cfg.balanced)
    objective = kd_objective(logits, d.temperature, d.alpha, hints, d.hint_weight, labels)
    if kd_source is not None:
        objective = live_kd_objective(kd_source, d.temperature, cfg.alpha, torch.Generator().manual_seed(seed),
                                      cfg.crop_min, min_samples=kd_source.frontend.kernel_samples, labels=labels)
    if kd_source is None and getattr(cfg, "select", "ua") == "teacher_kl" and "select" not in kw:
        kw["select"] = teacher_fidelity(ctx.teacher_val_logits, corpus.splits["val"])
    try:
        with torch_threads(1):
            info = fit(model, corpus, cfg, objective,
                       seed=seed, progress=ctx.progress, desc=desc, extra=extra, params=params,
                       checkpoint=ctx.checkpoint(desc), **kw)
    finally:
        model.mel_augment = None
    if labels is not None:
        info["labels"] = label_loss_name(corpus.splits["train"], labels)
    views = view_count(d, len(ctx.corpus.splits["train"].y))
    return info | {"kd_views": views, "kd_rows": len(corpus.splits["train"].y),
                   "smote_rows": 0 if extra is None else len(extra.y), "hint_layers": sorted(hints or {})}


def student_full_config(ctx: Context, body) -> dict:
    s = ctx.recipe.student
    return student_config(body) | {"frontend": s.frontend(), "classes": ctx.corpus.classes}


def run(ctx: Context) -> dict:
    cfg, s, corpus = ctx.recipe.distill, ctx.recipe.student, ctx.corpus
    torch.manual_seed(ctx.recipe.seed)
    model = Student(len(corpus.classes), s.widths(), s.kernel_size, s.frontend())
    # a freshly initialised student is no candidate: on an espeak varlen fold its near-uniform outputs were
    # closer (KL) to an uncertain teacher than every trained epoch, and distillation kept it (UA 25 %)
    info = kd_fit(ctx, model, cfg, ctx.recipe.seed + 1, "distill", use_hints=True, keep_initial=False)
    save_model(ctx.stage_dir("distill") / "model.pt", model, student_full_config(ctx, model.body))
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes),
               **model_stats(model, corpus.splits["test"].x.shape[1]), "train": info}
    return ctx.finish("distill", metrics)
