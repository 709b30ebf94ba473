"""RUN/report.html: one self-contained page (inline SVG charts, no external files or scripts).

Confusion matrix per verified artifact, accuracy vs latency vs size (Pareto), the stage waterfall, and the
robustness suite as a heatmap (one row per perturbation, one column per artifact).
"""
from __future__ import annotations

import html
import math

from edgeser.report import (COLUMNS, HEAT_AMBER, HEAT_GREEN, ROBUST_LEGEND, case_agreement, case_failed, gate_value,
                             pct_ci, reference_label, robust_artifacts, robust_cases, robust_cell, robust_limit,
                             robust_summary, structural_checks, table_notes, table_rows)

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child,td:nth-child(2),td:nth-child(3){text-align:left}
.verified{color:#1a7f37}.skipped{color:#9a6700}.failed{color:#cf222e;font-weight:600}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:18px}.card{border:1px solid #ddd;border-radius:6px;padding:8px}
.note{font-size:13px;color:#555}.warn-box{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 12px}
td.heat{text-align:center;white-space:nowrap}.green{background:#c7ecd0}.amber{background:#fbe3a3}
.red{background:#f7c4c4}td.gatefail{outline:2px solid #cf222e;outline-offset:-2px;font-weight:600}
.swatch{display:inline-block;padding:0 8px;margin-right:6px;border-radius:3px}"""


def _e(x) -> str:
    return html.escape(str(x))


def waterfall_svg(steps: list[dict], w: int = 760, h: int = 260) -> str:
    lo = max(0.0, min(s["ua"] for s in steps) * 100 - 10)
    bw = (w - 60) / len(steps)
    bars = []
    for i, s in enumerate(steps):
        v = s["ua"] * 100
        bh = (v - lo) / (100 - lo) * (h - 70)
        x, y = 50 + i * bw, h - 40 - bh
        bars.append(f'<rect x="{x + 4:.1f}" y="{y:.1f}" width="{bw - 8:.1f}" height="{bh:.1f}" fill="#4c78a8"/>'
                    f'<text x="{x + bw / 2:.1f}" y="{y - 4:.1f}" font-size="12" text-anchor="middle">{v:.1f}</text>'
                    f'<text x="{x + bw / 2:.1f}" y="{h - 24}" font-size="11" text-anchor="middle">{_e(s["step"])}</text>')
    axis = (f'<line x1="46" y1="{h - 40}" x2="{w - 6}" y2="{h - 40}" stroke="#999"/>'
            f'<text x="8" y="20" font-size="12">UA % (axis from {lo:.0f})</text>')
    return f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">{axis}{"".join(bars)}</svg>'


def pareto_svg(artifacts: list[dict], w: int = 760, h: int = 320) -> str:
    pts = [a for a in artifacts if a.get("ua") is not None and a.get("latency_ms")]
    if not pts:
        return "<p class='note'>no verified artifact with a latency</p>"
    lat = [math.log10(a["latency_ms"]["p50"]) for a in pts]
    ua = [a["ua"] * 100 for a in pts]
    lx0, lx1 = min(lat) - 0.2, max(lat) + 0.2
    uy0, uy1 = min(ua) - 3, min(100, max(ua) + 3)
    big = max(a["size_bytes"] for a in pts)
    marks, placed = [], []
    for a, lx, u in sorted(zip(pts, lat, ua), key=lambda t: (t[1], -t[2])):
        x = 60 + (lx - lx0) / (lx1 - lx0) * (w - 90)
        y = h - 50 - (u - uy0) / (uy1 - uy0) * (h - 80)
        r = 5 + 20 * math.sqrt(a["size_bytes"] / big)
        ly = y + 4
        while any(abs(ly - py) < 15 and abs(x - px) < 170 for px, py in placed):  # keep labels apart
            ly += 15
        placed.append((x, ly))
        left = x > 0.55 * w  # labels of right-hand points go to their left, so they stay inside the chart
        tx, anchor = (x - r - 3, "end") if left else (x + r + 3, "start")
        marks.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#f58518" fill-opacity="0.45" stroke="#b35806"/>'
                     f'<text x="{tx:.1f}" y="{ly:.1f}" font-size="12" text-anchor="{anchor}">{_e(a["name"])} '
                     f'{u:.1f}% · {a["latency_ms"]["p50"]:.2f} ms · {a["size_bytes"] / 1024:.0f} KB</text>')
    axes = (f'<line x1="55" y1="{h - 45}" x2="{w - 10}" y2="{h - 45}" stroke="#999"/>'
            f'<line x1="55" y1="10" x2="55" y2="{h - 45}" stroke="#999"/>'
            f'<text x="{w / 2:.0f}" y="{h - 12}" font-size="12" text-anchor="middle">latency p50, ms (log scale): '
            f'{10 ** lx0:.2g} … {10 ** lx1:.2g}; circle area = file size</text>'
            f'<text x="10" y="16" font-size="12">UA % ({uy0:.0f} … {uy1:.0f})</text>')
    return f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">{axes}{"".join(marks)}</svg>'


def confusion_svg(cm: list[list[int]], classes: list[str], cell: int = 44) -> str:
    k, pad = len(classes), 70
    size = pad + k * cell + 10
    top = max(max(r) for r in cm) or 1
    cells = []
    for i, row in enumerate(cm):
        cells.append(f'<text x="{pad - 6}" y="{pad + i * cell + cell / 2 + 4}" font-size="11" text-anchor="end">'
                     f'{_e(classes[i])}</text>')
        for j, v in enumerate(row):
            shade = int(255 - 190 * v / top)
            fill = f"rgb({shade},{shade},255)" if i != j else f"rgb({shade},255,{shade})"
            cells.append(f'<rect x="{pad + j * cell}" y="{pad + i * cell}" width="{cell - 2}" height="{cell - 2}" '
                         f'fill="{fill}"/><text x="{pad + j * cell + cell / 2 - 1}" y="{pad + i * cell + cell / 2 + 4}" '
                         f'font-size="12" text-anchor="middle">{v}</text>')
    for j, c in enumerate(classes):
        cells.append(f'<text x="{pad + j * cell + cell / 2}" y="{pad - 8}" font-size="11" text-anchor="middle">'
                     f'{_e(c)}</text>')
    cells.append(f'<text x="4" y="14" font-size="11">rows: true, columns: predicted</text>')
    return f'<svg width="{size}" height="{size}" xmlns="http://www.w3.org/2000/svg">{"".join(cells)}</svg>'


def heat_class(agreement) -> str:
    """Background of a heatmap cell: green, amber or red by agreement (no colour when unmeasured)."""
    if agreement is None:
        return ""
    return "green" if agreement >= HEAT_GREEN else "amber" if agreement >= HEAT_AMBER else "red"


def robustness_html(report: dict) -> str:
    """The robustness suite as a heatmap table; empty when no artifact carries one."""
    arts = robust_artifacts(report)
    if not arts:
        return ""
    head = "<tr><th>case</th><th>kind</th><th>gated</th>" + "".join(f"<th>{_e(a['name'])}</th>" for a in arts) + "</tr>"
    body = []
    for row in robust_cases(arts):
        cells = [f"<td>{_e(row['case'])}</td><td>{_e(row['kind'] or '—')}</td>"
                 f"<td>{'gated' if row['gated'] else 'reported'}</td>"]
        for a in arts:
            c = row["cells"].get(a["name"])
            if c is None:
                cells.append("<td class='heat'>—</td>")
                continue
            failed = case_failed(c, robust_limit(report, a["name"]))
            cls = " ".join(x for x in ("heat", heat_class(case_agreement(c)), "gatefail" if failed else "") if x)
            cells.append(f"<td class='{cls}'>{_e(robust_cell(c))}{' ✗' if failed else ''}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    legend = (f"<p class='note'><span class='swatch green'>≥ {100 * HEAT_GREEN:.0f} %</span>"
              f"<span class='swatch amber'>≥ {100 * HEAT_AMBER:.0f} %</span>"
              f"<span class='swatch red'>&lt; {100 * HEAT_AMBER:.0f} %</span> colour: the agreement the gate sees "
              f"(the worse of the two for gain cases). {_e(ROBUST_LEGEND)}</p>")
    summary = "".join(f"<li><b>{_e(a['name'])}</b> {_e(robust_summary(report, a))}</li>" for a in arts)
    return (f"<h2>Robustness</h2><table class='robust'>{head}{''.join(body)}</table>{legend}"
            f"<ul class='note'>{summary}</ul>")


def render(report: dict) -> str:
    classes = report["data"]["classes"]
    rows = table_rows(report)
    status = ["reference"] + [a["status"] for a in report["artifacts"]]
    table = "<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in COLUMNS) + "</tr>" + "".join(
        f'<tr class="{s}">' + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r, s in zip(rows, status)) + "</table>"
    gates = "<table><tr><th>gate</th><th>limit</th><th>value</th><th>result</th></tr>" + "".join(
        f"<tr><td>{_e(g['name'])}</td><td>{_e(g['limit'])}</td><td>{_e(gate_value(g))}</td>"
        f"<td class='{'pass' if g['passed'] else 'fail'}'>{'pass' if g['passed'] else 'FAIL'}</td></tr>"
        for g in report["gates"]) + "</table>"
    notes = "".join(f"<li><b>{_e(a['name'])}</b> {_e(a['status'])}: {_e(a['reason'])}</li>"
                    for a in report["artifacts"] if a.get("reason"))
    notes += "".join(f"<li><b>{_e(a['name'])}</b> {_e(line)}</li>" for a in report["artifacts"]
                     for line in structural_checks(a))
    cms = "".join(f'<div class="card"><b>{_e(a["name"])}</b> — UA {_e(pct_ci(a["ua"], a.get("ua_ci")))} % '
                  f'(agreement vs {_e(reference_label(a.get("reference")))})<br>'
                  f'{confusion_svg(a["confusion"], classes)}</div>'
                  for a in report["artifacts"] if a.get("confusion"))
    warnings = ("<div class='warn-box'><b>Warnings</b><ul>" + "".join(f"<li>{_e(w)}</li>" for w in report["warnings"])
                + "</ul></div>") if report.get("warnings") else ""
    table_note = "".join(f"<p class='note'>{_e(line)}</p>" for line in table_notes(report))
    verdict = ("<span class='pass'>all gates pass</span>" if report["passed"]
               else "<span class='fail'>a gate failed</span>")
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>edgeser report: {_e(report['recipe']['name'])}</title>
<style>{CSS}</style></head><body>
<h1>edgeser: {_e(report['recipe']['name'])} → {_e(report['target']['name'])} — {verdict}</h1>
<p class="note">Held-out speakers {_e(', '.join(report['data']['test_speakers']))}, {report['data']['sizes']['test']} clips,
classes {_e(', '.join(classes))}. Latency: batch 1, one thread.</p>
{warnings}
<h2>Artifacts</h2>{table}{table_note}<ul class="note">{notes}</ul>
<h2>Gates</h2>{gates}
{robustness_html(report)}
<h2>Accuracy waterfall</h2>{waterfall_svg(report['waterfall'])}
<h2>Accuracy vs latency vs size</h2>{pareto_svg(report['artifacts'])}
<h2>Confusion matrices</h2><div class="grid">{cms}</div>
</body></html>"""
