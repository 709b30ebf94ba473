"""Stage 8: the report (report.json, .md, .html) from every stage's results, and RUN/manifest.json last."""
from __future__ import annotations

from edgeser.fileio import write_json, write_text
from edgeser.report import build_report, markdown
from edgeser.report_html import render
from edgeser.run_manifest import write_manifest
from edgeser.run_dir import MANIFEST, METRICS, REPORTS, stage_file
from edgeser.stage_spec import Stage
from edgeser.stages.common import Context

def run(ctx: Context) -> dict:
    report = build_report(ctx)
    write_json(ctx.run.report("json"), report)
    write_text(ctx.run.report("md"), markdown(report))
    write_text(ctx.run.report("html"), render(report))
    # written last: `edgeser verify` takes a run folder with a manifest.json as finished
    write_manifest(ctx.run_dir, ctx.recipe.model_dump(mode="json"), report["artifacts"])
    return report


# cheap, and it reads every stage's results: it always runs
STAGE = Stage("report", run, sections=(), inputs=(stage_file("verify", METRICS),), outputs=(*REPORTS, MANIFEST),
              main_only=True, always_run=True)
