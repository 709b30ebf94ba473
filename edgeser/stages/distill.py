"""Stage 3: distil the teacher into the small student (logit KD with temperature and alpha).

The teacher's logits are computed once, on the train set plus `aug_views` augmented copies of it, and
cached in stages/distill/teacher_logits.pt; the prune fine-tune and QAT stages reuse them. Running the
big raw-waveform teacher on every batch would cost several times the student's own training.
"""
from __future__ import annotations

import dataclasses

import torch

from edgeser.data.dataset import Corpus, Split
from edgeser.fileio import load_state, save_state, sha256
from edgeser.models.student import Student, student_config
from edgeser.stages.common import Context, load_teacher, model_stats, save_model
from edgeser.train import augment, evaluate, fit, kd_loss, predict


def kd_views(train: Split, views: int, seed: int) -> Split:
    """The train split followed by `views` deterministic augmented copies."""
    gen = torch.Generator().manual_seed(seed)
    xs = [train.x] + [augment(train.x, gen) for _ in range(views)]
    return Split(torch.cat(xs), train.y.repeat(views + 1), train.speakers * (views + 1))


def kd_corpus(ctx: Context) -> tuple[Corpus, torch.Tensor]:
    """(corpus whose train split holds the augmented views, teacher logits for each of its rows)."""
    d = ctx.recipe.distill
    teacher_path = ctx.stage_dir("teacher") / "model.pt"
    train = kd_views(ctx.corpus.splits["train"], d.aug_views, ctx.recipe.seed + 100)
    cache = ctx.stage_dir("distill") / "teacher_logits.pt"
    key = f"{sha256(teacher_path)}:{d.aug_views}:{ctx.recipe.seed}:{len(train.y)}"
    blob = load_state(cache) if cache.is_file() else None
    if blob is None or blob.get("key") != key:
        teacher = load_teacher(teacher_path)
        blob = {"key": key, "logits": predict(teacher, train.x)}
        save_state(cache, blob)
    return dataclasses.replace(ctx.corpus, splits={**ctx.corpus.splits, "train": train}), blob["logits"]


def kd_objective(teacher_logits: torch.Tensor, temperature: float, alpha: float):
    def loss(model, x, y, idx):
        return kd_loss(model(x), teacher_logits[idx], y, temperature, alpha)

    return loss


def kd_fit(ctx: Context, model, cfg, seed: int, desc: str, **kw) -> dict:
    """Train `model` by KD from the cached teacher logits (shared by distill, prune and QAT)."""
    corpus, logits = kd_corpus(ctx)
    d = ctx.recipe.distill
    return fit(model, corpus, cfg, kd_objective(logits, d.temperature, d.alpha), seed=seed,
               progress=ctx.progress, desc=desc, use_augment=False, **kw)


def student_full_config(ctx: Context, body) -> dict:
    s = ctx.recipe.student
    return student_config(body) | {"frontend": s.frontend(), "classes": ctx.corpus.classes}


def run(ctx: Context) -> dict:
    cfg, s, corpus = ctx.recipe.distill, ctx.recipe.student, ctx.corpus
    torch.manual_seed(ctx.recipe.seed)
    model = Student(len(corpus.classes), s.channels, s.kernel_size, s.frontend())
    info = kd_fit(ctx, model, cfg, ctx.recipe.seed + 1, "distill")
    save_model(ctx.stage_dir("distill") / "model.pt", model, student_full_config(ctx, model.body))
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes),
               **model_stats(model, corpus.splits["test"].x.shape[1]), "train": info}
    return ctx.finish("distill", metrics)
