"""Stage 7: run every artifact a runtime here can execute on the held-out speakers; apply the recipe's gates."""
from __future__ import annotations

import numpy as np

from edgeser.fileio import sha256, size_bytes
from edgeser.metrics import classification_metrics
from edgeser.runtimes import latency_ms, load_runner, torch_runner
from edgeser.stages.common import Context, load_student
from edgeser.stages.qat import load_qat

# coreml and tensorrt reach verification only where their runtime exists (macOS; a GPU with TensorRT):
# elsewhere the export stage marks them skipped with the reason
RUNNABLE = {"torchscript", "pt2", "onnx-fp32", "onnx-int8", "onnx-int8-stream", "onnx-int8-ptq", "qnn-htp", "coreml", "tensorrt"}


def verify_artifact(rec: dict, run_dir, x: np.ndarray, y: np.ndarray, classes, ref_logits: np.ndarray,
                    latency_runs: int) -> dict:
    out = {k: rec.get(k) for k in ("name", "format", "precision", "path", "reference", "role", "status", "reason")}
    out["checks"] = rec.get("checks", {})
    path = run_dir / rec["path"] if rec.get("path") else None
    if path is not None and path.exists():
        out["sha256"], out["size_bytes"] = sha256(path), size_bytes(path)
    if rec["status"] != "exported":
        return out
    if rec["format"] not in RUNNABLE:
        return out | {"status": "skipped", "reason": f"no {rec['format']} runtime on this machine"}
    try:
        runner = load_runner(rec["format"], path)
        logits = runner(x)
    except Exception as e:
        return out | {"status": "failed", "reason": f"cannot run: {type(e).__name__}: {e}"}
    m = classification_metrics(y, logits.argmax(1), classes)
    reason = ("ran whole on Qualcomm's HTP backend (CPU fallback disabled); its latency is the x86 simulator's, "
              "not the device's") if rec["format"] == "qnn-htp" else None
    out.update(status="verified", reason=reason, ua=m["ua"], wa=m["wa"], macro_f1=m["macro_f1"],
               per_class_recall=m["per_class_recall"], confusion=m["confusion"],
               agreement=float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
               max_abs_logit_diff=float(np.abs(logits - ref_logits).max()),
               latency_ms=latency_ms(runner, x[0], latency_runs))
    return out


def _gate(name, limit, value, ok) -> dict:
    return {"name": name, "limit": limit, "value": value, "passed": ok}


def evaluate_gates(cfg, artifacts: list[dict], teacher_ua: float) -> list[dict]:
    gates = []
    by_name = {a["name"]: a for a in artifacts}
    for a in artifacts:
        if a["status"] == "failed":
            gates.append(_gate(f"artifact ok [{a['name']}]", "exported and runnable", a["reason"], False))
        if a["status"] == "verified" and a.get("role") != "baseline":  # a baseline is measured, not gated
            gates.append(_gate(f"agreement [{a['name']}]", cfg.min_agreement, a["agreement"],
                               a["agreement"] >= cfg.min_agreement))
    for name in cfg.gate_artifacts:
        a = by_name.get(name)
        if a is None or a["status"] != "verified":
            why = "not exported" if a is None else f"{a['status']}: {a.get('reason')}"
            gates.append({"name": f"gated artifact [{name}]", "limit": "verified", "value": why, "passed": False})
            continue
        if cfg.max_ua_drop_pt is not None:
            drop = round((teacher_ua - a["ua"]) * 100, 2)
            gates.append(_gate(f"UA drop vs teacher, pt [{name}]", cfg.max_ua_drop_pt, drop, drop <= cfg.max_ua_drop_pt))
        if cfg.max_latency_ms is not None:
            p95 = round(a["latency_ms"]["p95"], 3)
            gates.append(_gate(f"latency p95 ms [{name}]", cfg.max_latency_ms, p95, p95 <= cfg.max_latency_ms))
        if cfg.max_size_bytes is not None:
            gates.append(_gate(f"size bytes [{name}]", cfg.max_size_bytes, a["size_bytes"],
                               a["size_bytes"] <= cfg.max_size_bytes))
    return gates


def verify_records(run_dir, recipe, test, classes, records: list[dict], results: dict, progress=None) -> dict:
    """Run every exported artifact on the held-out split against its PyTorch reference; apply the gates.
    Shared by the verify stage of `compress` and by `edgeser verify` (which re-reads everything from disk)."""
    x, y = test.x.numpy(), test.y.numpy()
    q, _ = load_qat(run_dir / "stages/qat/model.pt")
    fp32, _ = load_student(run_dir / "stages/prune/model.pt")
    refs = {"qat": torch_runner(q)(x), "prune": torch_runner(fp32)(x)}
    stats = {"qat": results["qat"], "prune": results["prune"]}
    task = progress.add_task("verify", total=len(records)) if progress else None
    artifacts = []
    for rec in records:
        if progress:
            progress.update(task, description=f"verify {rec['name']}")
        a = verify_artifact(rec, run_dir, x, y, classes, refs[rec["reference"]], recipe.verify.latency_runs)
        a["params"], a["macs"] = stats[rec["reference"]]["params"], stats[rec["reference"]]["macs"]
        artifacts.append(a)
        if progress:
            progress.advance(task)
    if progress:
        progress.remove_task(task)
    gates = evaluate_gates(recipe.verify, artifacts, results["teacher"]["test"]["ua"])
    return {"artifacts": artifacts, "gates": gates}


def run(ctx: Context) -> dict:
    out = verify_records(ctx.run_dir, ctx.recipe, ctx.corpus.splits["test"], ctx.corpus.classes,
                         ctx.results["export"]["artifacts"], ctx.results, ctx.progress)
    return ctx.finish("verify", out)
