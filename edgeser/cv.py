"""`edgeser cv`: k-fold speaker-independent cross-validation, the whole pipeline once per fold.

Folds: leave-one-session-out (`--by session`: one fold per manifest `session`, via data.fold) or N speaker
folds (`--folds N`: speakers dealt into N groups balanced by clip count, deterministic from data.seed, via
data.fold_of; edgeser/data/manifest.py speaker_folds). Each fold is an ordinary `compress` run in RUN/fold-K
whose recipe differs only in the data section's fold setting (and its name), so `--resume` skips what a fold
finished and `edgeser verify RUN/fold-K` re-checks it. Every fold is planned and checked before anything runs
or is written; RUN/cv.json, cv.md and cv.html are written at the end (edgeser/cv_report.py).
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeser.data.manifest import Item, read_manifest, speaker_folds, speaker_split
from edgeser.errors import InputError
from edgeser.recipe import Recipe, validate

BY = ("speaker", "session")
DEFAULT_FOLDS = 5


@dataclass
class Fold:
    index: int  # from 1
    total: int
    data: dict  # what the fold sets in the recipe's data section: {"fold": session} or {"fold_of": [k, N]}
    speakers: list[str]  # the test speakers
    clips: int  # test clips in the manifest (or the synthetic corpus), before unreadable audio is skipped
    session: str | None = None
    report: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"fold-{self.index}"

    def describe(self) -> str:
        who = f"session {self.session}, speakers" if self.session is not None else "speakers"
        return f"{who} {', '.join(self.speakers) or '(none)'}, {self.clips} clips"


def corpus_items(recipe: Recipe) -> tuple[list[Item], list[Item], str]:
    """(every row, rows kept after data.label_map and data.classes, where they come from). The synthetic corpus's
    rows are derived from its settings (edgeser/data/synth.py: round-robin clips per speaker) without writing
    it: each fold's data stage writes its own, identical copy."""
    d = recipe.data
    if d.manifest is not None:
        rows = read_manifest(d.manifest, allow_outside_root=d.allow_outside_root, root=d.root)
        source = str(d.manifest)
    else:
        from edgeser.data.synth import CLASSES, speaker_params

        s = d.synth
        rows = [Item(Path("-"), label, speaker_params(s.seed, i)["name"])
                for i in range(s.n_speakers) for label in CLASSES for _ in range(i, s.clips_per_class, s.n_speakers)]
        source = "data.synth"
    rows = [dataclasses.replace(it, label=d.label_map.get(it.label, it.label)) for it in rows]
    labels = {it.label for it in rows}
    unknown = sorted(set(d.classes or []) - labels)
    if unknown:
        raise InputError(f"data.classes: {unknown} not found in {source}")
    classes = d.classes or sorted(labels)
    return rows, [it for it in rows if it.label in classes], source


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def plan_folds(recipe: Recipe, folds: int | None, by: str) -> list[Fold]:
    """The folds, each checked as its data stage will split it (speaker_split), before anything runs. A
    InputError names the setting: --folds, --by, or the recipe field."""
    if by not in BY:
        raise InputError(f"--by: {by!r} is not one of {', '.join(BY)}")
    if by == "session" and folds is not None:
        raise InputError("--folds: not with --by session, which makes one fold per manifest session")
    if folds is not None and folds < 2:
        raise InputError(f"--folds: need at least 2 folds, got {folds}")
    rows, items, source = corpus_items(recipe)
    d = recipe.data
    exists = (lambda it: it.path.is_file()) if d.manifest is not None else (lambda it: True)
    plan = []
    if by == "session":
        sessions = sorted({it.session for it in rows if it.session}, key=_natural)
        if not sessions:
            raise InputError(f"--by session: {source} has no sessions (a manifest `session` column with values); "
                              f"use --folds N for speaker folds")
        if len(sessions) < 2:
            raise InputError(f"--by session: {source} has one session ({sessions[0]}); leave-one-session-out "
                              "needs at least 2")
        for k, s in enumerate(sessions, start=1):
            test = [it for it in items if it.session == s]
            plan.append(Fold(k, len(sessions), {"fold": s}, sorted({it.speaker for it in test}),
                             sum(map(exists, test)), session=s))
        setting = "--by session"
    else:
        n = folds or DEFAULT_FOLDS
        speakers = sorted({it.speaker for it in items})
        if n > len(speakers):
            raise InputError(f"--folds: {n} folds but {source} has only {len(speakers)} speakers (each fold's test "
                              "set is at least one speaker)")
        for k, group in enumerate(speaker_folds(items, n, d.seed), start=1):
            test = [it for it in items if it.speaker in set(group)]
            plan.append(Fold(k, n, {"fold_of": [k, n]}, group, sum(map(exists, test))))
        setting = f"--folds {n}"
    for f in plan:
        if f.clips == 0:
            raise InputError(f"{setting}: {f.name} ({f.describe()}) has no test clips (after data.classes and "
                              "data.label_map, with files that exist)")
    for f in plan:
        try:
            speaker_split(items, d.val_speakers, d.test_speakers, d.seed, f.data.get("fold"),
                          tuple(f.data["fold_of"]) if "fold_of" in f.data else None)
        except InputError as e:
            raise InputError(f"{setting}: {f.name}: {e}") from None
    return plan


