"""What every stage shares: the run context, model statistics, and the KD set and loop bound to the recipe."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeser import distributed as dist
from edgeser import seeds
from edgeser.fileio import write_json
from edgeser.kd import KDSet, kd_fit, kd_set, teacher_fidelity, view_count
from edgeser.models.student import student_config
from edgeser.recipe import Recipe
from edgeser.run_dir import MODEL, RunDir, stage_file
from edgeser.targets import Target
from edgeser.train import make_augment


@dataclass
class Context:
    recipe: Recipe
    target: Target
    run_dir: Path
    progress: object = None
    console: object = None
    corpus: object = None
    results: dict = field(default_factory=dict)
    stage: str | None = None  # the stage running now, and its content key (edgeser/resume.py)
    stage_key: str | None = None

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)

    def stage_dir(self, name: str) -> Path:
        d = self.run.stage(name)
        if dist.is_main():  # under torchrun only rank 0 writes (edgeser/distributed.py)
            d.mkdir(parents=True, exist_ok=True)
        return d

    def artifacts_dir(self) -> Path:
        d = self.run.artifacts
        if dist.is_main():
            d.mkdir(parents=True, exist_ok=True)
        return d

    def checkpoint(self, name: str):
        """An epoch checkpoint for one training loop of the running stage (None outside the pipeline)."""
        from edgeser.checkpoint import EpochCheckpoint

        if self.stage is None or self.stage_key is None:
            return None
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())
        return EpochCheckpoint(self.stage_dir(self.stage) / f"ckpt-{slug}.pt", self.stage_key)

    def log(self, msg: str) -> None:
        if self.console is not None:
            self.console.log(msg)

    def finish(self, stage: str, metrics: dict) -> dict:
        if dist.is_main():
            write_json(self.stage_dir(stage) / "metrics.json", metrics)
        self.results[stage] = metrics
        return metrics


def read_metrics(run_dir: Path, stage: str) -> dict:
    return RunDir(run_dir).read_metrics(stage)


def model_stats(model: torch.nn.Module, samples: int) -> dict:
    """Parameters and MACs for one clip (FlopCounter counts convs and matmuls; MACs = FLOPs / 2). A model run
    outside torch (an ONNX teacher) gives its own `fixed_stats`: FlopCounter would count nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    if getattr(model, "fixed_stats", None) is not None:
        return dict(model.fixed_stats)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, samples))
    model.train(was_training)
    params = sum(p.numel() for p in model.parameters())  # front-end DFT/mel constants included
    return {"params": int(params), "macs": int(fc.get_total_flops() // 2)}


# --- the KD set and loop with the recipe's settings: distill, prune and QAT call these alike (edgeser/kd.py) ---

TEACHER = stage_file("teacher", MODEL)
LOGITS = stage_file("distill", "teacher_logits.pt")


def kd_set_for(ctx: Context) -> KDSet:
    """The run's KD set (kd.kd_set) from the recipe: every KD stage calls this with the same arguments."""
    d, data, seed = ctx.recipe.distill, ctx.recipe.data, ctx.recipe.seed + seeds.KD_VIEWS
    x0 = ctx.corpus.splits["train"]
    aug = data.augment.model_dump(mode="json")
    return kd_set(ctx.corpus, ctx.run_dir / TEACHER, ctx.run_dir / LOGITS,
                  views=view_count(d.aug_views, d.min_kd_rows, len(x0.y)),
                  augment_fn=make_augment(data.augment, x0.x.shape[1], seed), seed=seed,
                  augment_key=str(sorted(aug.items())), hint_layers=d.hint_layers, store=run_store(ctx))


def run_store(ctx: Context):
    """The run's audio store when its corpus lives there (the data stage), else None (an in-memory corpus)."""
    from edgeser.data.rows import Clips, Stack

    x = ctx.corpus.splits["train"].x
    parts = x.parts if isinstance(x, Stack) else [x]  # generated clips appended (append_rows): a Stack
    return next((p.utterances.store for p in parts if isinstance(p, Clips)), None)


def kd_fit_for(ctx: Context, model, kd: KDSet, cfg, seed: int, desc: str, use_smote: bool = True, **kw) -> dict:
    """kd.kd_fit with the recipe's KD settings (distill's temperature, alpha and hints; the data augmentation
    switches) and the run's progress and epoch checkpoint. cfg: the stage's section."""
    d, aug = ctx.recipe.distill, ctx.recipe.data.augment
    return kd_fit(model, kd, cfg, temperature=d.temperature, alpha=d.alpha, seed=seed, desc=desc,
                  smote=aug.smote and use_smote, freq_mask=aug.freq_mask, clipping_db=aug.clipping_db,
                  clipping_p=aug.p, hint_weight=d.hint_weight,
                  progress=ctx.progress, checkpoint=ctx.checkpoint(desc), workers=ctx.recipe.data.workers,
                  compute=ctx.recipe.train, **kw)


def qat_layout(recipe) -> dict:
    """What the recipe's `auto` QAT choices resolve to for its export.formats (part of the qat stage's key, so a
    change of formats that changes them reruns QAT): relu_unsigned, qat.relu_quant (auto = symmetric when a
    format's runtime takes only zero points of 0, TensorRT); int32_dft, qat.dft_output (auto = int32 when every
    format runs the INT8 DFT with int32 sums, formats.Format.int32_dft)."""
    from edgeser.formats import int8_dft_only, zero_points_zero

    relu, dft, formats = recipe.qat.relu_quant, recipe.qat.dft_output, recipe.export.formats
    return {"relu_unsigned": not zero_points_zero(formats) if relu == "auto" else relu == "unsigned",
            "int32_dft": not int8_dft_only(formats) if dft == "auto" else dft == "int32"}


def relu_unsigned(ctx: Context) -> bool:
    """The recipe's qat.relu_quant for this run (qat_layout)."""
    return qat_layout(ctx.recipe)["relu_unsigned"]


def student_select(kd: KDSet, select: str):
    """fit's select for distill and prune: teacher_kl keeps the epoch closest to the teacher; ua (None) the best
    validation UA."""
    return teacher_fidelity(kd.val_logits, kd.corpus.splits["val"]) if select == "teacher_kl" else None


def student_file_config(ctx: Context, body) -> dict:
    """A student model file's config: widths as they are now, the front-end, the class names."""
    return student_config(body) | {"frontend": ctx.recipe.student.frontend(), "classes": ctx.corpus.classes}
