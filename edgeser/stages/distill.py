"""Stage 3: distil the teacher into the small student (logit KD with temperature and alpha; edgeser/kd.py).

The teacher's logits on the train set plus its augmented views (distill.aug_views, more for a small corpus:
distill.min_kd_rows) are cached in stages/distill/teacher_logits.pt; the prune fine-tune and QAT reuse them.
"""
from __future__ import annotations

import torch

from edgeser import seeds
from edgeser.models.io import save_model
from edgeser.models.student import Student
from edgeser.run_dir import METRICS, MODEL, stage_file
from edgeser.stage_spec import Stage
from edgeser.stages.common import (LOGITS, TEACHER, Context, kd_fit_for, kd_set_for, model_stats, student_file_config,
                                   student_select)
from edgeser.train import evaluate


def run(ctx: Context) -> dict:
    cfg, s, corpus = ctx.recipe.distill, ctx.recipe.student, ctx.corpus
    torch.manual_seed(ctx.recipe.seed)
    model = Student(len(corpus.classes), s.widths(), s.kernel_size, s.frontend())
    kd = kd_set_for(ctx)
    # a freshly initialised student is no candidate: on an espeak varlen fold its near-uniform outputs were
    # closer (KL) to an uncertain teacher than every trained epoch, and distillation kept it (UA 25 %)
    info = kd_fit_for(ctx, model, kd, cfg, ctx.recipe.seed + seeds.DISTILL_FIT, "distill", use_hints=True,
                      keep_initial=False, select=student_select(kd, cfg.select))
    save_model(ctx.stage_dir("distill") / "model.pt", model, student_file_config(ctx, model.body))
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes),
               **model_stats(model, corpus.splits["test"].x.shape[1]), "train": info}
    return ctx.finish("distill", metrics)


STAGE = Stage("distill", run, sections=("student", "distill", "train"), inputs=(TEACHER,),
              outputs=(stage_file("distill", MODEL), stage_file("distill", METRICS), LOGITS))
