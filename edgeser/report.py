"""Stage 8: report.json (machine-readable) and report.md (a table people read, also printed)."""
from __future__ import annotations

from edgeser.stages.common import Context

COLUMNS = ["artifact", "precision", "status", "UA %", "WA %", "F1 %", "agree %", "agree vs", "UA drop pt",
           "max|Δ|", "p50 ms", "p95 ms", "size KB", "MMAC"]

# what each artifact's "agree %" is measured against (the artifact dict's "reference")
REFERENCES = {"qat": "QAT int8", "prune": "FP32 student"}
REFERENCE_LONG = {"qat": "the QAT INT8 PyTorch model", "prune": "the pruned FP32 PyTorch student"}
ROBUST_LIMIT_DEFAULT = 0.98  # verify.min_robust_agreement's default
HEAT_GREEN, HEAT_AMBER = 0.98, 0.90  # heatmap colours: green at or above, amber at or above, red below


def _pct(v):
    return "—" if v is None else f"{100 * v:.1f}"


def pct_ci(v, ci=None):
    """A fraction as a percentage, with its 95 % interval "[lo, hi]" when there is one."""
    if v is None:
        return "—"
    return _pct(v) if not ci else f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _pt_ci(v, ci=None):
    """Percentage points (already scaled), with their interval when there is one."""
    if v is None:
        return "—"
    return f"{v:.1f}" if not ci else f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def reference_label(ref) -> str:
    return "—" if ref is None else REFERENCES.get(ref, str(ref))


def artifact_row(a: dict) -> list[str]:
    lat = a.get("latency_ms") or {}
    verified = a.get("status") == "verified"
    return [a["name"], a["precision"], a["status"], pct_ci(a.get("ua"), a.get("ua_ci")),
            pct_ci(a.get("wa"), a.get("wa_ci")), _pct(a.get("macro_f1")), _pct(a.get("agreement")),
            reference_label(a.get("reference")) if verified else "—",
            _pt_ci(a.get("ua_drop_pt"), a.get("ua_drop_ci_pt")),
            "—" if a.get("max_abs_logit_diff") is None else f"{a['max_abs_logit_diff']:.3f}",
            "—" if "p50" not in lat else f"{lat['p50']:.2f}", "—" if "p95" not in lat else f"{lat['p95']:.2f}",
            "—" if a.get("size_bytes") is None else f"{a['size_bytes'] / 1024:.0f}",
            "—" if a.get("macs") is None else f"{a['macs'] / 1e6:.1f}"]


def structural_checks(a: dict) -> list[str]:
    """One line per static check of an artifact (TensorRT rules, CoreML spec)."""
    lines = []
    rules = a.get("checks", {}).get("tensorrt_rules")
    if rules:
        c = rules["checked"]
        lines.append(f"TensorRT rule check {'passed' if rules['passed'] else 'FAILED'}: {c['quantize']} Q / "
                     f"{c['dequantize']} DQ nodes, {c['per_channel']} per-channel weights, "
                     f"{len(rules['violations'])} violation(s)")
    spec = a.get("checks", {}).get("coreml_spec")
    if spec:
        lines.append(f"CoreML spec check {'passed' if spec['passed'] else 'FAILED'}: {spec['int8_weight_layers']} "
                     f"int8-weight layers, {spec['float_weight_layers']} float-weight layers outside the front-end, "
                     f"{spec['ops'].get('quantize', 0)} activation quantize ops, {len(spec['violations'])} violation(s)")
    return lines


def gate_value(g: dict) -> str:
    """A gate's value, with the 95 % interval verify attached to it (g["ci"], in the value's unit) if any."""
    ci = g.get("ci")
    return str(g["value"]) if not ci else f"{g['value']} [{ci[0]:.4g}, {ci[1]:.4g}]"


