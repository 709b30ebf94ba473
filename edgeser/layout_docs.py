"""The README's tables of stages, formats and report files, rendered from the stage declarations and the format
registry (tests/test_layout.py compares them with README.md, so the README cannot drift from the code)."""
from __future__ import annotations

from edgeser.formats import REGISTRY
from edgeser.run_dir import MANIFEST, REPORTS

WHAT = {
    "data": "synthetic corpus or a manifest, speaker-independent split",
    "teacher": "SoundNet-8 (conv1–7) + gated attention head, fine-tuned or loaded",
    "distill": "logit KD (temperature, alpha, optional hints) into a small log-mel CNN",
    "prune": "torch-pruning to a channel ratio, MACs or latency target; KD fine-tune",
    "qat": "BN folded, symmetric INT8 fake-quant, calibrated scales, KD from the FP32 student",
    "export": "every format the recipe lists (the table below)",
    "verify": "accuracy, agreement, max logit error, latency, size, robustness, gates",
    "report": "report.json, .md and .html; manifest.json last",
}
REPORT_FILES = {
    REPORTS[0]: "everything, machine-readable: stages, artifacts, gates, waterfall",
    REPORTS[1]: "the tables a person reads (also printed)",
    REPORTS[2]: "the same with charts, one self-contained file",
    MANIFEST: "artifact hashes, recipe hash, package versions: what `edgeser verify` checks",
    "cv.json, cv.md, cv.html": "`edgeser cv`: mean ± std over folds, per-fold waterfall",
}


def _code(items) -> str:
    return ", ".join(f"`{i}`" for i in items) or "–"


def stage_table() -> str:
    from edgeser.pipeline import STAGES

    rows = ["| stage | what | file | recipe sections | writes | runs |", "|---|---|---|---|---|---|"]
    for s in STAGES:
        runs = "rank 0" if s.main_only else "every rank"
        if s.always_run:
            runs += ", always"
        writes = _code(s.outputs) if s.outputs else "the corpus, in memory"
        rows.append(f"| {s.name} | {WHAT[s.name]} | `edgeser/stages/{s.name}.py` | {_code(s.sections)} | {writes} "
                    f"| {runs} |")
    return "\n".join(rows)


def format_table() -> str:
    rows = ["| format | file in `artifacts/` | precision | verified against | runtime | default |",
            "|---|---|---|---|---|---|"]
    refs = {"qat": "QAT student", "prune": "FP32 student"}
    for f in REGISTRY.values():
        ref = refs[f.reference] + (" (a baseline, not gated)" if f.role == "baseline" else "")
        rows.append(f"| {f.name} | `{f.file}` | {f.precision} | {ref} | {f.runtime} | {'yes' if f.default else 'no'} |")
    return "\n".join(rows)


def report_table() -> str:
    return "\n".join(["| file | what |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in REPORT_FILES.items())])


TABLES = {"stages": stage_table, "formats": format_table, "reports": report_table}
