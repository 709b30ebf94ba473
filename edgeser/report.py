"""Stage 8: report.json (machine-readable) and report.md (a table people read, also printed)."""
from __future__ import annotations

from edgeser.fileio import write_json, write_text
from edgeser.stages.common import Context

COLUMNS = ["artifact", "precision", "status", "UA %", "WA %", "F1 %", "agree %", "max|Δ|", "p50 ms", "p95 ms",
           "size KB", "MMAC"]


def _pct(v):
    return "—" if v is None else f"{100 * v:.1f}"


def artifact_row(a: dict) -> list[str]:
    lat = a.get("latency_ms") or {}
    return [a["name"], a["precision"], a["status"], _pct(a.get("ua")), _pct(a.get("wa")), _pct(a.get("macro_f1")),
            _pct(a.get("agreement")),
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


def teacher_row(t: dict) -> list[str]:
    return ["teacher (PyTorch)", "fp32", "reference", _pct(t["ua"]), _pct(t["wa"]), _pct(t["macro_f1"]), "—", "—",
            "—", "—", f"{t['size_bytes'] / 1024:.0f}", f"{t['macs'] / 1e6:.1f}"]


def build_report(ctx: Context) -> dict:
    r = ctx.results
    t = r["teacher"]
    teacher = {"ua": t["test"]["ua"], "wa": t["test"]["wa"], "macro_f1": t["test"]["macro_f1"],
               "params": t["params"], "macs": t["macs"], "size_bytes": t["size_bytes"]}
    waterfall = [{"step": "teacher", "ua": teacher["ua"]}] + [
        {"step": s, "ua": r[s]["test"]["ua"]} for s in ("distill", "prune", "qat")] + [
        {"step": a["name"], "ua": a["ua"]} for a in r["verify"]["artifacts"] if a.get("ua") is not None]
    return {"recipe": ctx.recipe.model_dump(mode="json"), "target": ctx.target.model_dump(),
            "data": {k: v for k, v in r["data"].items() if k != "speakers"} | {"test_speakers": r["data"]["speakers"]["test"]},
            "teacher": teacher, "artifacts": r["verify"]["artifacts"], "gates": r["verify"]["gates"],
            "waterfall": waterfall, "stage_seconds": r.get("stage_seconds", {}),
            "passed": all(g["passed"] for g in r["verify"]["gates"])}


def markdown(report: dict) -> str:
    rows = [teacher_row(report["teacher"])] + [artifact_row(a) for a in report["artifacts"]]
    lines = [f"# edgeser report: {report['recipe']['name']} → {report['target']['name']}", "",
             f"Held-out speakers: {', '.join(report['data']['test_speakers'])} "
             f"({report['data']['sizes']['test']} clips, classes: {', '.join(report['data']['classes'])})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = [f"- **{a['name']}** {a['status']}: {a['reason']}" for a in report["artifacts"] if a.get("reason")]
    notes += [f"- **{a['name']}** {line}" for a in report["artifacts"] for line in structural_checks(a)]
    if notes:
        lines += ["", "## Notes", *notes]
    lines += ["", "## Gates", "", "| gate | limit | value | result |", "|---|---|---|---|"]
    lines += [f"| {g['name']} | {g['limit']} | {g['value']} | {'pass' if g['passed'] else '**FAIL**'} |"
              for g in report["gates"]]
    lines += ["", "## Accuracy waterfall (UA %)", "", " → ".join(f"{w['step']} {100 * w['ua']:.1f}"
                                                                  for w in report["waterfall"]), ""]
    return "\n".join(lines)


def run(ctx: Context) -> dict:
    report = build_report(ctx)
    write_json(ctx.run_dir / "report.json", report)
    write_text(ctx.run_dir / "report.md", markdown(report))
    from edgeser.report_html import render

    write_text(ctx.run_dir / "report.html", render(report))
    return report


def print_report(console, report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"edgeser: {report['recipe']['name']} → {report['target']['name']}")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("artifact", "precision", "status") else "right")
    table.add_row(*teacher_row(report["teacher"]))
    for a in report["artifacts"]:
        style = {"verified": "green", "skipped": "yellow", "failed": "red"}.get(a["status"])
        table.add_row(*artifact_row(a), style=style)
    console.print(table)
    for a in report["artifacts"]:
        if a.get("reason"):
            console.print(f"[yellow]{a['name']}[/]: {escape(str(a['reason']))}")
        for line in structural_checks(a):
            console.print(f"[yellow]{a['name']}[/]: {escape(line)}")
    for g in report["gates"]:
        mark = "[green]PASS[/]" if g["passed"] else "[red]FAIL[/]"
        console.print(f"{mark} {escape(g['name'])}: {escape(str(g['value']))} (limit {escape(str(g['limit']))})")
