"""RUN/cv.json, cv.md and cv.html: mean ± std over folds of UA, WA and macro-F1 for the teacher, each stage and
each artifact, the UA drop against the teacher, and every fold's waterfall (`edgeser cv`, edgeser/cv.py).

Per fold, the figures are those of its own report (RUN/fold-K/report.json and stages/*/metrics.json): the
teacher as the fold's report table shows it (scored on the artifacts' clips), each stage's held-out figures,
and each verified artifact's. drop_pt = teacher UA − artifact UA in points, per fold, then averaged. std is the
sample standard deviation over folds (n − 1); an artifact not verified in a fold is left out of its mean, and
`n` says over how many folds it was taken.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from edgeser.fileio import write_json, write_text
from edgeser.report import md_table, teacher_figures
from edgeser.run_dir import RunDir

METRICS = ("ua", "wa", "macro_f1")
STAGES = ("distill", "prune", "qat")
STD_NOTE = "mean ± std over folds; std: sample standard deviation (n − 1)"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _stats(rows: list[dict], keys=METRICS) -> dict:
    out = {}
    for k in keys:
        out[f"{k}_mean"], out[f"{k}_std"] = mean_std([r.get(k) for r in rows])
    return out | {"n": sum(r.get(keys[0]) is not None for r in rows)}


def fold_figures(fold, run_dir: Path) -> dict:
    """One fold's figures, read from its run folder."""
    d = RunDir(run_dir / fold.name)
    report = json.loads(d.report("json").read_text())
    t = teacher_figures(report)
    teacher = {k: t.get(k) for k in METRICS}
    stages = {}
    for s in STAGES:
        m = d.read_metrics(s)["test"]
        stages[s] = {k: m.get(k) for k in METRICS}
    arts = {}
    for a in report["artifacts"]:
        scored = a.get("status") == "verified" and a.get("ua") is not None
        arts[a["name"]] = {"status": a.get("status")} | {k: a.get(k) if scored else None for k in METRICS} | {
            "drop_pt": 100 * (teacher["ua"] - a["ua"]) if scored else None}
    test = {"sessions": [fold.session]} if fold.session is not None else {}
    test |= {"speakers": report["data"]["test_speakers"], "clips": report["data"]["sizes"]["test"]}  # as it ran
    return {"fold": fold.index, "run": fold.name, "test": test, "teacher": teacher, "stages": stages, "artifacts": arts,
            "waterfall": report["waterfall"], "passed": report["passed"],
            "failed_gates": [g["name"] for g in report["gates"] if not g["passed"]]}


def summarise(plan, run_dir: Path, by: str) -> dict:
    per = [fold_figures(f, run_dir) for f in plan]
    names = list(dict.fromkeys(n for p in per for n in p["artifacts"]))
    artifacts = {}
    for n in names:
        rows = [p["artifacts"].get(n, {}) for p in per]
        drop = mean_std([r.get("drop_pt") for r in rows])
        artifacts[n] = _stats(rows) | {"drop_pt_mean": drop[0], "drop_pt_std": drop[1]}
    return {"folds": len(plan), "by": by, "std": "sample (n - 1)", "passed": all(p["passed"] for p in per),
            "failed": [{"fold": p["fold"], "run": p["run"], "gates": p["failed_gates"]}
                       for p in per if not p["passed"]],
            "teacher": _stats([p["teacher"] for p in per]),
            "stages": {s: _stats([p["stages"][s] for p in per]) for s in STAGES},
            "artifacts": artifacts, "per_fold": per}


def _ms(s: dict, key: str, scale: float = 100) -> str:
    m, sd = s.get(f"{key}_mean"), s.get(f"{key}_std")
    if m is None:
        return "—"
    return f"{scale * m:.1f}" + ("" if sd is None else f" ± {scale * sd:.1f}")


def summary_rows(cv: dict) -> list[list[str]]:
    """model | UA % | WA % | macro-F1 % | UA drop pt | folds, as mean ± std."""
    n = cv["folds"]
    rows = [["teacher", _ms(cv["teacher"], "ua"), _ms(cv["teacher"], "wa"), _ms(cv["teacher"], "macro_f1"), "—",
             f"{cv['teacher']['n']}/{n}"]]
    rows += [[s, _ms(v, "ua"), _ms(v, "wa"), _ms(v, "macro_f1"), "—", f"{v['n']}/{n}"]
             for s, v in cv["stages"].items()]
    rows += [[a, _ms(v, "ua"), _ms(v, "wa"), _ms(v, "macro_f1"), _ms(v, "drop_pt", 1), f"{v['n']}/{n}"]
             for a, v in cv["artifacts"].items()]
    return rows


