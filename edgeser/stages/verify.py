"""Stage 7: run every artifact a runtime here can execute on the held-out speakers; apply the recipe's gates
(edgeser/verification.py)."""
from __future__ import annotations

from edgeser.run_dir import ARTIFACTS, METRICS, MODEL, stage_file
from edgeser.stage_spec import Stage
from edgeser.stages.common import Context
from edgeser.verification import verify_records


def run(ctx: Context) -> dict:
    out = verify_records(ctx.run_dir, ctx.recipe, ctx.corpus.splits["test"], ctx.corpus.classes,
                         ctx.results["export"]["artifacts"], ctx.results, ctx.progress)
    return ctx.finish("verify", out)


STAGE = Stage("verify", run, sections=("verify",),
              inputs=(ARTIFACTS, *(stage_file(s, MODEL) for s in ("qat", "prune", "teacher"))),
              outputs=(stage_file("verify", METRICS),), main_only=True)
