"""Stage 6: export the QAT student (and the pruned FP32 student) to every format the recipe asks for."""
from __future__ import annotations

import json
import traceback

from edgeser.export.artifact_meta import MAX_SECONDS, describe, write_side_file
from edgeser.export.onnx_export import (INPUT, OUTPUT, example_batch, export_onnx, export_pt2, export_torchscript,
                                        min_samples)
from edgeser.quiet import quiet
from edgeser.stages.common import Context, load_student
from edgeser.stages.qat import load_qat

TRT_MAX_SECONDS = 30  # TensorRT's max profile length: memory is planned for it, so not MAX_SECONDS

# name -> (file name, precision, reference model the artifact must agree with)
ARTIFACT_SPECS = {
    "torchscript": ("student_int8.ts", "int8-qdq", "qat"),
    "pt2": ("student_int8.pt2", "int8-qdq", "qat"),
    "onnx-fp32": ("student_fp32.onnx", "fp32", "prune"),
    "onnx-int8": ("student_int8.onnx", "int8", "qat"),
    # the same INT8 graph split at the per-frame log-mel, for `edgeser stream` with its feature cache
    "onnx-int8-stream": ("student_int8_stream", "int8", "qat"),
    # baseline: onnxruntime quantize_static (MinMax) on the same pruned student, no QAT
    "onnx-int8-ptq": ("student_int8_ptq.onnx", "int8", "prune"),
    "coreml": ("student_w8a8.mlpackage", "int8", "qat"),
    "tensorrt": ("student_int8.engine", "int8", "qat"),
    # the onnx-int8 graph with an A16W8 head (edgeser.export.htp), run on the Qualcomm HTP backend (static
    # batch: use the hexagon target)
    "qnn-htp": ("student_htp.onnx", "int8", "qat"),
}


def artifact_meta(ctx, model, samples: int) -> dict:
    """What every artifact of this run records about itself (edgeser.export.artifact_meta)."""
    from edgeser.resume import package_version

    static = bool(ctx.target.static_batch)
    return describe(classes=ctx.corpus.classes, sample_rate=ctx.recipe.data.sample_rate,
                    min_samples=min_samples(model), max_samples=ctx.recipe.data.sample_rate * MAX_SECONDS,
                    fixed_samples=samples if static else None, batch=ctx.target.static_batch,
                    recipe_json=ctx.recipe.model_dump(mode="json"), version=package_version())


def _samples_range(ctx, model) -> tuple[int, int] | None:
    return None if ctx.target.static_batch else (min_samples(model), ctx.recipe.data.sample_rate * MAX_SECONDS)


def _coreml(ctx, qexport, samples, path, meta):
    rng = _samples_range(ctx, qexport)
    with quiet():  # coremltools prints import warnings and per-pass progress bars
        from edgeser.export.coreml import check_coreml_spec, coreml_predict_available, export_coreml

        x = example_batch(samples, ctx.target.static_batch or 1)
        info = export_coreml(qexport, x, path, input_name=INPUT, output_name=OUTPUT, samples_range=rng,
                             metadata=meta, class_labels=ctx.corpus.classes)
    spec = check_coreml_spec(path, input_name=INPUT, input_shape=tuple(x.shape), output_name=OUTPUT,
                             n_classes=len(ctx.corpus.classes), samples_range=rng,
                             class_labels=ctx.corpus.classes)
    ok, reason = coreml_predict_available()
    status = ("exported" if ok else "skipped") if spec["passed"] else "failed"
    reason = reason if spec["passed"] else "CoreML spec check failed: " + "; ".join(spec["violations"][:5])
    return {"status": status, "reason": None if ok and spec["passed"] else reason,
            "checks": {"coreml_spec": spec, "export": info}}


def _qnn(ctx, onnx_int8, path):
    from edgeser.export.htp import write_htp_onnx
    from edgeser.runtimes import qnn_available

    ok, why = qnn_available()
    if not ctx.target.static_batch:
        return {"status": "skipped", "reason": "QNN HTP needs a static batch: use a target with static_batch "
                                               "(e.g. qualcomm-hexagon)", "path": None}
    head = write_htp_onnx(onnx_int8, path)
    return {"status": "exported" if ok else "skipped", "reason": None if ok else why, "checks": {"htp_head": head}}


def _tensorrt(ctx, qexport, onnx_int8, samples, path, meta):
    from edgeser.export.tensorrt import build_engine, check_tensorrt_rules, tensorrt_available, write_trtexec_script

    b = ctx.target.static_batch
    # the optimisation profile: one analysis frame .. TRT_MAX_SECONDS, tuned for the training clip length
    lo, hi = _samples_range(ctx, qexport) or (samples, samples)
    hi = min(hi, ctx.recipe.data.sample_rate * TRT_MAX_SECONDS) if not b else hi
    shapes = dict(input_name=INPUT, min_shape=(b or 1, lo), opt_shape=(b or 1, samples), max_shape=(b or 8, hi))
    rules = check_tensorrt_rules(onnx_int8, profile=shapes)
    script = path.parent / "build_engine.sh"
    cmd = write_trtexec_script(onnx_int8, script, **shapes)
    side = write_side_file(path, meta | {"tensorrt_profile": json.dumps({k: list(v) for k, v in shapes.items()
                                                                         if k != "input_name"})})
    checks = {"tensorrt_rules": rules, "trtexec_script": str(script.relative_to(ctx.run_dir)), "trtexec": cmd,
              "metadata_file": str(side.relative_to(ctx.run_dir))}
    if not rules["passed"]:
        return {"status": "failed", "reason": f"{len(rules['violations'])} TensorRT rule violation(s)",
                "checks": checks}
    ok, why = tensorrt_available()
    if not ok:
        return {"status": "skipped", "reason": f"{why}; rule check passed; build on the device with "
                f"{script.relative_to(ctx.run_dir)}", "checks": checks, "path": None}
    checks["build"] = build_engine(onnx_int8, path, **shapes, timing_cache=path.parent / "timing.cache")
    return {"status": "exported", "reason": None, "checks": checks}


