"""Model files: {"config", "state_dict"} written atomically by rank 0 and read weights-only, and the models
rebuilt from them (the teacher, the float student)."""
from __future__ import annotations

from pathlib import Path

import torch

from edgeser import distributed as dist
from edgeser.fileio import load_state, save_state
from edgeser.models.soundnet import SoundNet8
from edgeser.models.student import Student


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


def load_teacher(path: Path) -> torch.nn.Module:
    """The teacher stage's model: SoundNet-8, or (config kind `external`) the wrapper around the recipe's external
    teacher (edgeser/models/external_teacher.py), which refuses a file changed since the teacher stage."""
    cfg, state = read_model_file(path)
    if cfg.get("kind") == "external":
        from edgeser.models.external_teacher import load_external

        return load_external(cfg)
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