SUMMARY_HEADER = ["model", "UA %", "WA %", "macro-F1 %", "UA drop pt", "folds"]


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def fold_rows(cv: dict) -> tuple[list[str], list[list[str]]]:
    """One row per fold: its test set, the teacher's, each stage's and each artifact's UA, the gates."""
    arts = list(cv["artifacts"])
    header = ["fold", "test", "clips", "teacher", *STAGES, *arts, "gates"]
    rows = []
    for p in cv["per_fold"]:
        test = ", ".join(p["test"].get("sessions") or p["test"]["speakers"])
        rows.append([p["run"], test, p["test"]["clips"], _pct(p["teacher"]["ua"]),
                     *[_pct(p["stages"][s]["ua"]) for s in STAGES],
                     *[_pct(p["artifacts"].get(a, {}).get("ua")) for a in arts],
                     "pass" if p["passed"] else "FAIL: " + ", ".join(p["failed_gates"])])
    return header, rows


def waterfall_line(steps: list[dict]) -> str:
    return " → ".join(f"{w['step']} {100 * w['ua']:.1f}" for w in steps)


def mean_waterfall(cv: dict) -> list[dict]:
    steps = [("teacher", cv["teacher"])] + list(cv["stages"].items()) + list(cv["artifacts"].items())
    return [{"step": s, "ua": v["ua_mean"]} for s, v in steps if v.get("ua_mean") is not None]


def markdown(cv: dict, title: str) -> str:
    verdict = "every fold's gates pass" if cv["passed"] else "a gate failed in " + ", ".join(
        f"{f['run']} ({', '.join(f['gates'])})" for f in cv["failed"])
    header, rows = fold_rows(cv)
    lines = [f"# edgeser cross-validation: {title}", "",
             f"{cv['folds']} folds by {cv['by']}, each a full run in RUN/fold-K; {verdict}.", "",
             *md_table(SUMMARY_HEADER, summary_rows(cv)), "",
             f"{STD_NOTE}. UA drop: teacher UA − artifact UA in points, per fold, then averaged.", "",
             "## Per fold (UA %)", "", *md_table(header, rows), "",
             "## Waterfalls (UA %)", "", f"- **mean**: {waterfall_line(mean_waterfall(cv))}",
             *[f"- **{p['run']}**: {waterfall_line(p['waterfall'])}" for p in cv["per_fold"]], ""]
    return "\n".join(lines)


def html(cv: dict, title: str) -> str:
    from edgeser.report_html import CSS, _e, waterfall_svg

    def table(header, rows):
        return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")

    header, rows = fold_rows(cv)
    verdict = ("<span class='pass'>every fold's gates pass</span>" if cv["passed"] else
               "<span class='fail'>a gate failed in " + _e(", ".join(f["run"] for f in cv["failed"])) + "</span>")
    falls = "".join(f"<div class='card'><b>{_e(p['run'])}</b><br>{waterfall_svg(p['waterfall'], w=520)}</div>"
                    for p in cv["per_fold"])
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>edgeser cv: {_e(title)}</title>
<style>{CSS}</style></head><body>
<h1>edgeser cross-validation: {_e(title)} — {verdict}</h1>
<p class="note">{cv['folds']} folds by {_e(cv['by'])}, each a full run in RUN/fold-K. {_e(STD_NOTE)}. UA drop: teacher
UA − artifact UA in points, per fold, then averaged.</p>
<h2>Mean ± std over folds</h2>{table(SUMMARY_HEADER, summary_rows(cv))}
<h2>Per fold (UA %)</h2>{table(header, rows)}
<h2>Mean waterfall</h2>{waterfall_svg(mean_waterfall(cv))}
<h2>Waterfall per fold</h2><div class="grid">{falls}</div>
</body></html>"""


def write_reports(run_dir: Path, cv: dict, title: str) -> None:
    """cv.json, cv.md and cv.html, each written atomically; cv.json last, so it marks a finished cv."""
    write_text(run_dir / "cv.md", markdown(cv, title))
    write_text(run_dir / "cv.html", html(cv, title))
    write_json(run_dir / "cv.json", cv)


def print_cv(console, cv: dict, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"edgeser cv: {title} ({cv['folds']} folds by {cv['by']}, mean ± std)")
    for c in SUMMARY_HEADER:
        table.add_column(c, justify="left" if c == "model" else "right")
    for r in summary_rows(cv):
        table.add_row(*map(escape, r))
    console.print(table)
    for f in cv["failed"]:
        console.print(f"[red]FAIL[/] {escape(f['run'])}: {escape(', '.join(f['gates']))}")