def fold_recipe(recipe: Recipe, fold: Fold) -> Recipe:
    """The recipe copy that runs one fold: its data section selects the fold; its name says which."""
    raw = recipe.model_dump(mode="json")
    raw["data"].update({"fold": None, "fold_of": None} | fold.data)
    suffix = f"-{fold.name}"
    raw["name"] = recipe.name[: 100 - len(suffix)] + suffix
    return validate(raw)


def _run_fold(raw: dict, run_dir: str, resume: bool, threads: int | None) -> dict:
    """One fold in a worker process (--jobs > 1): quiet, each worker on its share of the CPU threads."""
    import torch
    from rich.console import Console

    from edgeser.pipeline import compress

    if threads:
        torch.set_num_threads(threads)
    return compress(validate(raw), Path(run_dir), console=Console(quiet=True), show_progress=False, resume=resume)


def _fold_line(fold: Fold, report: dict, seconds: float, since: str = "in") -> str:
    gated = [a for a in report["artifacts"] if a.get("ua") is not None]
    arts = ", ".join(f"{a['name']} {100 * a['ua']:.1f}" for a in gated) or "no artifact scored"
    failed = [g["name"] for g in report["gates"] if not g["passed"]]
    return (f"{fold.name}/{fold.total} done {since} {seconds:.0f} s: UA % teacher {100 * report['teacher']['ua']:.1f}, "
            f"{arts}; " + ("gates pass" if not failed else f"gate FAILED: {', '.join(failed)}"))


def run_cv(recipe: Recipe, run_dir: Path, folds: int | None = None, by: str = "speaker", jobs: int = 1,
           resume: bool = False, console=None, show_progress: bool = True) -> dict:
    """Plan and check every fold (InputError before anything is written), run each as `compress` into
    RUN/fold-K (in `jobs` processes), then write RUN/cv.json, cv.md and cv.html. Returns the cv summary."""
    from rich.console import Console

    from edgeser.cv_report import summarise, write_reports
    from edgeser.pipeline import compress, preflight

    console = console or Console()
    if jobs < 1:
        raise InputError(f"--jobs: need at least 1, got {jobs}")
    preflight(recipe)
    plan = plan_folds(recipe, folds, by)
    recipes = [fold_recipe(recipe, f) for f in plan]
    if recipe.data.fold is not None or recipe.data.fold_of is not None:
        console.print("note: the recipe's data.fold / data.fold_of is replaced by each fold's own", highlight=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("cv.json", "cv.md", "cv.html"):  # a cv that dies must not look finished
        (run_dir / stale).unlink(missing_ok=True)
    console.print(f"{len(plan)} folds by {by} into {run_dir}/fold-1..{len(plan)}" + (" (resume)" if resume else ""),
                  highlight=False)
    for f in plan:
        console.print(f"  {f.name}: test {f.describe()}", highlight=False, markup=False)
    if jobs == 1:
        for f, r in zip(plan, recipes):
            console.rule(f"{f.name}/{f.total}")
            t = time.perf_counter()
            try:
                f.report = compress(r, run_dir / f.name, console=console, show_progress=show_progress, resume=resume)
            except InputError as e:
                raise InputError(f"{run_dir / f.name}: {e}") from None
            console.print(_fold_line(f, f.report, time.perf_counter() - t), highlight=False, markup=False)
    else:
        _run_parallel(plan, recipes, run_dir, jobs, resume, console)
    summary = {"recipe": recipe.name} | summarise(plan, run_dir, by)
    write_reports(run_dir, summary, recipe.name)
    return summary


def _run_parallel(plan, recipes, run_dir: Path, jobs: int, resume: bool, console) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    workers = min(jobs, len(plan))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        start = time.perf_counter()
        futures = {pool.submit(_run_fold, r.model_dump(mode="json"), str(run_dir / f.name), resume, threads): f
                   for f, r in zip(plan, recipes)}
        console.print(f"running {len(plan)} folds in {workers} processes ({threads} threads each)",
                      highlight=False)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                f = futures[fut]
                try:
                    f.report = fut.result()
                except InputError as e:
                    for p in pending:
                        p.cancel()
                    raise InputError(f"{run_dir / f.name}: {e}") from None
                line = _fold_line(f, f.report, time.perf_counter() - start, "after")
                console.print(line, highlight=False, markup=False)
