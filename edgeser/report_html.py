"""RUN/report.html: one self-contained page (inline SVG charts, no external files or scripts).

Confusion matrix per verified artifact, accuracy vs latency vs size (Pareto), the stage waterfall, and the
robustness suite as a heatmap (one row per perturbation, one column per artifact).
"""
from __future__ import annotations

import html
import math

from edgeser.report import (COLUMNS, HEAT_AMBER, HEAT_GREEN, MATRIX_COLUMNS, ROBUST_LEGEND, case_agreement, case_failed,
                             gate_value, matrix_rows, pct_ci, reference_label, robust_artifacts, robust_cases,
                             robust_cell, robust_limit, robust_summary, structural_checks, table_notes, table_rows)

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#222;
padding:0 16px}svg{max-width:100%;height:auto}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child,td:nth-child(2),td:nth-child(3){text-align:left}
.verified{color:#1a7f37}.skipped{color:#9a6700}.failed{color:#cf222e;font-weight:600}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:18px}.card{border:1px solid #ddd;border-radius:6px;padding:8px}
.note{font-size:13px;color:#555}.warn-box{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 12px}
td.heat{text-align:center;white-space:nowrap}@media (max-width:1000px){td.heat{white-space:normal}}
.green{background:#c7ecd0}.amber{background:#fbe3a3}
.red{background:#f7c4c4}td.gatefail{outline:2px solid #cf222e;outline-offset:-2px;font-weight:600}
.swatch{display:inline-block;padding:0 8px;margin-right:6px;border-radius:3px}"""


def _e(x) -> str:
    return html.escape(str(x))


def text_width(s: str, size: float) -> float:
    """A text's width estimated without font metrics: 0.6 em a character (DejaVu Sans draws these labels at
    0.51-0.54 em)."""
    return 0.6 * size * len(s)


def waterfall_svg(steps: list[dict], w: int = 760) -> str:
    """UA % per stage as bars. The y axis starts at a multiple of 5 below the lowest bar; when that is above 0 the
    axis carries a break mark and the chart says so. Step names too wide for their bar are drawn at 40°."""
    ua = [s["ua"] * 100 for s in steps]
    lo = max(0, 5 * math.floor(min(ua) / 5) - 5)
    tick = 5 if 100 - lo <= 30 else 10 if 100 - lo <= 60 else 20
    top, ph, x0 = 30, 180, 50
    base, bw = top + ph, (w - x0 - 10) / len(steps)
    widest = max(text_width(s["step"], 11) for s in steps)
    tilt = widest > bw - 6
    h = base + (int(widest * math.sin(math.radians(40))) + 24 if tilt else 24) + 8

    def y(v):
        return base - (v - lo) / (100 - lo) * ph

    parts = [f'<line x1="{x0 - 4}" y1="{base}" x2="{w - 6}" y2="{base}" stroke="#999"/>',
             f'<text x="8" y="16" font-size="12">UA %</text>']
    for v in range(lo, 101, tick):
        parts.append(f'<text class="ytick" x="{x0 - 8}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v}</text>'
                     f'<line x1="{x0 - 6}" y1="{y(v):.1f}" x2="{x0 - 2}" y2="{y(v):.1f}" stroke="#999"/>')
    if lo > 0:  # the axis breaks just above its origin: a zigzag in a gap, and the caption in words
        parts.append(f'<line x1="{x0 - 4}" y1="{top - 6}" x2="{x0 - 4}" y2="{base - 20}" stroke="#999"/>'
                     f'<line x1="{x0 - 4}" y1="{base - 4}" x2="{x0 - 4}" y2="{base}" stroke="#999"/>'
                     f'<polyline class="axis-break" points="{x0 - 4},{base - 20} {x0 - 9},{base - 16} {x0 + 1},{base - 10} '
                     f'{x0 - 9},{base - 6} {x0 - 4},{base - 4}" fill="none" stroke="#555"/>'
                     f'<text class="axis-note" x="{w - 6}" y="16" font-size="12" text-anchor="end" fill="#9a6700">'
                     f'y axis starts at {lo} %, not 0: bar heights exaggerate the differences</text>')
    else:
        parts.append(f'<line x1="{x0 - 4}" y1="{top - 6}" x2="{x0 - 4}" y2="{base}" stroke="#999"/>')
    for i, (s, v) in enumerate(zip(steps, ua)):
        cx = x0 + (i + 0.5) * bw
        label = (f'text-anchor="end" transform="rotate(-40 {cx:.1f} {base + 14})"' if tilt else 'text-anchor="middle"')
        parts.append(f'<rect x="{cx - bw / 2 + 4:.1f}" y="{y(v):.1f}" width="{bw - 8:.1f}" height="{base - y(v):.1f}" '
                     f'fill="#4c78a8"/><text x="{cx:.1f}" y="{y(v) - 4:.1f}" font-size="12" text-anchor="middle">{v:.1f}'
                     f'</text><text class="xlabel" x="{cx:.1f}" y="{base + 14}" font-size="11" {label}>{_e(s["step"])}</text>')
    return _svg("waterfall", w, h, "".join(parts))


def _hits_circle(box, cx, cy, r) -> bool:
    x0, y0, x1, y1 = box
    return math.hypot(cx - min(max(cx, x0), x1), cy - min(max(cy, y0), y1)) < r


def _label_spot(x, y, r, tw, right_first, taken, circles, area):
    """Where a point's 12 px label goes: beside its circle, else in the nearest free row above or below, clear of
    other labels and circles and inside AREA. Returns (anchor x, baseline y, on the right?)."""
    for dy in sorted(range(-320, 321, 16), key=abs):
        for right in (right_first, not right_first):
            tx = x + r + 4 if right else x - r - 4
            box = (tx if right else tx - tw, y + dy - 9, tx + tw if right else tx, y + dy + 4)
            if (area[0] <= box[0] and box[2] <= area[2] and area[1] <= box[1] and box[3] <= area[3]
                    and not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in taken)
                    and not any(_hits_circle(box, *c) for c in circles)):
                taken.append(box)
                return tx, y + dy + 4, right
    return (x + r + 4, y + 4, True) if right_first else (x - r - 4, y + 4, False)  # no room: overlap rather than drop


def pareto_svg(artifacts: list[dict], w: int = 760, h: int = 340) -> str:
    """UA vs latency (log) with circle area = file size. Each label sits beside its own circle, or, where that spot is
    taken, in the nearest free row with a leader line to the circle's centre dot."""
    pts = [a for a in artifacts if a.get("ua") is not None and a.get("latency_ms")]
    if not pts:
        return "<p class='note'>no verified artifact with a latency</p>"
    lat = [math.log10(a["latency_ms"]["p50"]) for a in pts]
    ua = [a["ua"] * 100 for a in pts]
    lx0, lx1 = min(lat) - 0.2, max(lat) + 0.2
    uy0, uy1 = min(ua) - 3, min(100, max(ua) + 3)
    big = max(a["size_bytes"] for a in pts)
    px0, px1, py0, py1 = 60, w - 30, 26, h - 50

    def xpos(lx):
        return px0 + (lx - lx0) / (lx1 - lx0) * (px1 - px0)

    dots = [(xpos(lx), py1 - (u - uy0) / (uy1 - uy0) * (py1 - py0), 5 + 20 * math.sqrt(a["size_bytes"] / big), a, u)
            for a, lx, u in zip(pts, lat, ua)]
    circles, taken, marks = [d[:3] for d in dots], [], []
    for x, y, r, a, u in sorted(dots, key=lambda d: d[0]):
        text = f'{a["name"]} {u:.1f}% · {a["latency_ms"]["p50"]:.2f} ms · {a["size_bytes"] / 1024:.0f} KB'
        tx, ty, right = _label_spot(x, y, r, text_width(text, 12), x < 0.55 * w, taken, circles, (px0, 20, w - 4, py1))
        leader = (f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{tx:.1f}" y2="{ty - 4:.1f}" stroke="#b35806" stroke-width="0.8"/>'
                  if abs(ty - 4 - y) > 1 else "")
        marks.append((r, f'<g class="point"><circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#f58518" '
                         f'fill-opacity="0.4" stroke="#b35806"/><circle cx="{x:.1f}" cy="{y:.1f}" r="1.8" '
                         f'fill="#b35806"/>{leader}<text x="{tx:.1f}" y="{ty:.1f}" font-size="12" '
                         f'text-anchor="{"start" if right else "end"}">{_e(text)}</text></g>'))
    at = [math.log10(m) + k for k in range(math.floor(lx0), math.ceil(lx1) + 1)  # ticks at 1-2-5 ms, or decades
          for m in ((1, 2, 5) if lx1 - lx0 < 4 else (1,))]
    ticks = "".join(f'<line x1="{xpos(k):.1f}" y1="{h - 45}" x2="{xpos(k):.1f}" y2="{h - 41}" stroke="#999"/>'
                    f'<text x="{xpos(k):.1f}" y="{h - 30}" font-size="11" text-anchor="middle">{10.0 ** k:g}</text>'
                    for k in at if lx0 <= k <= lx1)
    axes = (f'<line x1="55" y1="{h - 45}" x2="{w - 10}" y2="{h - 45}" stroke="#999"/>'
            f'<line x1="55" y1="10" x2="55" y2="{h - 45}" stroke="#999"/>{ticks}'
            f'<text x="{w / 2:.0f}" y="{h - 12}" font-size="12" text-anchor="middle">latency p50, ms (log scale); '
            f'circle area = file size</text>'
            f'<text x="10" y="16" font-size="12">UA % ({uy0:.0f} … {uy1:.0f})</text>')
    # big circles first, so small ones stay visible on top of them
    return _svg("pareto", w, h, axes + "".join(m for _, m in sorted(marks, key=lambda m: -m[0])))


def _svg(cls: str, w: float, h: float, body: str) -> str:
    """An inline chart that shrinks with a narrow page (viewBox) and keeps its proportions."""
    return (f'<svg class="{cls}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">'
            f'{body}</svg>')


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
    return _svg("confusion", size, size, "".join(cells))


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
    mrows = matrix_rows(report)
    matrix = ("<h2>Cross-runtime agreement</h2><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in MATRIX_COLUMNS)
              + "</tr>" + "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in mrows)
              + "</table>") if mrows else ""
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
<h2>Gates</h2>{gates}{matrix}
{robustness_html(report)}
<h2>Accuracy waterfall</h2>{waterfall_svg(report['waterfall'])}
<h2>Accuracy vs latency vs size</h2>{pareto_svg(report['artifacts'])}
<h2>Confusion matrices</h2><div class="grid">{cms}</div>
</body></html>"""
