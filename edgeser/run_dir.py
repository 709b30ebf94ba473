"""The run folder, owned by one type. Everything that reads or writes a run (the stages, `edgeser verify`,
`stream`, `bench`, the bench/ scripts) goes through RunDir instead of spelling the layout:

    RUN/recipe.json                              the validated recipe the run used
    RUN/stages/<name>/{model.pt, metrics.json, done.json, ckpt-*.pt}
    RUN/artifacts/                               the exported files (and their model card)
    RUN/report.{json,md,html}                    the report
    RUN/manifest.json                            written last: artifact hashes, recipe hash, versions
"""
from __future__ import annotations

import json
from pathlib import Path

RECIPE, MANIFEST, ARTIFACTS, STAGES = "recipe.json", "manifest.json", "artifacts", "stages"
REPORTS = ("report.json", "report.md", "report.html")
MODEL, METRICS, DONE = "model.pt", "metrics.json", "done.json"


def stage_file(stage: str, name: str) -> str:
    """A stage's file relative to the run folder, e.g. stage_file("teacher", MODEL) = stages/teacher/model.pt."""
    return f"{STAGES}/{stage}/{name}"


class RunDir:
    def __init__(self, root):
        self.root = Path(root)

    @classmethod
    def of_artifact(cls, path, resolve: bool = True) -> "RunDir":
        """The run an artifact lies in (RUN/artifacts/<file or folder>); check `is_run()` before trusting it.
        resolve=False: lexically, as the user wrote the path (for messages that quote it)."""
        path = Path(path)
        return cls((path.resolve() if resolve else path).parent.parent)

    def __truediv__(self, rel) -> Path:
        return self.root / rel

    def __str__(self) -> str:
        return str(self.root)

    def is_run(self) -> bool:
        return (self.root / RECIPE).is_file()

    def is_finished(self) -> bool:
        """A run `compress` finished: its manifest exists (written last) beside its recipe."""
        return (self.root / MANIFEST).is_file() and self.is_run()

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def artifacts(self) -> Path:
        return self.root / ARTIFACTS

    def report(self, suffix: str = "json") -> Path:
        return self.root / f"report.{suffix}"

    def stage(self, name: str) -> Path:
        return self.root / STAGES / name

    def model(self, stage: str) -> Path:
        return self.stage(stage) / MODEL

    def metrics(self, stage: str) -> Path:
        return self.stage(stage) / METRICS

    def done(self, stage: str) -> Path:
        return self.stage(stage) / DONE

    def read_metrics(self, stage: str) -> dict:
        return json.loads(self.metrics(stage).read_text())

    def read_recipe(self) -> dict:
        return json.loads(self.recipe.read_text())

    def rel(self, path) -> str:
        """A path inside the run folder, as the run records it."""
        return str(Path(path).relative_to(self.root))
