"""The one runner: validate everything first, then run the stages in order with progress bars."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgeser import report as report_stage
from edgeser.data.manifest import read_manifest
from edgeser.fileio import write_json
from edgeser.recipe import Recipe
from edgeser.stages import data, distill, export, prune, qat, teacher, verify
from edgeser.stages.common import Context
from edgeser.targets import load_target

STAGES = [("data", data.run), ("teacher", teacher.run), ("distill", distill.run), ("prune", prune.run),
          ("qat", qat.run), ("export", export.run), ("verify", verify.run), ("report", report_stage.run)]


def preflight(recipe: Recipe) -> None:
    """Checks that need files but write nothing: a bad manifest fails here, before the run folder exists."""
    if recipe.data.manifest is not None:
        read_manifest(recipe.data.manifest)


def compress(recipe: Recipe, run_dir: Path, console: Console | None = None, show_progress: bool = True,
             until: str = "report") -> dict:
    """Run the stages in order up to and including `until` (`teacher` for `edgeser finetune`)."""
    console = console or Console()
    target = load_target(recipe.target)
    preflight(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "report.json"):  # a run that dies must not look finished to `verify`
        (run_dir / stale).unlink(missing_ok=True)
    write_json(run_dir / "recipe.json", recipe.model_dump(mode="json"))
    torch.manual_seed(recipe.seed)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not show_progress, transient=False)
    ctx = Context(recipe=recipe, target=target, run_dir=run_dir, progress=progress, console=console)
    timings = ctx.results["stage_seconds"] = {}
    with progress:
        stages = STAGES[: [n for n, _ in STAGES].index(until) + 1]
        overall = progress.add_task("pipeline", total=len(stages))
        for name, fn in stages:
            progress.update(overall, description=f"stage: {name}")
            t = time.perf_counter()
            result = fn(ctx)
            timings[name] = round(time.perf_counter() - t, 2)
            progress.advance(overall)
            ua = result.get("test", {}).get("ua") if isinstance(result, dict) else None
            console.log(f"{name} done in {timings[name]:.1f}s" + (f", test UA {100 * ua:.1f}%" if ua is not None else ""))
    if until == "report":
        from edgeser.run_manifest import write_manifest

        write_manifest(run_dir, recipe.model_dump(mode="json"), result["artifacts"])
    return result