def teacher_figures(report: dict) -> dict:
    """The teacher's figures for its table row: on the clips the artifacts were scored on when verify measured
    them there (with intervals), else the teacher stage's own held-out figures."""
    return report["teacher"] | {k: v for k, v in (report.get("teacher_same_clips") or {}).items() if v is not None}


def teacher_row(t: dict) -> list[str]:
    label = f"teacher ({t['source']['label']})" if t.get("source") else "teacher (PyTorch)"  # an external teacher
    return [label, "fp32", "reference", pct_ci(t["ua"], t.get("ua_ci")), pct_ci(t["wa"], t.get("wa_ci")),
            _pct(t.get("macro_f1")), "—", "—", "—", "—", "—", "—", f"{t['size_bytes'] / 1024:.0f}",
            "—" if t.get("macs") is None else f"{t['macs'] / 1e6:.1f}"]


def table_rows(report: dict) -> list[list[str]]:
    return [teacher_row(teacher_figures(report))] + [artifact_row(a) for a in report["artifacts"]]


def table_notes(report: dict) -> list[str]:
    """What the main table's columns compare against, in words (under the table in report.md and report.html)."""
    refs = sorted({a["reference"] for a in report["artifacts"] if a.get("status") == "verified" and a.get("reference")})
    lines = ["agree %: share of held-out clips where the artifact's decision equals its reference's (column "
             "agree vs: " + "; ".join(f"{reference_label(r)} = {REFERENCE_LONG.get(r, r)}" for r in refs) + ")."
             if refs else "agree %: no verified artifact."]
    if any(a.get("ua_ci") or a.get("ua_drop_ci_pt") for a in report["artifacts"]) or (
            report.get("teacher_same_clips") or {}).get("ua_ci"):
        lines.append("[lo, hi]: 95 % bootstrap confidence interval over held-out clips; the UA drop (teacher UA − "
                     "artifact UA, in points) is paired on the same clips.")
    tc = report.get("teacher_same_clips")
    if tc:
        n = f" {tc['n']}" if tc.get("n") is not None else ""
        lines.append(f"teacher row: scored on the same{n} clips as the artifacts.")
    return lines


# ---- robustness suite (issue 11, point 4): one row per perturbation, one column per artifact

def robust_artifacts(report: dict) -> list[dict]:
    return [a for a in report["artifacts"] if a.get("robustness")]


def robust_limit(report: dict, name: str) -> float:
    """The limit of the artifact's "robust agreement [NAME]" gate, else the recipe's, else the default."""
    for g in report.get("gates", []):
        if g["name"] == f"robust agreement [{name}]" and isinstance(g.get("limit"), (int, float)):
            return float(g["limit"])
    v = (report.get("recipe") or {}).get("verify", {}).get("min_robust_agreement")
    return float(v) if isinstance(v, (int, float)) else ROBUST_LIMIT_DEFAULT


def case_agreement(c: dict) -> float | None:
    """The agreement the gate sees for a case: the worse of agreement with the reference on the same input and,
    for gain cases, agreement with the artifact's own 0 dB decisions."""
    vals = [v for v in (c.get("agree_ref"), c.get("agree_self")) if v is not None]
    return min(vals) if vals else None


def case_failed(c: dict, limit: float) -> bool:
    agr = case_agreement(c)
    return bool(c.get("gated")) and agr is not None and agr < limit


def robust_cases(arts: list[dict]) -> list[dict]:
    """The union of every artifact's cases in first-seen order: {"case", "kind", "gated", "cells": {name: case}}."""
    rows: dict[str, dict] = {}
    for a in arts:
        for c in a["robustness"].get("cases", []):
            row = rows.setdefault(str(c["case"]), {"case": str(c["case"]), "kind": c.get("kind"), "gated": False,
                                                   "cells": {}})
            row["gated"] = row["gated"] or bool(c.get("gated"))
            row["cells"][a["name"]] = c
    return list(rows.values())


