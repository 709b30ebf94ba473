"""report.md / report.html / report.json from hand-made stage results (no pipeline run): tables that render,
each row's reference model, confidence intervals, warnings, and the robustness suite."""
from __future__ import annotations

import copy
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from markdown_it import MarkdownIt

from edgeser.report import COLUMNS, build_report, gate_value, markdown, print_report, table_rows
from edgeser.report_html import pareto_svg, render, waterfall_svg


class _Dump:
    def __init__(self, d):
        self.d = d

    def model_dump(self, mode=None):
        return copy.deepcopy(self.d)


def _case(case, kind, value, agree_ref, ua, gated, agree_self=None):
    return {"case": case, "kind": kind, "value": value, "agree_ref": agree_ref, "agree_self": agree_self, "ua": ua,
            "gated": gated}


def _robustness(low_gain=0.99):
    return {"reference": "prune", "n": 160, "min_gain_agreement": min(low_gain, 0.995), "min_length_agreement": 0.985,
            "cases": [_case("gain -40 dB", "gain", -40, low_gain, 0.91, True, agree_self=0.995),
                      _case("gain 0 dB", "gain", 0, 0.99, 0.95, True, agree_self=1.0),
                      _case("white noise SNR 5 dB", "noise", 5, 0.62, 0.55, False),
                      _case("telephone band", "band", "300-3400 Hz", 0.93, 0.90, False),
                      _case("length 3x", "length", 3.0, 0.985, 0.94, True),
                      _case("length 0.5x", "length", 0.5, low_gain + 0.1, 0.92, True)]}


def _artifact(name, precision, reference, ua=0.95, **extra):
    return {"name": name, "format": "onnx", "precision": precision, "path": f"artifacts/{name}", "reference": reference,
            "role": None, "status": "verified", "reason": None, "checks": {}, "ua": ua, "wa": ua + 0.01,
            "macro_f1": ua - 0.01, "agreement": 0.983, "max_abs_logit_diff": 0.25, "size_bytes": 300_000,
            "macs": 12e6, "latency_ms": {"p50": 1.5, "p95": 2.0}, "confusion": [[9, 1], [2, 8]]} | extra


def _results(with_ci=True, robust=True, low_gain=0.99):
    int8 = _artifact("onnx-int8", "int8", "qat")
    fp32 = _artifact("onnx-fp32", "fp32", "prune", ua=0.94)
    ptq = _artifact("onnx-int8-ptq", "int8", "prune", ua=0.90)
    skipped = {"name": "coreml", "format": "coreml", "precision": "int8", "path": "artifacts/x.mlpackage",
               "reference": "qat", "role": None, "status": "skipped", "checks": {},
               "reason": "no coreml runtime | macOS only"}  # a pipe in free text must not split a table cell
    verify = {"artifacts": [int8, fp32, ptq, skipped],
              "gates": [{"name": "agreement [onnx-int8]", "limit": 0.95, "value": 0.983, "passed": True},
                        {"name": "UA drop vs teacher, pt [onnx-int8]", "limit": 3.0, "value": 1.25, "passed": True}]}
    if with_ci:
        verify["gates"][1]["ci"] = [-2.0, 4.5]
    if with_ci:
        int8 |= {"ua_ci": [0.912, 0.981], "wa_ci": [0.90, 0.99], "ua_drop_pt": 1.25, "ua_drop_ci_pt": [-2.0, 4.5]}
        fp32 |= {"ua_ci": [0.90, 0.97], "wa_ci": [0.89, 0.98], "ua_drop_pt": 2.5, "ua_drop_ci_pt": [-0.5, 5.5]}
        verify["teacher"] = {"ua": 0.9625, "wa": 0.97, "ua_ci": [0.93, 0.99], "wa_ci": [0.94, 0.995], "n": 160}
        verify["warnings"] = ["held-out split of 160 clips resolves a UA drop to ±4.1 pt, wider than the 3 pt gate"]
    if robust:
        int8["robustness"] = _robustness(low_gain)
        ptq["robustness"] = _robustness() | {"cases": _robustness()["cases"][:3]}  # fewer cases: "—" for the rest
        for a in (int8, ptq):
            verify["gates"].append({"name": f"robust agreement [{a['name']}]", "limit": 0.98,
                                    "value": a["robustness"]["min_gain_agreement"],
                                    "passed": a["robustness"]["min_gain_agreement"] >= 0.98})
    return {"teacher": {"test": {"ua": 0.96, "wa": 0.965, "macro_f1": 0.955}, "params": 2_000_000, "macs": 400e6,
                        "size_bytes": 8_000_000},
            "distill": {"test": {"ua": 0.95}}, "prune": {"test": {"ua": 0.945}}, "qat": {"test": {"ua": 0.95}},
            "data": {"classes": ["angry", "happy"], "sizes": {"train": 600, "test": 160},
                     "speakers": {"train": ["s1", "s2"], "test": ["s9", "s10"]}},
            "verify": verify}


