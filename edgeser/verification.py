"""Verification: run every artifact a runtime here can execute on held-out clips against its PyTorch reference,
and apply the recipe's gates. Shared by the verify stage of `compress` and by `edgeser verify`."""
from __future__ import annotations

import numpy as np

from edgeser.fileio import sha256, size_bytes
from edgeser.formats import REGISTRY, load_runner
from edgeser.metrics import classification_metrics
from edgeser.models.io import load_student
from edgeser.quant.calibrate import load_qat
from edgeser.robustness import resolving_clips, run_audio
from edgeser.run_dir import RunDir
from edgeser.runtimes import latency_ms, torch_runner

def verify_artifact(rec: dict, run_dir, audio, y: np.ndarray, classes, ref_logits: np.ndarray,
                    latency_runs: int, suite=None, simulated_clips: int | None = None) -> dict:
    """audio: the held-out clips (N, samples), or their whole utterances (a list) when lengths vary.
    suite: an edgeser.robustness.Suite; the artifact then also runs every perturbed case ("robustness").
    The per-clip decisions are returned under "pred" (numpy; verify_records takes them out for the intervals)."""
    out = {k: rec.get(k) for k in ("name", "format", "precision", "path", "reference", "role", "status", "reason")}
    out["checks"] = rec.get("checks", {})
    path = run_dir / rec["path"] if rec.get("path") else None
    if path is not None and path.exists():
        out["sha256"], out["size_bytes"] = sha256(path), size_bytes(path)
    # a format whose runtime is missing here (CoreML predict off macOS, TensorRT without a GPU) was marked skipped,
    # with the reason, by its exporter
    if rec["status"] != "exported":
        return out
    fmt = REGISTRY.get(rec["format"])
    if fmt is None:
        return out | {"status": "skipped", "reason": f"unknown format {rec['format']!r} (not in this edgeser)"}
    try:
        runner = load_runner(rec["format"], path)
        logits = run_audio(runner, audio)
    except Exception as e:
        return out | {"status": "failed", "reason": f"cannot run: {type(e).__name__}: {e}"}
    m = classification_metrics(y, logits.argmax(1), classes)
    reason = fmt.note
    if fmt.runtime in ("onnxruntime", "qnn") and fmt.precision == "int8":
        from edgeser.cpu_quirks import ort_int8_saturation

        quirk = ort_int8_saturation()
        reason = "; ".join(r for r in (reason, quirk) if r) or None
    if runner.fixed_samples:  # a static-shape graph: the runner slides its window (edgeser.runtimes.Runner)
        reason = ((reason + "; ") if reason else "") + (
            f"fixed window of {runner.fixed_samples} samples, slid over longer input at half a window's hop with "
            "the logits averaged, shorter input tiled")
    first = np.asarray(audio[0], np.float32)
    out.update(status="verified", reason=reason, ua=m["ua"], wa=m["wa"], macro_f1=m["macro_f1"],
               per_class_recall=m["per_class_recall"], confusion=m["confusion"], n=m["n"],
               agreement=float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
               max_abs_logit_diff=float(np.abs(logits - ref_logits).max()),
               latency_ms=latency_ms(runner, first, latency_runs), pred=logits.argmax(1), logits=logits)
    if suite is not None:
        try:
            sim = fmt.simulated
            out["robustness"] = suite.measure(runner, max_clips=simulated_clips if sim else None, gated_only=sim)
        except Exception as e:
            out.update(status="failed", reason=f"robustness suite: {type(e).__name__}: {e}")
    return out


def agreement_matrix(artifacts: list[dict], logits: dict) -> list[dict]:
    """Every pair of verified artifacts, on the same held-out clips: top-1 agreement and max |Δlogit|. A pair
    `should_match` when both are deployable artifacts of the same reference model (the QAT INT8 student, or the
    FP32 student): different runtimes of one model, which must decide alike. Baselines (PTQ) are paired for
    the record but never gated."""
    ran = [a for a in artifacts if a["status"] == "verified" and logits.get(a["name"]) is not None]
    out = []
    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            la, lb = logits[a["name"]], logits[b["name"]]
            out.append({"a": a["name"], "b": b["name"], "agreement": float((la.argmax(1) == lb.argmax(1)).mean()),
                        "max_abs_logit_diff": float(np.abs(la - lb).max()),
                        "should_match": a["reference"] == b["reference"] and "baseline" not in (a.get("role"),
                                                                                               b.get("role"))})
    return out