def robust_cell(c: dict | None) -> str:
    """ "agree_ref % / UA %", plus the agreement with the artifact's own 0 dB decisions where measured."""
    if c is None:
        return "—"
    s = f"{_pct(c.get('agree_ref'))} / {_pct(c.get('ua'))}"
    return s + (f" (self {_pct(c['agree_self'])})" if c.get("agree_self") is not None else "")


def robust_summary(report: dict, a: dict) -> str:
    r = a["robustness"]
    parts = [f"vs {reference_label(r.get('reference'))} on the same perturbed input"]
    if r.get("n") is not None:
        parts.append(f"{r['n']} clips")
    for key, what in (("min_gain_agreement", "worst gain"), ("min_length_agreement", "worst length")):
        if r.get(key) is not None:
            parts.append(f"{what} {_pct(r[key])} %")
    parts.append(f"gate limit {_pct(robust_limit(report, a['name']))} %")
    failed = [c["case"] for c in r.get("cases", []) if case_failed(c, robust_limit(report, a["name"]))]
    if failed:
        parts.append("FAILED: " + ", ".join(map(str, failed)))
    return ", ".join(parts)


ROBUST_LEGEND = ("cell: agreement % with the reference on the same perturbed input / UA %; gain cases add "
                 "(self %), the agreement with the artifact's own decisions at 0 dB. Gated cases count towards each "
                 "artifact's \"robust agreement\" gate, which takes the worse of the two agreements where both are "
                 "measured; ✗ marks a gated case below the gate's limit. Noise cases are reported but not gated, "
                 "since the FP32 student's own decisions change under noise.")


# ---- markdown

def md_cell(x) -> str:
    """One markdown table cell: pipes escaped (else they split the cell), no line breaks."""
    return str(x).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_row(cells) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


def md_table(header: list, rows: list[list]) -> list[str]:
    return [md_row(header), "|" + "---|" * len(header)] + [md_row(r) for r in rows]


def robustness_markdown(report: dict) -> list[str]:
    arts = robust_artifacts(report)
    if not arts:
        return []
    rows = []
    for row in robust_cases(arts):
        cells = [row["case"], row["kind"] or "—", "yes" if row["gated"] else "no (reported)"]
        for a in arts:
            c = row["cells"].get(a["name"])
            s = robust_cell(c)
            cells.append(f"**{s} ✗**" if c is not None and case_failed(c, robust_limit(report, a["name"])) else s)
        rows.append(cells)
    return ["", "## Robustness (agreement % / UA % under perturbations)", "",
            *md_table(["case", "kind", "gated"] + [a["name"] for a in arts], rows), "", ROBUST_LEGEND, "",
            *[f"- **{a['name']}** {robust_summary(report, a)}" for a in arts]]


MATRIX_COLUMNS = ["artifact", "artifact", "agree %", "max |Δlogit|", "gated"]


def matrix_rows(report: dict) -> list[list[str]]:
    """The cross-runtime agreement matrix, one row per pair of verified artifacts."""
    return [[p["a"], p["b"], f"{100 * p['agreement']:.1f}", f"{p['max_abs_logit_diff']:.4f}",
             "yes" if p["should_match"] else "no (other reference model or a baseline)"]
            for p in report.get("agreement_matrix") or []]


def matrix_markdown(report: dict) -> list[str]:
    rows = matrix_rows(report)
    if not rows:
        return []
    return ["", "## Cross-runtime agreement", "", "Every pair of verified artifacts on the same held-out clips; "
            "pairs of one reference model are gated by verify.min_cross_agreement.", "",
            *md_table(MATRIX_COLUMNS, rows)]


