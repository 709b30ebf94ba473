"""Device profiles in edgeser/profiles/*.yaml (shipped in the wheel): what runtime a device has and which artifact
it ships. EDGESER_TARGETS names another folder of profiles."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeser.errors import InputError
from edgeser.formats import NAMES, RUNTIMES

TARGETS_DIR = Path(os.environ.get("EDGESER_TARGETS", Path(__file__).resolve().parent / "profiles"))


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    runtime: Literal[RUNTIMES]  # type: ignore[valid-type]
    primary_artifact: Literal[NAMES]  # type: ignore[valid-type]
    static_batch: int | None = Field(None, ge=1)
    channel_multiple: int = Field(1, ge=1, le=128)
    precision: Literal["int8", "fp16", "fp32"] = "int8"


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))


def load_target(name: str) -> Target:
    if name.endswith((".yaml", ".yml")):  # a profile file of one's own
        path = Path(name)
    else:  # a shipped profile: a plain name, never a path out of TARGETS_DIR
        path = TARGETS_DIR / f"{name}.yaml" if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) else None
    try:
        found = path is not None and path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        found = False
    if not found:
        raise InputError(f"target: unknown profile {name!r} (available: {', '.join(available_targets())})")
    try:
        return Target.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as e:
        raise InputError(f"target profile {path}: {e}") from None
    except (UnicodeDecodeError, RecursionError, OSError) as e:
        raise InputError(f"target profile {path}: not a readable YAML profile ({type(e).__name__})") from None