def _report(**kw) -> dict:
    ctx = SimpleNamespace(recipe=_Dump({"name": "demo", "verify": {"min_agreement": 0.95}}),
                          target=_Dump({"name": "cpu"}), results=_results(**kw))
    return build_report(ctx)


def md_tables(md: str) -> list[list[list[str]]]:
    """Every markdown table: rows of cells, split on pipes not escaped with a backslash."""
    tables, cur = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            cur = cur if cur is not None else []
            cur.append(cells)
            if len(cur) == 1:
                tables.append(cur)
        else:
            cur = None
    return tables


def md_table_by_header(md: str, first: str) -> list[dict]:
    """A markdown table (the one whose first header cell is FIRST) as a list of {header: cell}."""
    (t,) = [t for t in md_tables(md) if t[0][0] == first]
    return [dict(zip(t[0], r)) for r in t[2:]]


@pytest.mark.parametrize("kw", [{}, {"with_ci": False, "robust": False}])
def test_md_tables_have_as_many_cells_in_every_row(kw):
    md = markdown(_report(**kw))
    tables = md_tables(md)
    assert len(tables) == (3 if kw.get("robust", True) else 2)  # artifacts, gates (, robustness)
    for t in tables:
        assert len({len(r) for r in t}) == 1, t
        assert all(re.fullmatch(r"-+", c) for c in t[1])  # the separator row
    header = tables[0][0]
    assert "max\\|Δ\\|" in header and "agree vs" in header  # the pipes survive, escaped
    assert "| coreml | int8 | skipped |" in md  # reasons with pipes stay out of the table's cells


