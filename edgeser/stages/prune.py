"""Stage 4: prune redundant channels of the student body with torch-pruning, then fine-tune with KD.

Targets: a channel ratio at once, or steps until a MACs budget or a measured onnxruntime latency is met.
Channel counts are rounded to the target profile's multiple (e.g. 8 for TensorRT and the ANE).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from edgeser import distributed as dist
from edgeser import seeds
from edgeser.models.io import load_student, save_model
from edgeser.run_dir import METRICS, MODEL, stage_file
from edgeser.stage_spec import Stage
from edgeser.stages.common import (LOGITS, Context, kd_fit_for, kd_set_for, model_stats, relu_unsigned,
                                   student_file_config, student_select)
from edgeser.train import evaluate


def prune_body(body: torch.nn.Module, n_mels: int, ratio: float, round_to: int) -> None:
    """Magnitude-prune output channels of every conv group (BN follows); the classifier head is kept whole."""
    example = torch.randn(2, n_mels, 64)
    pruner = tp.pruner.BasePruner(
        body, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[body.head], round_to=round_to if round_to > 1 else None)
    pruner.step()


def int8_latency_ms(student, calib: torch.Tensor, samples: int, runs: int = 50, relu_unsigned: bool = False) -> float:
    """p50 latency (batch 1, 1 thread) of the student as INT8 ONNX: calibrated Q/DQ, no training."""
    from edgeser.export.onnx_export import export_onnx
    from edgeser.quant.qstudent import QuantStudent
    from edgeser.quant.calibrate import calibrate
    from edgeser.runtimes import latency_ms, onnx_runner

    q = QuantStudent(student, relu_unsigned=relu_unsigned)
    calibrate(q, calib, 2, 16)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "probe.onnx"
        export_onnx(q.to_export(), samples, path)
        return latency_ms(onnx_runner(path), np.zeros(samples, np.float32), runs)["p50"]


def _measure(ctx: Context, model, target: str, samples: int) -> float:
    if target == "macs":
        return model_stats(model, samples)["macs"]
    # under torchrun rank 0 measures and every rank gets its number, so all ranks prune the same channels
    return dist.on_main(lambda: int8_latency_ms(model, ctx.corpus.splits["train"].x[:32], samples,
                                                   relu_unsigned=relu_unsigned(ctx)))


def prune_to_target(ctx: Context, model, samples: int) -> list[dict]:
    """Prune in steps, fine-tuning between them, until the recipe's MACs or latency target holds."""
    cfg = ctx.recipe.prune
    limit = cfg.macs_budget if cfg.target == "macs" else cfg.latency_ms
    n_mels = model.frontend.mel.shape[0]
    steps = [{"step": 0, "value": _measure(ctx, model, cfg.target, samples),
              "channels": student_file_config(ctx, model.body)["channels"]}]
    while steps[-1]["value"] > limit and len(steps) <= cfg.max_steps:
        before = steps[-1]["channels"]
        prune_body(model.body, n_mels, cfg.step_ratio, ctx.target.channel_multiple)
        channels = student_file_config(ctx, model.body)["channels"]
        if channels == before:  # nothing left to remove at this rounding
            break
        if cfg.step_epochs:
            step_cfg = cfg.model_copy(update={"epochs": cfg.step_epochs, "min_steps": 0})
            kd = kd_set_for(ctx)
            kd_fit_for(ctx, model, kd, step_cfg, ctx.recipe.seed + seeds.PRUNE_STEP + len(steps),
                       f"prune step {len(steps)}", select=student_select(kd, step_cfg.select))
        steps.append({"step": len(steps), "value": _measure(ctx, model, cfg.target, samples), "channels": channels})
        ctx.log(f"prune step {steps[-1]['step']}: channels {channels}, {cfg.target} {steps[-1]['value']:.4g}")
    return steps


def run(ctx: Context) -> dict:
    cfg, corpus = ctx.recipe.prune, ctx.corpus
    model, scfg = load_student(ctx.stage_dir("distill") / "model.pt")
    samples = corpus.splits["test"].x.shape[1]
    before = model_stats(model, samples)
    info, steps = {}, None
    if cfg.enabled and (cfg.target != "ratio" or cfg.channel_ratio > 0):
        if cfg.target == "ratio":
            prune_body(model.body, model.frontend.mel.shape[0], cfg.channel_ratio, ctx.target.channel_multiple)
        else:
            steps = prune_to_target(ctx, model, samples)
        after_prune = evaluate(model, corpus.splits["val"], corpus.classes)
        # the just-pruned model is no candidate either: on an espeak varlen fold its damaged, near-uniform outputs
        # were closer (KL) to an uncertain teacher than every fine-tuned epoch (kept, UA 33 % against 52 %)
        kd = kd_set_for(ctx)
        info = kd_fit_for(ctx, model, kd, cfg, ctx.recipe.seed + seeds.PRUNE_FIT, "prune fine-tune",
                          keep_initial=False, select=student_select(kd, cfg.select))
        info["val_ua_right_after_pruning"] = after_prune["ua"]
    save_model(ctx.stage_dir("prune") / "model.pt", model, student_file_config(ctx, model.body))
    after = model_stats(model, samples)
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes), "before": before, **after,
               "channels": student_file_config(ctx, model.body)["channels"], "train": info}
    if steps is not None:
        limit = cfg.macs_budget if cfg.target == "macs" else cfg.latency_ms
        metrics["target"] = {"kind": cfg.target, "limit": limit, "steps": steps, "met": steps[-1]["value"] <= limit}
    return ctx.finish("prune", metrics)


STAGE = Stage("prune", run, sections=("prune", "target", "train"), inputs=(stage_file("distill", MODEL), LOGITS),
              outputs=(stage_file("prune", MODEL), stage_file("prune", METRICS)))
