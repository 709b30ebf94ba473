"""The one runner: validate everything first, then run the stages in order with progress bars."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgeser import distributed as dist
from edgeser import seeds
from edgeser.data.manifest import read_manifest
from edgeser.fileio import sha256, write_json
from edgeser.recipe import Recipe
from edgeser.run_dir import RunDir
from edgeser.resume import StageCache, seed_everything, stage_key, stage_outputs
from edgeser.stage_spec import Stage, order
from edgeser.stages import data, distill, export, prune, qat, report, teacher, verify
from edgeser.stages.common import Context, read_metrics
from edgeser.targets import Target, load_target

# every stage, in the order their declared inputs and outputs give (edgeser/stage_spec.py)
STAGES: list[Stage] = order([data.STAGE, teacher.STAGE, distill.STAGE, prune.STAGE, qat.STAGE, export.STAGE,
                             verify.STAGE, report.STAGE])


def key_sections(stage: Stage, recipe_json: dict, target: Target, recipe: Recipe | None = None) -> dict:
    """The recipe sections a stage declares, as its key sees them: `target` is the profile's content (its
    channel multiple, batch, formats), not only its name, so editing the profile reruns what depends on it; and
    the sha256 of the files outside the run folder it declares (stage.files: an external teacher), if any."""
    out = {s: ({"name": recipe_json.get("target"), "profile": target.model_dump(mode="json")} if s == "target"
               else recipe_json.get(s)) for s in stage.sections}
    files = stage.files(recipe) if stage.files is not None and recipe is not None else {}
    if files:
        out["files"] = {field: [sha256(p) for p in paths] for field, paths in files.items()}
    if stage.layout is not None:
        out["layout"] = stage.layout
    if stage.derived is not None and recipe is not None:
        out["derived"] = stage.derived(recipe)
    return out


def preflight(recipe: Recipe) -> None:
    """Checks that need files but write nothing: a bad manifest (or one whose rows leave the corpus root), a
    teacher checkpoint that is not a weights-only edgeser model file, and an external teacher that does not load
    or names no classes fail here, before the run folder exists."""
    from edgeser.errors import InputError
    from edgeser.models.io import read_model_file

    if recipe.data.manifest is not None:
        read_manifest(recipe.data.manifest, allow_outside_root=recipe.data.allow_outside_root,
                      root=recipe.data.root)
    if recipe.teacher.external() is not None:  # the model loads (nothing unpickled) and names its classes
        from edgeser.models.external_teacher import preflight as teacher_preflight

        teacher_preflight(recipe.teacher)
    elif recipe.teacher.checkpoint is not None:
        try:
            read_model_file(recipe.teacher.checkpoint)  # torch.load(weights_only=True): a pickled object is refused
        except Exception as e:  # UnpicklingError, a corrupt zip, not an edgeser model file
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
            why = next((ln for ln in lines if "unsupported global" in ln.lower()), lines[0])  # the refused class
            raise InputError(f"teacher.checkpoint: cannot load {recipe.teacher.checkpoint}: "
                              f"{type(e).__name__}: {why}") from None


# the stage running now, for the command line's Ctrl-C message (empty between stages)
RUNNING: dict = {}


def compress(recipe: Recipe, run_dir: Path, console: Console | None = None, show_progress: bool = True,
             until: str = "report", resume: bool = False) -> dict:
    """Run the stages in order up to and including `until` (`teacher` for `edgeser finetune`).

    resume: skip every stage whose content key and outputs match its done marker, and continue training
    loops from their epoch checkpoints (edgeser/resume.py). Without it every stage runs from scratch."""
    dist.init()  # under torchrun: join the process group; only rank 0 writes and shows progress (distributed.py)
    console = (console or Console()) if dist.is_main() else Console(quiet=True)
    target = load_target(recipe.target)
    preflight(recipe)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (RunDir(run_dir).manifest, RunDir(run_dir).report("json")):  # a run that dies must not
            stale.unlink(missing_ok=True)  # look finished to `verify`
    recipe_json = recipe.model_dump(mode="json")
    if dist.is_main():
        write_json(RunDir(run_dir).recipe, recipe_json)
    cache = dist.main_only_cache(StageCache(run_dir), {s.name for s in STAGES if s.main_only})
    upstream = None
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not show_progress or not dist.is_main(), transient=False)
    ctx = Context(recipe=recipe, target=target, run_dir=run_dir, progress=progress, console=console)
    timings = ctx.results["stage_seconds"] = {}
    with progress:
        stages = STAGES[: [s.name for s in STAGES].index(until) + 1]
        overall = progress.add_task("pipeline", total=len(stages))
        for stage in stages:
            name = stage.name
            if dist.skip_stage(stage.main_only):  # rank 0 only: the other ranks are done
                break
            progress.update(overall, description=f"stage: {name}")
            t = time.perf_counter()
            key = stage_key(name, key_sections(stage, recipe_json, target, recipe), recipe.seed, upstream)
            done = cache.lookup(name, key) if resume and not stage.always_run else None
            if done is not None:
                result = ctx.results[name] = read_metrics(run_dir, name)
                console.log(f"{name}: finished before with the same inputs (key {key[:12]}), skipped")
            else:
                cache.clear(name)
                if not resume:
                    for old in ctx.stage_dir(name).glob("ckpt-*.pt") if dist.is_main() else ():
                        old.unlink()
                seed_everything(recipe.seed + seeds.STAGE[name])
                ctx.stage, ctx.stage_key = name, key
                RUNNING.update(stage=name, run_dir=str(run_dir))
                result = stage.run(ctx)
                RUNNING.clear()
                ctx.stage = ctx.stage_key = None
                if stage.digest is not None:  # an output that is not a file (the loaded corpus)
                    key = stage_key(name, key_sections(stage, recipe_json, target, recipe), recipe.seed,
                                    {"key": stage.digest(ctx), "outputs": {}})
                outputs = stage_outputs(run_dir, stage.outputs) if dist.is_main() else []
                done = cache.mark(name, key, outputs)
                for ckpt in ctx.stage_dir(name).glob("ckpt-*.pt") if dist.is_main() else ():
                    ckpt.unlink()
            upstream = done
            timings[name] = round(time.perf_counter() - t, 2)
            progress.advance(overall)
            ua = result.get("test", {}).get("ua") if isinstance(result, dict) else None
            console.log(f"{name} done in {timings[name]:.1f}s" + (f", test UA {100 * ua:.1f}%" if ua is not None else ""))
            dist.stage_done(stage.main_only)  # a barrier after every stage all ranks run
    return result