class HtmlTables(HTMLParser):
    """Every <table> of an HTML page as rows of cell texts (header row included)."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


@pytest.mark.parametrize("kw", [{"low_gain": 0.80}, {"with_ci": False, "robust": False}])
def test_md_tables_render_with_a_markdown_parser(kw):
    """A GFM table parser turns each table into an HTML table with the cells where the writer put them. A header
    whose cell count differs from the separator row's leaves no table at all; in body rows the parser pads or drops
    cells silently, so the main table and the gates are compared cell by cell with the data they were built from."""
    report = _report(**kw)
    md = markdown(report)
    p = HtmlTables()
    p.feed(MarkdownIt("commonmark").enable("table").render(md))
    n_md = sum(bool(re.fullmatch(r"\|(-+\|)+", line)) for line in md.splitlines())  # one separator row a table
    assert len(p.tables) == n_md == (3 if kw.get("robust", True) else 2)
    for t in p.tables:
        assert all(len(row) == len(t[0]) for row in t), t
    assert p.tables[0] == [COLUMNS] + table_rows(report)  # "max|Δ|" one header cell, each value in its column
    assert p.tables[1][1:] == [[g["name"], str(g["limit"]), gate_value(g), "pass" if g["passed"] else "FAIL"]
                               for g in report["gates"]]


def test_each_row_says_what_agree_is_measured_against():
    report = _report()
    rows = {r["artifact"]: r for r in md_table_by_header(markdown(report), "artifact")}
    assert rows["onnx-int8"]["agree vs"] == "QAT int8"
    assert rows["onnx-fp32"]["agree vs"] == rows["onnx-int8-ptq"]["agree vs"] == "FP32 student"
    assert rows["coreml"]["agree vs"] == rows["teacher (PyTorch)"]["agree vs"] == "—"  # nothing measured
    html = render(report)
    assert re.search(r"<td>onnx-int8</td>(<td>[^<]*</td>){6}<td>QAT int8</td>", html)
    assert re.search(r"<td>onnx-fp32</td>(<td>[^<]*</td>){6}<td>FP32 student</td>", html)
    assert "the QAT INT8 PyTorch model" in html and "the pruned FP32 PyTorch student" in markdown(report)


def test_confidence_intervals_and_warnings_when_present():
    report = _report()
    md = markdown(report)
    rows = {r["artifact"]: r for r in md_table_by_header(md, "artifact")}
    assert rows["onnx-int8"]["UA %"] == "95.0 [91.2, 98.1]"
    assert rows["onnx-int8"]["WA %"] == "96.0 [90.0, 99.0]"
    assert rows["onnx-int8"]["UA drop pt"] == "1.2 [-2.0, 4.5]"
    assert rows["onnx-int8-ptq"]["UA drop pt"] == "—"  # this one has no interval keys
    # the teacher row is the teacher on the artifacts' clips, with its interval
    assert rows["teacher (PyTorch)"]["UA %"] == "96.2 [93.0, 99.0]"
    assert "same 160 clips" in md and "bootstrap" in md
    assert report["teacher_same_clips"]["ua_ci"] == [0.93, 0.99]
    assert report["warnings"] and report["warnings"][0] in md and "## Warnings" in md
    gates = {g["gate"]: g for g in md_table_by_header(md, "gate")}
    assert gates["UA drop vs teacher, pt [onnx-int8]"]["value"] == "1.25 [-2, 4.5]"
    assert gates["agreement [onnx-int8]"]["value"] == "0.983"
    html = render(report)
    assert "<td>95.0 [91.2, 98.1]</td>" in html and "<td>1.25 [-2, 4.5]</td>" in html and "<td>1.2 [-2.0, 4.5]</td>" in html
    assert "warn-box" in html and "resolves a UA drop to ±4.1 pt" in html


def test_missing_intervals_render_a_dash():
    report = _report(with_ci=False, robust=False)
    md = markdown(report)
    rows = {r["artifact"]: r for r in md_table_by_header(md, "artifact")}
    assert rows["onnx-int8"]["UA %"] == "95.0" and rows["onnx-int8"]["UA drop pt"] == "—"
    assert rows["teacher (PyTorch)"]["UA %"] == "96.0"  # the teacher stage's own figure
    assert "[" not in rows["onnx-int8"]["WA %"]
    assert report["warnings"] == [] and "teacher_same_clips" not in report
    assert "## Warnings" not in md and "bootstrap" not in md


def test_robustness_table_rows_columns_and_failing_case():
    report = _report(low_gain=0.80)  # onnx-int8 agrees with FP32 on 80 % at -40 dB: a gated case that fails
    md = markdown(report)
    rows = md_table_by_header(md, "case")
    header = md_tables(md)[2][0]
    # onnx-fp32 carries no suite: left out
    assert header == ["case", "kind", "gated", "onnx-int8", "onnx-int8-ptq"]
    assert [r["case"] for r in rows] == ["gain -40 dB", "gain 0 dB", "white noise SNR 5 dB", "telephone band",
                                         "length 3x", "length 0.5x"]
    by = {r["case"]: r for r in rows}
    assert by["gain -40 dB"]["onnx-int8"] == "**80.0 / 91.0 (self 99.5) ✗**"
    assert by["gain -40 dB"]["onnx-int8-ptq"] == "99.0 / 91.0 (self 99.5)"
    assert by["length 0.5x"]["onnx-int8"] == "**90.0 / 92.0 ✗**"  # 90 % < 98 %, gated
    assert by["telephone band"]["onnx-int8"] == "93.0 / 90.0"  # not gated here: no mark
    assert by["length 3x"]["onnx-int8-ptq"] == "—"  # a case it did not run
    assert by["white noise SNR 5 dB"]["onnx-int8"] == "62.0 / 55.0"  # low but not gated: no mark
    assert by["white noise SNR 5 dB"]["gated"] == "no (reported)" and by["length 3x"]["gated"] == "yes"
    assert sum("✗" in c for r in rows for c in r.values()) == 2
    assert "FAILED: gain -40 dB, length 0.5x" in md


def test_robustness_section_omitted_without_any_suite():
    report = _report(robust=False)
    assert "Robustness" not in markdown(report) and "Robustness" not in render(report)
    assert len(md_tables(markdown(report))) == 2


class StrictParser(HTMLParser):
    """Tags must nest (every end tag closes the innermost open one); collects the robustness heatmap's cells."""
    VOID = {"meta", "br", "img", "link", "input", "hr", "rect", "line", "circle"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors = [], []
        self.table_class, self.row, self.rows, self.cell_cls = None, None, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table_class = a.get("class")
        if self.table_class == "robust":
            if tag == "tr":
                self.row = []
                self.rows.append(self.row)
            elif tag in ("td", "th"):
                self.cell_cls = (a.get("class") or "").split()
                self.row.append([self.cell_cls, ""])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()
        if tag == "table":
            self.table_class = None

    def handle_data(self, data):
        if self.table_class == "robust" and self.row:
            self.row[-1][1] += data


def parse(html: str) -> StrictParser:
    p = StrictParser()
    p.feed(html)
    p.close()
    assert not p.errors and p.stack == [], (p.errors, p.stack)
    return p


def test_html_heatmap_colours_and_well_formed():
    p = parse(render(_report(low_gain=0.80)))
    header = [text for _, text in p.rows[0]]
    assert header == ["case", "kind", "gated", "onnx-int8", "onnx-int8-ptq"]
    cells = {(r[0][1], header[j]): r[j] for r in p.rows[1:] for j in range(3, len(header))}
    cls, text = cells[("gain -40 dB", "onnx-int8")]
    assert "red" in cls and "gatefail" in cls and "✗" in text
    assert {"heat", "green"} <= set(cells[("gain 0 dB", "onnx-int8")][0])
    assert "amber" in cells[("telephone band", "onnx-int8")][0]  # 93 %
    assert {"amber", "gatefail"} <= set(cells[("length 0.5x", "onnx-int8")][0])  # 90 %: amber, yet below the gate
    assert cells[("length 0.5x", "onnx-int8-ptq")] == [["heat"], "—"]  # not run: no colour
    assert "red" in cells[("white noise SNR 5 dB", "onnx-int8")][0]  # coloured, but not a gate failure
    assert "gatefail" not in cells[("white noise SNR 5 dB", "onnx-int8")][0]
    html = render(_report(low_gain=0.80))
    assert "not gated" in html and "noise" in html  # the legend


def test_html_without_intervals_or_suite_is_well_formed():
    parse(render(_report(with_ci=False, robust=False)))


def test_console_report_prints_intervals_and_warnings_literally():
    from rich.console import Console

    report = _report(low_gain=0.80)
    console = Console(record=True, width=300)
    print_report(console, report)
    out = console.export_text()
    assert "95.0 [91.2, 98.1]" in out and "1.2 [-2.0, 4.5]" in out  # brackets are text, not rich markup
    assert "warning" in out and "FAILED: gain -40 dB" in out


# ---- report.html charts: each label by its own circle, no two labels over each other, an honest y axis

NS = "{http://www.w3.org/2000/svg}"
# runs/demo's artifacts (name, UA, p50 ms, bytes): four of them within 0.25 ms of each other
DEMO = [("torchscript", 0.8575, 1.4215, 987_034), ("pt2", 0.8575, 11.652, 1_374_956),
        ("onnx-fp32", 0.8625, 0.4108, 793_933), ("onnx-int8", 0.8575, 0.1662, 288_762),
        ("onnx-int8-stream", 0.8575, 0.1798, 593_727), ("onnx-int8-ptq", 0.8575, 0.2486, 258_767)]
CROWD = [(f"onnx-int8-v{i}", 0.90, 0.5, 300_000) for i in range(8)] + [("big", 0.91, 20.0, 3_000_000)]
WATERFALL = [("teacher", 0.915), ("distill", 0.8675), ("prune", 0.8625), ("qat", 0.8575), ("torchscript", 0.8575),
             ("pt2", 0.8575), ("onnx-fp32", 0.8625), ("onnx-int8", 0.8575), ("onnx-int8-stream", 0.8575),
             ("onnx-int8-ptq", 0.8575)]


def svg_root(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    return root


def text_box(t: ET.Element) -> list[tuple[float, float]]:
    """The corners of a <text>'s estimated box: 0.6 em a character, 1 em tall, turned by its rotate() about its
    anchor."""
    x, y, size = float(t.get("x")), float(t.get("y")), float(t.get("font-size"))
    w = 0.6 * size * len(t.text)
    x0 = {"start": x, "middle": x - w / 2, "end": x - w}[t.get("text-anchor", "start")]
    m = re.fullmatch(r"rotate\(([-\d.]+) ([-\d.]+) ([-\d.]+)\)", t.get("transform", "rotate(0 0 0)"))
    a, ox, oy = map(float, m.groups())
    assert a == 0 or (ox, oy) == (x, y)  # turned about its own anchor
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    return [(x + (px - x) * c - (py - y) * s, y + (px - x) * s + (py - y) * c)
            for px, py in ((x0, y - 0.8 * size), (x0 + w, y - 0.8 * size), (x0 + w, y + 0.2 * size), (x0, y + 0.2 * size))]


def overlap(p, q) -> bool:
    """Two convex polygons intersect: no edge of either separates them."""
    for poly in (p, q):
        for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1]):
            a, b = [[(y2 - y1) * x - (x2 - x1) * y for x, y in r] for r in (p, q)]
            if max(a) <= min(b) or max(b) <= min(a):
                return False
    return True


