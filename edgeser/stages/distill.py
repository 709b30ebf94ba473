"""Stage 3: distil the teacher into the small student (logit KD with temperature and alpha)."""
from __future__ import annotations

import torch

from edgeser.models.student import Student, student_config
from edgeser.stages.common import Context, load_teacher, model_stats, save_model
from edgeser.train import evaluate, fit, kd_loss


def kd_objective(teacher, temperature: float, alpha: float):
    """Loss closure: the teacher sees the same (augmented) batch as the student."""
    teacher.eval()

    def loss(model, x, y, idx):
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(model(x), t, y, temperature, alpha)

    return loss


def student_full_config(ctx: Context, body) -> dict:
    s = ctx.recipe.student
    return student_config(body) | {"frame_ms": s.frame_ms, "hop_ms": s.hop_ms, "classes": ctx.corpus.classes}


def run(ctx: Context) -> dict:
    cfg, s, corpus = ctx.recipe.distill, ctx.recipe.student, ctx.corpus
    teacher = load_teacher(ctx.stage_dir("teacher") / "model.pt")
    torch.manual_seed(ctx.recipe.seed)
    model = Student(len(corpus.classes), s.channels, s.n_mels, s.kernel_size, s.frame_ms, s.hop_ms)
    info = fit(model, corpus, cfg, kd_objective(teacher, cfg.temperature, cfg.alpha),
               seed=ctx.recipe.seed + 1, progress=ctx.progress, desc="distill")
    save_model(ctx.stage_dir("distill") / "model.pt", model, student_full_config(ctx, model.body))
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes),
               **model_stats(model, corpus.splits["test"].x.shape[1]), "train": info}
    return ctx.finish("distill", metrics)
