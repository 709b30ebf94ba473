"""Stage 6: export the QAT student (and the pruned FP32 student) to every format the recipe asks for.

Each format's file, precision, reference model and exporter come from the registry (edgeser/formats.py).
"""
from __future__ import annotations

import traceback

from edgeser.export.artifact_meta import MAX_SECONDS, describe
from edgeser.export.model_card import write_model_card
from edgeser.export.onnx_export import min_samples
from edgeser.formats import REGISTRY, ExportJob, resolve
from edgeser.models.io import load_student
from edgeser.quant.calibrate import load_qat
from edgeser.run_dir import ARTIFACTS, METRICS, MODEL, stage_file
from edgeser.stage_spec import Stage
from edgeser.stages.common import Context


def artifact_meta(ctx, model, samples: int) -> dict:
    """What every artifact of this run records about itself (edgeser.export.artifact_meta)."""
    from edgeser.resume import package_version

    static = bool(ctx.target.static_batch)
    return describe(classes=ctx.corpus.classes, sample_rate=ctx.recipe.data.sample_rate,
                    min_samples=min_samples(model), max_samples=ctx.recipe.data.sample_rate * MAX_SECONDS,
                    fixed_samples=samples if static else None, batch=ctx.target.static_batch,
                    recipe_json=ctx.recipe.model_dump(mode="json"), version=package_version())


def write(job: ExportJob, name: str):
    """Run a format's exporter: its file, from the files of the formats it needs. Returns the record's updates."""
    f = REGISTRY[name]
    return resolve(f.export)(job, job.path(name), *[job.path(n) for n in f.needs])


def export_one(job: ExportJob, name: str) -> dict:
    """Export one format; its record (name, file, status, reason, checks). A failure is recorded, not raised:
    one format failing must not lose the others."""
    f = REGISTRY[name]
    path = job.path(name)
    rec = {"name": name, "format": name, "precision": f.precision, "path": str(path.relative_to(job.run_dir)),
           "reference": f.reference, "role": f.role, "status": "exported", "reason": None, "checks": {}}
    try:
        extra = write(job, name)
        if isinstance(extra, dict):
            rec.update(extra)
            if rec.get("path") is None or not path.exists():
                rec["path"] = None
    except Exception as e:
        rec.update(status="failed", reason=f"{type(e).__name__}: {e}", path=None,
                   traceback=traceback.format_exc(limit=3))
    return rec


def run(ctx: Context) -> dict:
    fmts = ctx.recipe.export.formats
    samples = ctx.corpus.splits["test"].x.shape[1]
    q, _ = load_qat(ctx.stage_dir("qat") / "model.pt")
    qexport = q.to_export()
    fp32, _ = load_student(ctx.stage_dir("prune") / "model.pt")
    meta = artifact_meta(ctx, qexport, samples)
    job = ExportJob(qexport=qexport, fp32=fp32, samples=samples, opset=ctx.recipe.export.opset,
                    static_batch=ctx.target.static_batch, meta=meta, classes=ctx.corpus.classes,
                    run_dir=ctx.run_dir, out=ctx.artifacts_dir(), sample_rate=ctx.recipe.data.sample_rate,
                    calib=ctx.corpus.splits["train"].x[: ctx.recipe.export.ptq_calib_clips].numpy())
    order = [n for n in REGISTRY if n in fmts]
    # files an asked-for format reads (onnx-int8 for tensorrt and qnn-htp) but nobody asked for: written first
    for need in dict.fromkeys(n for name in order for n in REGISTRY[name].needs if n not in fmts):
        write(job, need)
    records = []
    task = ctx.progress.add_task("export", total=len(order)) if ctx.progress else None
    for name in order:
        if ctx.progress:
            ctx.progress.update(task, description=f"export {name}")
        records.append(export_one(job, name))
        if ctx.progress:
            ctx.progress.advance(task)
    if ctx.progress:
        ctx.progress.remove_task(task)
    write_model_card(job.out / "README.md", records, meta, ctx.run_dir)
    return ctx.finish("export", {"artifacts": records, "metadata": meta})


# the artifacts folder as a whole: the recorded artifacts and what they need beside them (model card, scripts)
STAGE = Stage("export", run, sections=("export", "target"), inputs=(stage_file("qat", MODEL), stage_file("prune", MODEL)),
              outputs=(ARTIFACTS, stage_file("export", METRICS)), main_only=True)