def cross_agreement_gates(cfg, matrix: list[dict]) -> list[dict]:
    """verify.min_cross_agreement on every pair that should match (agreement_matrix)."""
    return [_gate(f"cross agreement [{p['a']} ~ {p['b']}]", cfg.min_cross_agreement, round(p["agreement"], 4),
                  p["agreement"] >= cfg.min_cross_agreement) for p in matrix if p["should_match"]]


def _gate(name, limit, value, ok) -> dict:
    return {"name": name, "limit": limit, "value": value, "passed": ok}


def min_ua_floor(cfg, n_classes: int) -> float:
    """verify.min_ua, or its default: chance + 0.10 (see recipe.Verify)."""
    return cfg.min_ua if cfg.min_ua is not None else round(1 / n_classes + 0.10, 4)


def evaluate_gates(cfg, artifacts: list[dict], teacher_ua: float, n_classes: int) -> list[dict]:
    """The recipe's gates. The UA drop is the artifact's paired drop against the teacher on the same clips
    (a["ua_drop_pt"], set by verify_records), else teacher_ua - UA; min_ua is met when the lower end of the
    artifact's UA interval (a["ua_ci"]) reaches it."""
    gates = []
    by_name = {a["name"]: a for a in artifacts}
    for a in artifacts:
        if a["status"] == "failed":
            gates.append(_gate(f"artifact ok [{a['name']}]", "exported and runnable", a["reason"], False))
        if a["status"] == "verified" and a.get("role") != "baseline":  # a baseline is measured, not gated
            gates.append(_gate(f"agreement [{a['name']}]", cfg.min_agreement, a["agreement"],
                               a["agreement"] >= cfg.min_agreement))
    floor = min_ua_floor(cfg, n_classes)
    for name in cfg.gate_artifacts:
        a = by_name.get(name)
        if a is None or a["status"] != "verified":
            why = "not exported" if a is None else f"{a['status']}: {a.get('reason')}"
            gates.append({"name": f"gated artifact [{name}]", "limit": "verified", "value": why, "passed": False})
            continue
        ua_low = (a.get("ua_ci") or [a["ua"]])[0]
        g = _gate(f"min_ua, UA 95% CI low [{name}]", floor, round(ua_low, 4), ua_low >= floor)
        if a.get("ua_ci"):
            g["ci"] = a["ua_ci"]
        gates.append(g)
        if cfg.max_ua_drop_pt is not None:
            drop = round(a["ua_drop_pt"] if a.get("ua_drop_pt") is not None else (teacher_ua - a["ua"]) * 100, 2)
            g = _gate(f"UA drop vs teacher, pt [{name}]", cfg.max_ua_drop_pt, drop, drop <= cfg.max_ua_drop_pt)
            if a.get("ua_drop_ci_pt"):
                g["ci"] = a["ua_drop_ci_pt"]
            gates.append(g)
        if cfg.max_latency_ms is not None:
            p95 = round(a["latency_ms"]["p95"], 3)
            gates.append(_gate(f"latency p95 ms [{name}]", cfg.max_latency_ms, p95, p95 <= cfg.max_latency_ms))
        if cfg.max_size_bytes is not None:
            gates.append(_gate(f"size bytes [{name}]", cfg.max_size_bytes, a["size_bytes"],
                               a["size_bytes"] <= cfg.max_size_bytes))
    return gates


def robustness_gates(cfg, artifacts: list[dict]) -> list[dict]:
    """verify.min_robust_agreement on every deployed artifact that ran the suite (edgeser/robustness.py)."""
    from edgeser.robustness import robust_gate

    return [robust_gate(a["name"], a["robustness"], cfg.min_robust_agreement) for a in artifacts
            if a["status"] == "verified" and a.get("robustness")]


