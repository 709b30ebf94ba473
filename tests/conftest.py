"""Shared fixtures: one tiny synthetic corpus and one tiny end-to-end run, reused by the stage tests."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from edgeser.cpu_quirks import ort_int8_saturation

# Tests that need onnxruntime's INT8 kernels to compute their QDQ definition (gates at 0.99 agreement, tolerances
# of a few int8 steps). On x86 CPUs without VNNI they saturate (edgeser/cpu_quirks.py): skipped, with the reason.
ORT_INT8_EXACT = pytest.mark.skipif(ort_int8_saturation() is not None, reason=str(ort_int8_saturation()))

os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY = {
    "name": "tiny",
    "seed": 0,
    "target": "cpu",
    "data": {"synth": {"seed": 0, "clips_per_class": 24, "n_speakers": 6, "clip_seconds": 1.0}, "clip_seconds": 1.0},
    # min_steps / min_kd_rows 0: the epochs and views as given (the corpus-size scaling would train the tiny
    # corpus's 4 batches for 300 steps and 32 views; tests/test_adaptive_training.py checks the scaling)
    "teacher": {"epochs": 1, "width_mult": 0.25, "batch_size": 16, "min_steps": 0},
    "student": {"channels": [16, 16, 16, 16]},
    "distill": {"epochs": 2, "batch_size": 16, "min_kd_rows": 0},
    "prune": {"epochs": 1, "channel_ratio": 0.5, "batch_size": 16},
    "qat": {"epochs": 1, "batch_size": 16, "calib_batches": 2},
    # tiny models trained one epoch are near chance: the gates here test mechanics, not accuracy (min_ua 0
    # switches off the near-chance gate, which test_verify_cli checks with its default)
    # (min_robust_agreement: a near-chance tiny model has near-zero margins, so noise flips its decisions;
    # tests/test_robustness.py checks the gate itself)
    "verify": {"max_ua_drop_pt": 100, "min_agreement": 0.5, "latency_runs": 5, "min_ua": 0.0,
               "min_robust_agreement": 0.5, "min_cross_agreement": 0.5},
}


DEL = object()  # a value for recipe_with that removes the key


def recipe_with(*changes: tuple[str, object]) -> dict:
    """TINY with dotted keys set (value DEL removes the key)."""
    r = copy.deepcopy(TINY)
    for dotted, v in changes:
        cur, keys = r, dotted.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        if v is DEL:
            cur.pop(keys[-1], None)
        else:
            cur[keys[-1]] = v
    return r


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session")
def tiny_recipe_path(tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe") / "tiny.yaml", TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_recipe_path):
    """The whole pipeline once on tiny sizes; returns (run_dir, report)."""
    from rich.console import Console

    from edgeser.pipeline import compress
    from edgeser.recipe import load_recipe

    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    report = compress(load_recipe(tiny_recipe_path), run_dir, console=Console(quiet=True), show_progress=False)
    return run_dir, report


@pytest.fixture(scope="session")
def tiny_corpus(tiny_run):
    """The tiny run's corpus, loaded as the run recorded it (classes, splits)."""
    import json

    from edgeser.data.dataset import load_corpus
    from edgeser.recipe import validate
    from edgeser.run_manifest import run_path

    run_dir, _ = tiny_run
    recipe = validate(json.loads((run_dir / "recipe.json").read_text()))
    manifest = run_path(run_dir, json.loads((run_dir / "stages/data/metrics.json").read_text())["manifest"])
    return load_corpus(manifest, recipe.data)
