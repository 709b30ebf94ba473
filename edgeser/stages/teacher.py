"""Stage 2: the teacher. SoundNet-8 transferred to speech emotion (see edgeser/transfer.py), or loaded from
recipe.teacher.checkpoint; or an external teacher (teacher.onnx, torchscript, module), which is not trained: it is
probed, scored, and named in stages/teacher/model.pt (edgeser/models/external_teacher.py). `edgeser finetune` runs
this stage (after data) on its own."""
from __future__ import annotations

import torch

from edgeser import distributed as dist
from edgeser import seeds
from edgeser.fileio import size_bytes
from edgeser.models.io import load_teacher, save_model
from edgeser.errors import InputError
from edgeser.run_dir import METRICS, stage_file
from edgeser.stage_spec import Stage
from edgeser.stages.common import TEACHER, Context, model_stats
from edgeser.train import evaluate, fit, label_loss, label_loss_name, make_augment
from edgeser.transfer import build_teacher, frozen_blocks, load_source_audio, params_for, teacher_loss


def train_teacher(ctx: Context, strategy: str | None = None, desc: str = "teacher"):
    """Build and fine-tune a teacher on ctx.corpus with the recipe's strategy (or the one given)."""
    cfg, corpus = ctx.recipe.teacher, ctx.corpus
    strategy = strategy or cfg.resolved_strategy()
    model, info = build_teacher(cfg, len(corpus.classes), strategy)
    source = None
    if cfg.source_audio is not None and strategy == "transfer_attention":
        source = load_source_audio(cfg.source_audio, corpus.splits["train"].x.shape[1])
        info["source_clips"] = len(source)
    labels = label_loss(corpus.splits["train"], len(corpus.classes), cfg.balanced)  # None: plain cross-entropy
    ce = label_loss_name(corpus.splits["train"], labels)
    info["loss"] = ce if source is None else f"{cfg.ce_weight} {ce} + {cfg.mmd_weight} mmd"

    def on_epoch(epoch):
        model.freeze_bottom(frozen_blocks(strategy, epoch, cfg))

    # the batch order (seed) is shared by all ranks; augmentation and MMD picks differ per rank (rank_seed)
    info |= fit(model, corpus, cfg, teacher_loss(cfg, source, dist.rank_seed(ctx.recipe.seed), labels),
                seed=ctx.recipe.seed + seeds.TEACHER_FIT,
                progress=ctx.progress, desc=desc, params=params_for(model, strategy), on_epoch=on_epoch,
                checkpoint=ctx.checkpoint(desc), workers=ctx.recipe.data.workers, compute=ctx.recipe.train,
                augment_fn=make_augment(ctx.recipe.data.augment, corpus.splits["train"].x.shape[1],
                                        dist.rank_seed(ctx.recipe.seed)))
    model.freeze_bottom(0)
    return model, info


def run_external(ctx: Context) -> dict:
    """An external teacher: mapped onto the corpus classes and probed before model.pt is written; then scored."""
    from edgeser.models.external_teacher import Source, open_teacher, probe

    corpus, src = ctx.corpus, Source.of(ctx.recipe.teacher)
    model = open_teacher(src, corpus.classes)  # InputError: not a model, no or other class names
    train = corpus.splits["train"].x
    probe(model, train[: min(2, len(train))])  # InputError: wrong output dimensions, a fixed batch or length
    path = ctx.stage_dir("teacher") / "model.pt"
    save_model(path, torch.nn.Module(), model.file_config())  # an empty state_dict: the config names the file
    source = model.source() | {"block_features": False}  # no hint distillation (distill.hint_layers) from it
    metrics = {"source": source,
               "test": evaluate(model, corpus.splits["test"], corpus.classes),
               "val": evaluate(model, corpus.splits["val"], corpus.classes),
               **model_stats(model, corpus.splits["test"].x.shape[1]), "size_bytes": src.size_bytes(),
               "train": {"loaded_from": str(src.path), "format": src.format}}
    return ctx.finish("teacher", metrics)


def external_files(recipe) -> dict:
    """The external teacher's files (outside the run folder): their content is part of the stage's key."""
    from edgeser.models.external_teacher import Source

    if recipe.teacher.external() is None:
        return {}
    src = Source.of(recipe.teacher)
    return {src.field: src.files()}


def run(ctx: Context) -> dict:
    cfg, corpus = ctx.recipe.teacher, ctx.corpus
    if cfg.external() is not None:
        return run_external(ctx)
    n_classes = len(corpus.classes)
    if cfg.checkpoint is not None:
        try:
            model = load_teacher(cfg.checkpoint)
        except Exception as e:  # a wrong file must name itself, not crash
            raise InputError(f"teacher.checkpoint: cannot load {cfg.checkpoint}: {e}") from None
        if model.head.fc.out_features != n_classes:
            raise InputError(f"teacher.checkpoint: has {model.head.fc.out_features} classes, data has {n_classes}")
        info = {"loaded_from": str(cfg.checkpoint)}
    else:
        model, info = train_teacher(ctx)
    path = ctx.stage_dir("teacher") / "model.pt"
    save_model(path, model, model.config() | {"classes": corpus.classes})
    metrics = {"test": evaluate(model, corpus.splits["test"], corpus.classes),
               "val": evaluate(model, corpus.splits["val"], corpus.classes),
               **model_stats(model, corpus.splits["test"].x.shape[1]), "size_bytes": size_bytes(path), "train": info}
    return ctx.finish("teacher", metrics)


STAGE = Stage("teacher", run, sections=("teacher", "train"), outputs=(TEACHER, stage_file("teacher", METRICS)),
              files=external_files)
