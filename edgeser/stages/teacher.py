"""Stage 2: the teacher. SoundNet-8 fine-tuned on the train split, or loaded from recipe.teacher.checkpoint."""
from __future__ import annotations

import torch.nn.functional as F

from edgeser.fileio import size_bytes
from edgeser.models.soundnet import SoundNet8
from edgeser.recipe import RecipeError
from edgeser.stages.common import Context, load_teacher, model_stats, save_model
from edgeser.train import evaluate, fit


def run(ctx: Context) -> dict:
    cfg, corpus = ctx.recipe.teacher, ctx.corpus
    n_classes = len(corpus.classes)
    path = ctx.stage_dir("teacher") / "model.pt"
    if cfg.checkpoint is not None:
        try:
            model = load_teacher(cfg.checkpoint)
        except Exception as e:  # a wrong file must name itself, not crash
            raise RecipeError(f"teacher.checkpoint: cannot load {cfg.checkpoint}: {e}") from None
        if model.head.fc.out_features != n_classes:
            raise RecipeError(f"teacher.checkpoint: has {model.head.fc.out_features} classes, data has {n_classes}")
        train_info = {"loaded_from": str(cfg.checkpoint)}
    else:
        model = SoundNet8(n_classes, cfg.width_mult, cfg.dropout)
        train_info = fit(model, corpus, cfg, lambda m, x, y, idx: F.cross_entropy(m(x), y),
                         seed=ctx.recipe.seed, progress=ctx.progress, desc="teacher")
    save_model(path, model, {"n_classes": n_classes, "width_mult": model.width_mult, "classes": corpus.classes})
    samples = corpus.splits["test"].x.shape[1]
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes),
               "val": evaluate(model, corpus.splits["val"], corpus.classes),
               **model_stats(model, samples), "size_bytes": size_bytes(path), "train": train_info}
    return ctx.finish("teacher", metrics)
