"""What every stage shares: the run context, model builders, and artifact/metrics I/O."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeser import distributed as dist
from edgeser.fileio import load_state, save_state, write_json
from edgeser.models.soundnet import SoundNet8
from edgeser.models.student import Student
from edgeser.recipe import Recipe
from edgeser.targets import Target


@dataclass
class Context:
    recipe: Recipe
    target: Target
    run_dir: Path
    progress: object = None
    console: object = None
    corpus: object = None
    results: dict = field(default_factory=dict)
    hints: dict = field(default_factory=dict)  # cached teacher features for hint distillation, by block
    teacher_val_logits: object = None  # the teacher's logits on the validation split (distill/prune select)
    stage: str | None = None  # the stage running now, and its content key (edgeser/resume.py)
    stage_key: str | None = None

    def stage_dir(self, name: str) -> Path:
        d = self.run_dir / "stages" / name
        if dist.is_main():  # under torchrun only rank 0 writes (edgeser/distributed.py)
            d.mkdir(parents=True, exist_ok=True)
        return d

    def artifacts_dir(self) -> Path:
        d = self.run_dir / "artifacts"
        if dist.is_main():
            d.mkdir(parents=True, exist_ok=True)
        return d

    def checkpoint(self, name: str):
        """An epoch checkpoint for one training loop of the running stage (None outside the pipeline)."""
        from edgeser.resume import EpochCheckpoint

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


def save_model(path: Path, model: torch.nn.Module, config: dict) -> None:
    """Under torchrun: rank 0 writes, every rank waits until it has (call it on all ranks)."""
    if dist.is_main():
        save_state(path, {"config": config, "state_dict": model.state_dict()})
    dist.barrier()


def read_model_file(path: Path) -> tuple[dict, dict]:
    """(config, state_dict) of a model file written by save_model, checked for both parts."""
    blob = load_state(path)
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise ValueError(f"{path}: not an edgeser model file (need 'config' and 'state_dict')")
    return blob["config"], blob["state_dict"]


def load_teacher(path: Path) -> SoundNet8:
    cfg, state = read_model_file(path)
    model = SoundNet8(cfg["n_classes"], cfg.get("width_mult", 1.0), sample_rate=cfg.get("sample_rate", 16000),
                      attention=cfg.get("attention", True))
    model.load_state_dict(state)
    return model.eval()


def build_student(cfg: dict) -> Student:
    return Student(cfg["n_classes"], cfg["channels"], cfg["kernel_size"], cfg["frontend"])


def load_student(path: Path) -> tuple[Student, dict]:
    cfg, state = read_model_file(path)
    model = build_student(cfg)
    model.load_state_dict(state)
    return model.eval(), cfg


def read_metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "stages" / stage / "metrics.json").read_text())


def model_stats(model: torch.nn.Module, samples: int) -> dict:
    """Parameters and MACs for one clip (FlopCounter counts convs and matmuls; MACs = FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, samples))
    model.train(was_training)
    params = sum(p.numel() for p in model.parameters())  # front-end DFT/mel constants included
    return {"params": int(params), "macs": int(fc.get_total_flops() // 2)}
