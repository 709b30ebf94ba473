"""What a stage declares about itself; the engine (edgeser/pipeline.py) derives everything else from it.

A stage reads recipe sections and files of the run folder that stages before it wrote, and writes its own.
From these declarations the engine takes the order (a stage runs after every stage whose outputs it reads),
the content key (the sections, with the target profile's content for `target`, the content of the files outside
the run folder that it declares, chained to the stage before),
the files a done marker records, which stages run on rank 0 only, and which always run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable  # run(ctx: stages.common.Context) -> dict (its metrics)
    sections: tuple[str, ...]  # recipe sections it reads ("target": the target profile's content)
    inputs: tuple[str, ...] = ()  # run-folder paths it reads, each some earlier stage's output
    outputs: tuple[str, ...] = ()  # run-folder paths it writes; a folder stands for every file in it
    main_only: bool = False  # under torchrun only rank 0 runs it (the others are done)
    always_run: bool = False  # never skipped by --resume (cheap, or its output lives in memory)
    digest: Callable | None = None  # digest(ctx) -> str: its output's hash when that is not a file (data)
    files: Callable | None = None  # files(recipe) -> {field: [paths]}: files outside the run folder it reads (an
    # external teacher); their content (sha256) is part of its key, so changing one reruns it and what follows
    layout: str | None = None  # the layout of what it writes (a model file's tensors), part of its key: a new
    # layout reruns it on --resume instead of leaving a file the stages after it refuse
    derived: Callable | None = None  # derived(recipe) -> dict: choices it resolves from sections it does not
    # declare (qat's `auto` options from export.formats), part of its key


def order(stages: list[Stage]) -> list[Stage]:
    """The stages sorted so that each runs after the ones whose outputs it reads (stable: ties keep the listed
    order). A path nobody writes, or a cycle, is a programming error."""
    def covers(out: str, path: str) -> bool:
        return path == out or path.startswith(out.rstrip("/") + "/")

    writers = {}
    for s in stages:
        for path in s.inputs:
            found = [w.name for w in stages if w is not s and any(covers(o, path) for o in w.outputs)]
            if not found:
                raise ValueError(f"stage {s.name}: no stage writes its input {path}")
            writers[s.name] = writers.get(s.name, set()) | set(found)
    done, out = set(), []
    while len(out) < len(stages):
        ready = [s for s in stages if s.name not in done and writers.get(s.name, set()) <= done]
        if not ready:
            raise ValueError(f"stage inputs form a cycle among {[s.name for s in stages if s.name not in done]}")
        out.append(ready[0])
        done.add(ready[0].name)
    return out