def inside(poly, root) -> bool:
    return all(0 <= x <= float(root.get("width")) and 0 <= y <= float(root.get("height")) for x, y in poly)


def hits_circle(poly, cx, cy, r) -> bool:
    xs, ys = [x for x, _ in poly], [y for _, y in poly]
    return math.hypot(cx - min(max(cx, min(xs)), max(xs)), cy - min(max(cy, min(ys)), max(ys))) < r


def _points(rows):
    return [{"name": n, "ua": u, "latency_ms": {"p50": p}, "size_bytes": b} for n, u, p, b in rows]


@pytest.mark.parametrize("rows", [DEMO, CROWD, DEMO[:1]], ids=["demo", "crowded", "one"])
def test_pareto_labels_sit_by_their_own_circle_and_never_overlap(rows):
    root = svg_root(pareto_svg(_points(rows)))
    groups = root.findall(f"{NS}g[@class='point']")
    assert len(groups) == len(rows)
    pts = []
    for g in groups:
        c, t, line = g.find(NS + "circle"), g.find(NS + "text"), g.find(NS + "line")
        cx, cy, r = (float(c.get(k)) for k in ("cx", "cy", "r"))
        ax, ay = float(t.get("x")), float(t.get("y")) - 4  # the label's anchor, at mid-height
        if line is None:  # beside its circle, just off the rim
            assert abs(math.hypot(ax - cx, ay - cy) - r) <= 6, t.text
        else:  # moved to a free row: a leader line joins the circle's centre to the label's anchor
            x1, y1, x2, y2 = (float(line.get(k)) for k in ("x1", "y1", "x2", "y2"))
            assert math.hypot(x1 - cx, y1 - cy) <= 1 and math.hypot(x2 - ax, y2 - ay) <= 1, t.text
        ua, ms, kb = map(float, re.fullmatch(r"\S+ ([\d.]+)% · ([\d.]+) ms · (\d+) KB", t.text).groups())
        pts.append((ua, ms, kb, cx, cy, r, text_box(t)))
    # each label's figures belong to the circle it is attached to: order by x = by latency, by height = by UA ...
    for a in pts:
        for b in pts:
            assert a[1] <= b[1] or a[3] >= b[3] - 1e-6
            assert a[0] <= b[0] or a[4] <= b[4] + 1e-6
            assert a[2] <= b[2] or a[5] >= b[5] - 0.1
    for i, (*_, box) in enumerate(pts):
        assert inside(box, root)
        assert not any(hits_circle(box, *p[3:6]) for j, p in enumerate(pts) if j != i)  # ... and lies on no other
        assert not any(overlap(box, p[6]) for p in pts[i + 1:])