def build_report(ctx: Context) -> dict:
    r = ctx.results
    t = r["teacher"]
    teacher = {"ua": t["test"]["ua"], "wa": t["test"]["wa"], "macro_f1": t["test"]["macro_f1"],
               "params": t["params"], "macs": t["macs"], "size_bytes": t["size_bytes"], "source": t.get("source")}
    waterfall = [{"step": "teacher", "ua": teacher["ua"]}] + [
        {"step": s, "ua": r[s]["test"]["ua"]} for s in ("distill", "prune", "qat")] + [
        {"step": a["name"], "ua": a["ua"]} for a in r["verify"]["artifacts"] if a.get("ua") is not None]
    report = {"recipe": ctx.recipe.model_dump(mode="json"), "target": ctx.target.model_dump(),
              "data": {k: v for k, v in r["data"].items() if k != "speakers"} | {"test_speakers": r["data"]["speakers"]["test"]},
              "teacher": teacher, "artifacts": r["verify"]["artifacts"], "gates": r["verify"]["gates"],
              "waterfall": waterfall, "stage_seconds": r.get("stage_seconds", {}),
              "warnings": list(r["verify"].get("warnings") or []),
              "agreement_matrix": r["verify"].get("agreement_matrix") or [],
              "passed": all(g["passed"] for g in r["verify"]["gates"])}
    if r["verify"].get("teacher"):  # the teacher scored on the very clips the artifacts were (drops are paired on them)
        report["teacher_same_clips"] = r["verify"]["teacher"]
    return report


def markdown(report: dict) -> str:
    lines = [f"# edgeser report: {report['recipe']['name']} → {report['target']['name']}", "",
             f"Held-out speakers: {', '.join(report['data']['test_speakers'])} "
             f"({report['data']['sizes']['test']} clips, classes: {', '.join(report['data']['classes'])})", ""]
    if report.get("warnings"):
        lines += ["## Warnings", "", *[f"- ⚠ {w}" for w in report["warnings"]], ""]
    lines += md_table(COLUMNS, table_rows(report))
    lines += ["", *table_notes(report)]
    notes = [f"- **{a['name']}** {a['status']}: {a['reason']}" for a in report["artifacts"] if a.get("reason")]
    notes += [f"- **{a['name']}** {line}" for a in report["artifacts"] for line in structural_checks(a)]
    if notes:
        lines += ["", "## Notes", *notes]
    lines += ["", "## Gates", "",
              *md_table(["gate", "limit", "value", "result"],
                        [[g["name"], g["limit"], gate_value(g), "pass" if g["passed"] else "**FAIL**"]
                         for g in report["gates"]])]
    lines += matrix_markdown(report)
    lines += robustness_markdown(report)
    lines += ["", "## Accuracy waterfall (UA %)", "", " → ".join(f"{w['step']} {100 * w['ua']:.1f}"
                                                                  for w in report["waterfall"]), ""]
    return "\n".join(lines)


def print_report(console, report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    for w in report.get("warnings") or []:
        console.print(f"[yellow]warning[/]: {escape(str(w))}")
    table = Table(title=f"edgeser: {report['recipe']['name']} → {report['target']['name']}")
    for c in COLUMNS:
        table.add_column(escape(c), justify="left" if c in ("artifact", "precision", "status", "agree vs") else "right")
    table.add_row(*map(escape, teacher_row(teacher_figures(report))))
    for a in report["artifacts"]:
        style = {"verified": "green", "skipped": "yellow", "failed": "red"}.get(a["status"])
        table.add_row(*map(escape, artifact_row(a)), style=style)
    console.print(table)
    for line in table_notes(report):
        console.print(escape(line))
    for a in report["artifacts"]:
        if a.get("reason"):
            console.print(f"[yellow]{escape(a['name'])}[/]: {escape(str(a['reason']))}")
        for line in structural_checks(a):
            console.print(f"[yellow]{escape(a['name'])}[/]: {escape(line)}")
    for a in robust_artifacts(report):
        console.print(f"robustness {escape(a['name'])}: {escape(robust_summary(report, a))}")
    for g in report["gates"]:
        mark = "[green]PASS[/]" if g["passed"] else "[red]FAIL[/]"
        console.print(f"{mark} {escape(g['name'])}: {escape(gate_value(g))} (limit {escape(str(g['limit']))})")