def _ptq(ctx, fp32, onnx_fp32, samples, path, meta):
    from edgeser.export.artifact_meta import write_onnx_metadata
    from edgeser.export.ptq import ptq_quantize

    if not onnx_fp32.exists():
        export_onnx(fp32, samples, onnx_fp32, opset=ctx.recipe.export.opset, static_batch=ctx.target.static_batch,
                    meta=meta)
    calib = ctx.corpus.splits["train"].x[: ctx.recipe.export.ptq_calib_clips].numpy()
    with quiet():
        info = ptq_quantize(onnx_fp32, path, calib)
    write_onnx_metadata(path, meta)
    return {"checks": {"ptq": info}}


def _stream(ctx, qexport, samples, path, meta):
    from edgeser.export.stream_export import export_stream

    if ctx.target.static_batch:
        return {"status": "skipped", "reason": "the streaming graphs have dynamic lengths; this target needs "
                                               "static shapes", "path": None}
    cfg = export_stream(qexport, ctx.corpus.classes, samples, path, opset=ctx.recipe.export.opset, meta=meta)
    return {"checks": {"stream": {k: cfg[k] for k in ("frame_samples", "hop_samples", "n_mels")}}}


def run(ctx: Context) -> dict:
    fmts = ctx.recipe.export.formats
    samples = ctx.corpus.splits["test"].x.shape[1]
    q, _ = load_qat(ctx.stage_dir("qat") / "model.pt")
    qexport = q.to_export()
    fp32, _ = load_student(ctx.stage_dir("prune") / "model.pt")
    out = ctx.artifacts_dir()
    opset, sb = ctx.recipe.export.opset, ctx.target.static_batch
    onnx_int8 = out / ARTIFACT_SPECS["onnx-int8"][0]
    need_int8_onnx = "onnx-int8" in fmts or "tensorrt" in fmts or "qnn-htp" in fmts
    onnx_fp32 = out / ARTIFACT_SPECS["onnx-fp32"][0]
    meta = artifact_meta(ctx, qexport, samples)
    builders = {
        "torchscript": lambda p: export_torchscript(qexport, samples, p, meta),
        "pt2": lambda p: export_pt2(qexport, samples, p, static_batch=sb, meta=meta),
        "onnx-fp32": lambda p: export_onnx(fp32, samples, p, opset=opset, static_batch=sb, meta=meta),
        "onnx-int8": lambda p: export_onnx(qexport, samples, p, opset=opset, static_batch=sb, meta=meta),
        "onnx-int8-stream": lambda p: _stream(ctx, qexport, samples, p, meta),
        "onnx-int8-ptq": lambda p: _ptq(ctx, fp32, onnx_fp32, samples, p, meta),
        "coreml": lambda p: _coreml(ctx, qexport, samples, p, meta),
        "tensorrt": lambda p: _tensorrt(ctx, qexport, onnx_int8, samples, p, meta),
        "qnn-htp": lambda p: _qnn(ctx, onnx_int8, p),
    }
    if need_int8_onnx and "onnx-int8" not in fmts:
        export_onnx(qexport, samples, onnx_int8, opset=opset, static_batch=sb, meta=meta)
    records = []
    order = [f for f in ARTIFACT_SPECS if f in fmts]
    task = ctx.progress.add_task("export", total=len(order)) if ctx.progress else None
    for name in order:
        fname, precision, ref = ARTIFACT_SPECS[name]
        path = out / fname
        rec = {"name": name, "format": name, "precision": precision, "path": str(path.relative_to(ctx.run_dir)),
               "reference": ref, "role": "baseline" if name == "onnx-int8-ptq" else "deploy",
               "status": "exported", "reason": None, "checks": {}}
        if ctx.progress:
            ctx.progress.update(task, description=f"export {name}")
        try:
            extra = builders[name](path)
            if isinstance(extra, dict):
                rec.update(extra)
                if rec.get("path") is None or not path.exists():
                    rec["path"] = None
        except Exception as e:  # one format failing must not lose the others
            rec.update(status="failed", reason=f"{type(e).__name__}: {e}", path=None,
                       traceback=traceback.format_exc(limit=3))
        records.append(rec)
        if ctx.progress:
            ctx.progress.advance(task)
    if ctx.progress:
        ctx.progress.remove_task(task)
    from edgeser.export.model_card import write_model_card

    write_model_card(out / "README.md", records, meta, ctx.run_dir)
    return ctx.finish("export", {"artifacts": records, "metadata": meta})
