"""Stage 4: prune redundant channels of the student body with torch-pruning, then fine-tune with KD."""
from __future__ import annotations

import torch
import torch_pruning as tp

from edgeser.stages.common import Context, load_student, model_stats, save_model
from edgeser.stages.distill import kd_fit, student_full_config
from edgeser.train import evaluate


def prune_body(body: torch.nn.Module, n_mels: int, ratio: float, round_to: int) -> None:
    """Magnitude-prune output channels of every conv group (BN follows); the classifier head is kept whole."""
    example = torch.randn(2, n_mels, 64)
    pruner = tp.pruner.BasePruner(
        body, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[body.head], round_to=round_to if round_to > 1 else None)
    pruner.step()


def run(ctx: Context) -> dict:
    cfg, corpus = ctx.recipe.prune, ctx.corpus
    model, scfg = load_student(ctx.stage_dir("distill") / "model.pt")
    samples = corpus.splits["test"].x.shape[1]
    before = model_stats(model, samples)
    info = {}
    if cfg.enabled and cfg.channel_ratio > 0:
        prune_body(model.body, model.frontend.mel.shape[0], cfg.channel_ratio, ctx.target.channel_multiple)
        after_prune = evaluate(model, corpus.splits["val"], corpus.classes)
        info = kd_fit(ctx, model, cfg, ctx.recipe.seed + 2, "prune fine-tune")
        info["val_ua_right_after_pruning"] = after_prune["ua"]
    save_model(ctx.stage_dir("prune") / "model.pt", model, student_full_config(ctx, model.body))
    after = model_stats(model, samples)
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes), "before": before, **after,
               "channels": student_full_config(ctx, model.body)["channels"], "train": info}
    return ctx.finish("prune", metrics)