@pytest.mark.parametrize("n", [10, 4, 20])
def test_waterfall_x_labels_do_not_overlap(n):
    steps = [{"step": s, "ua": u} for s, u in (WATERFALL * 2)[:n]]
    root = svg_root(waterfall_svg(steps))
    boxes = [text_box(t) for t in root.iter(NS + "text") if t.get("class") == "xlabel"]
    assert len(boxes) == n
    for i, b in enumerate(boxes):
        assert inside(b, root)
        assert not any(overlap(b, c) for c in boxes[i + 1:])


@pytest.mark.parametrize("low, origin", [(0.8575, 80), (0.93, 85), (0.03, 0)])
def test_waterfall_says_where_its_y_axis_starts(low, origin):
    root = svg_root(waterfall_svg([{"step": "teacher", "ua": 0.95}, {"step": "qat", "ua": low}]))
    ticks = {int(t.text): float(t.get("y")) for t in root.iter(NS + "text") if t.get("class") == "ytick"}
    base = max(float(r.get("y")) + float(r.get("height")) for r in root.iter(NS + "rect"))  # the bars' foot
    assert min(ticks) == origin and abs(ticks[origin] - base) <= 6  # the lowest tick is where the bars stand
    notes = [t.text for t in root.iter(NS + "text") if t.get("class") == "axis-note"]
    marks = [p for p in root.iter(NS + "polyline") if p.get("class") == "axis-break"]
    if origin:
        assert len(notes) == 1 and notes[0].startswith(f"y axis starts at {origin} %, not 0") and len(marks) == 1
    else:
        assert notes == [] and marks == []


def test_report_html_draws_both_charts():
    html = render(_report())
    assert len(re.findall(r'<svg class="waterfall"', html)) == 1 and len(re.findall(r'<svg class="pareto"', html)) == 1
    for svg in re.findall(r'<svg class="(?:waterfall|pareto)".*?</svg>', html, re.S):
        svg_root(svg)  # well-formed XML