def resolution_warnings(cfg, artifacts: list[dict], n: int) -> list[str]:
    """What the held-out clips cannot tell apart: a UA-drop interval wider than the gate, an artifact that
    beats its teacher (so the drop gate tests nothing)."""
    out = []
    for a in artifacts:
        if a["status"] != "verified" or a.get("ua_drop_ci_pt") is None:
            continue
        lo, hi = a["ua_drop_ci_pt"]
        gated = a["name"] in cfg.gate_artifacts
        if gated and cfg.max_ua_drop_pt is not None and (hi - lo) / 2 > cfg.max_ua_drop_pt:
            out.append(f"{a['name']}: the UA drop's 95 % interval is [{lo:.1f}, {hi:.1f}] pt (±{(hi - lo) / 2:.1f}) "
                       f"on {n} held-out clips, wider than the max_ua_drop_pt gate ({cfg.max_ua_drop_pt:g} pt): "
                       "too few clips to resolve it; hold out more speakers or verify with --data")
        if gated and cfg.max_ua_drop_pt is not None and hi < 0:
            out.append(f"{a['name']}: scores above its teacher on these clips (UA drop {a['ua_drop_pt']:.1f} pt, "
                       f"interval [{lo:.1f}, {hi:.1f}]): the UA-drop gate tests nothing here; min_ua still applies")
    return out


def verify_records(run_dir, recipe, test, classes, records: list[dict], results: dict, progress=None) -> dict:
    """Run every exported artifact on the held-out split against its PyTorch reference; apply the gates.
    Shared by the verify stage of `compress` and by `edgeser verify` (which re-reads everything from disk).
    The teacher is scored afresh on the same clips, so each artifact's UA drop is paired: same clips, and the
    same bootstrap resamples (ua_drop_pt with ua_drop_ci_pt); UA and WA carry 95 % intervals (ua_ci, wa_ci)."""
    from edgeser.metrics import bootstrap_ci, paired_drop_ci
    from edgeser.models.io import load_teacher
    from edgeser.train import predict_split

    # the held-out clips are read (and each robustness case made) a chunk at a time (robustness.run_audio)
    x, y = test.x, test.y.numpy()
    full = getattr(test, "full", None)  # whole utterances when the corpus's lengths vary: scored as they are
    audio = full if full is not None else x
    run = RunDir(run_dir)
    q, _ = load_qat(run.model("qat"))
    fp32, _ = load_student(run.model("prune"))
    refs = {"qat": run_audio(torch_runner(q), audio), "prune": run_audio(torch_runner(fp32), audio)}
    stats = {"qat": results["qat"], "prune": results["prune"]}
    teacher_pred = predict_split(load_teacher(run.model("teacher")), test).argmax(1).numpy()
    tm, tci = classification_metrics(y, teacher_pred, classes), bootstrap_ci(y, teacher_pred, classes)
    teacher = {"ua": tm["ua"], "wa": tm["wa"], "ua_ci": tci["ua"], "wa_ci": tci["wa"], "n": tm["n"],
               "whole_utterances": full is not None}
    suite = None
    if recipe.verify.robustness:
        from edgeser.robustness import Suite

        if progress:
            task0 = progress.add_task("verify: FP32 student on the robustness cases", total=None)
        suite = Suite.build(x, y, classes, torch_runner(fp32), sr=recipe.data.sample_rate, full=full,
                            seed=recipe.seed)
        if progress:
            progress.remove_task(task0)
    task = progress.add_task("verify", total=len(records)) if progress else None
    artifacts, logits = [], {}
    for rec in records:
        if progress:
            progress.update(task, description=f"verify {rec['name']}")
        a = verify_artifact(rec, run_dir, audio, y, classes, refs[rec["reference"]], recipe.verify.latency_runs,
                            suite if rec.get("role") != "baseline" else None,
                            resolving_clips(recipe.verify.simulated_clips, recipe.verify.min_robust_agreement))
        a["params"], a["macs"] = stats[rec["reference"]]["params"], stats[rec["reference"]]["macs"]
        pred, logits[a["name"]] = a.pop("pred", None), a.pop("logits", None)
        if a["status"] == "verified":
            ci, drop = bootstrap_ci(y, pred, classes), paired_drop_ci(y, teacher_pred, pred, classes)
            a.update(ua_ci=ci["ua"], wa_ci=ci["wa"], ua_drop_pt=drop["drop_pt"], ua_drop_ci_pt=drop["ci_pt"])
        artifacts.append(a)
        if progress:
            progress.advance(task)
    if progress:
        progress.remove_task(task)
    gates = evaluate_gates(recipe.verify, artifacts, teacher["ua"], len(classes))
    gates += robustness_gates(recipe.verify, artifacts)
    matrix = agreement_matrix(artifacts, logits)
    gates += cross_agreement_gates(recipe.verify, matrix)
    warnings = resolution_warnings(recipe.verify, artifacts, len(y))
    return {"artifacts": artifacts, "gates": gates, "teacher": teacher, "warnings": warnings,
            "agreement_matrix": matrix}
