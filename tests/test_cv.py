"""`edgeser cv`: k-fold speaker-independent cross-validation (issue 13, point 3).

Folds are speaker-disjoint and give every speaker one turn as test; cv.json's mean ± std are those of the
fold folders' own reports; --resume skips what the folds finished; a failed gate in a fold exits 1 naming it;
bad settings exit 2 naming the setting and write nothing; --by session makes one fold per manifest session."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.cv_report import summarise
from edgeser.data.manifest import Item, speaker_folds
from tests.conftest import recipe_with, write_recipe

runner = CliRunner()

# TINY (6 synthetic speakers), each fold kept as short as the pipeline allows: one artifact, no robustness suite
CV_TINY = recipe_with(("export.formats", ["onnx-int8"]), ("verify.robustness", False), ("verify.latency_runs", 3),
                      ("distill.epochs", 1), ("prune.epochs", 0), ("qat.epochs", 0))
SPEAKERS = {f"spk{i:02d}" for i in range(6)}


def _cv(*args: str):
    return runner.invoke(app, ["cv", *args, "--no-progress"], terminal_width=200)


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("cv-recipe") / "cv.yaml", CV_TINY)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, recipe_path):
    out = tmp_path_factory.mktemp("cv") / "run"
    res = _cv("--recipe", str(recipe_path), "--folds", "2", "--jobs", "2", "--out", str(out))  # in 2 processes
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return out, res.output


def _report(fold_dir: Path) -> dict:
    return json.loads((fold_dir / "report.json").read_text())


def _mean_std(vals):
    return statistics.fmean(vals), statistics.stdev(vals)


def test_speaker_folds_are_disjoint_cover_everyone_and_balance_clips(cv_run):
    out, output = cv_run
    reports = [_report(out / f"fold-{k}") for k in (1, 2)]
    tests = [set(r["data"]["test_speakers"]) for r in reports]
    assert not tests[0] & tests[1] and tests[0] | tests[1] == SPEAKERS  # each speaker is test exactly once
    for r in reports:  # in its own fold no test speaker trains or validates
        assert r["recipe"]["data"]["fold_of"] == [reports.index(r) + 1, 2]
        assert r["recipe"]["name"] == f"tiny-fold-{reports.index(r) + 1}"
    assert "fold-1/2 done" in output and "fold-2/2 done" in output

    # balanced by clip count, deterministic from the seed, and every group from the same dealing
    items = [Item(Path("x"), "a", f"s{i}") for i in range(7) for _ in range(i + 1)]  # 1..7 clips a speaker
    groups = speaker_folds(items, 3, seed=0)
    assert sorted(s for g in groups for s in g) == sorted({it.speaker for it in items})
    assert sum(map(len, groups)) == 7 and groups == speaker_folds(items, 3, seed=0)
    sizes = [sum(int(s[1:]) + 1 for s in g) for g in groups]
    assert max(sizes) - min(sizes) <= 7, sizes


def test_cv_json_is_the_mean_and_std_of_the_folds_reports(cv_run):
    out, _ = cv_run
    cv = json.loads((out / "cv.json").read_text())
    reports = [_report(out / f"fold-{k}") for k in (1, 2)]
    assert cv["folds"] == 2 and cv["passed"] is True and len(cv["per_fold"]) == 2
    teacher_ua = [r.get("teacher_same_clips", r["teacher"])["ua"] for r in reports]
    assert (cv["teacher"]["ua_mean"], cv["teacher"]["ua_std"]) == pytest.approx(_mean_std(teacher_ua))
    assert set(cv["artifacts"]) == {"onnx-int8"}
    art = [next(a for a in r["artifacts"] if a["name"] == "onnx-int8") for r in reports]
    a = cv["artifacts"]["onnx-int8"]
    for key in ("ua", "wa", "macro_f1"):
        assert (a[f"{key}_mean"], a[f"{key}_std"]) == pytest.approx(_mean_std([x[key] for x in art]))
    drops = [100 * (t - x["ua"]) for t, x in zip(teacher_ua, art)]
    assert a["drop_pt_mean"] == pytest.approx(statistics.fmean(drops))
    for s in ("distill", "prune", "qat"):  # each stage: its UA in the fold's waterfall
        ua = [next(w["ua"] for w in r["waterfall"] if w["step"] == s) for r in reports]
        assert cv["stages"][s]["ua_mean"] == pytest.approx(statistics.fmean(ua))
    assert [p["waterfall"] for p in cv["per_fold"]] == [r["waterfall"] for r in reports]
    md, html = (out / "cv.md").read_text(), (out / "cv.html").read_text()
    assert "onnx-int8" in md and "fold-2" in md and "±" in md
    assert html.count("<svg") == 3 and "fold-1" in html  # the mean waterfall and one per fold
    assert not list(out.glob(".*tmp*"))  # nothing half-written


def test_summary_arithmetic_on_folds_that_differ(tmp_path):
    """Known numbers: mean, sample std and the per-fold drop, including an artifact missing in one fold."""
    from edgeser.cv import Fold

    figures = [(0.60, 0.50, 0.40), (0.80, 0.65, None), (0.70, 0.70, 0.55)]  # teacher, onnx-int8, coreml UA
    plan = []
    for k, (t, a, c) in enumerate(figures, start=1):
        d = tmp_path / f"fold-{k}"
        arts = [{"name": "onnx-int8", "status": "verified", "ua": a, "wa": a, "macro_f1": a / 2},
                {"name": "coreml", "status": "verified" if c else "skipped", "ua": c, "wa": c, "macro_f1": c}]
        report = {"teacher": {"ua": t, "wa": t, "macro_f1": t}, "artifacts": arts, "gates": [], "passed": True,
                  "data": {"sizes": {"test": 10}, "test_speakers": [f"s{k}"]},
                  "waterfall": [{"step": "teacher", "ua": t}]}
        d.mkdir()
        (d / "report.json").write_text(json.dumps(report))
        for s in ("distill", "prune", "qat"):
            (d / "stages" / s).mkdir(parents=True)
            metrics = {"test": {"ua": t - 0.1, "wa": t, "macro_f1": t}}
            (d / "stages" / s / "metrics.json").write_text(json.dumps(metrics))
        plan.append(Fold(k, 3, {"fold_of": [k, 3]}, [f"s{k}"], 10))
    cv = summarise(plan, tmp_path, "speaker")
    assert cv["teacher"]["ua_mean"] == pytest.approx(0.70) and cv["teacher"]["ua_std"] == pytest.approx(0.10)
    a = cv["artifacts"]["onnx-int8"]
    assert a["ua_mean"] == pytest.approx(0.61666667) and a["ua_std"] == pytest.approx(statistics.stdev([.5, .65, .7]))
    assert a["drop_pt_mean"] == pytest.approx((10 + 15 + 0) / 3) and a["n"] == 3
    c = cv["artifacts"]["coreml"]
    assert c["n"] == 2 and c["ua_mean"] == pytest.approx(0.475) and c["drop_pt_mean"] == pytest.approx((20 + 15) / 2)
    assert cv["stages"]["qat"]["ua_mean"] == pytest.approx(0.60)


def test_resume_skips_finished_folds_and_a_failed_gate_exits_1(cv_run, recipe_path, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(cv_run[0], out)
    models = {p: p.stat().st_mtime_ns for p in out.glob("fold-*/stages/*/model.pt")}
    res = _cv("--recipe", str(recipe_path), "--folds", "2", "--out", str(out), "--resume")
    assert res.exit_code == 0, res.output
    for stage in ("teacher", "distill", "prune", "qat", "export", "verify"):
        assert res.output.count(f"{stage}: finished before with the same inputs") == 2, stage
    assert {p: p.stat().st_mtime_ns for p in out.glob("fold-*/stages/*/model.pt")} == models and len(models) == 8

    # a gate no tiny model passes: verify re-runs in each fold (nothing else), exit 1 naming fold and gate
    res = _cv("--recipe", str(recipe_path), "--folds", "2", "--out", str(out), "--resume",
              "--set", "verify.min_ua=0.99")
    assert res.exit_code == 1, res.output
    assert "fold-1" in res.output and "FAIL" in res.output and "min_ua" in res.output
    cv = json.loads((out / "cv.json").read_text())
    assert cv["passed"] is False and [f["run"] for f in cv["failed"]] == ["fold-1", "fold-2"]
    assert all(any("min_ua" in g for g in f["gates"]) for f in cv["failed"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("fold-*/stages/*/model.pt")} == models


def _sessions_manifest(corpus: Path, sessions: dict[str, str], keep: int = 2) -> Path:
    """The synthetic corpus's manifest with a session column (speaker -> session), `keep` clips per speaker and
    class."""
    lines = (corpus / "manifest.csv").read_text().splitlines()
    seen: dict = {}
    rows = ["path,label,speaker,session"]
    for line in lines[1:]:
        path, label, spk = line.split(",")
        seen[(spk, label)] = seen.get((spk, label), 0) + 1
        if seen[(spk, label)] <= keep and spk in sessions:
            rows.append(f"{path},{label},{spk},{sessions[spk]}")
    (corpus / "sessions.csv").write_text("\n".join(rows) + "\n")
    return corpus / "sessions.csv"


def test_by_session_one_fold_per_session(cv_run, recipe_path, tmp_path):
    """Leave-one-session-out: one fold per manifest session, each fold's recipe holding that session out, and
    its corpus split the way the fold's data stage splits it (the rest of the pipeline is the speaker folds')."""
    from edgeser.cv import fold_recipe, plan_folds
    from edgeser.data.dataset import load_corpus
    from edgeser.recipe import load_recipe

    corpus = tmp_path / "corpus"
    shutil.copytree(cv_run[0] / "fold-1/data/synth", corpus)
    sessions = {"spk00": "1", "spk01": "1", "spk02": "2", "spk03": "2", "spk04": "10", "spk05": "10"}
    manifest = _sessions_manifest(corpus, sessions)
    recipe = load_recipe(recipe_path, [f"data.manifest={manifest}"])
    plan = plan_folds(recipe, None, "session")
    assert [(f.name, f.session, f.speakers, f.clips) for f in plan] == [
        ("fold-1", "1", ["spk00", "spk01"], 16), ("fold-2", "2", ["spk02", "spk03"], 16),
        ("fold-3", "10", ["spk04", "spk05"], 16)]  # sessions in natural order
    for f in plan:
        r = fold_recipe(recipe, f)
        assert r.data.fold == f.session and r.data.fold_of is None and r.name == f"tiny-{f.name}"
        c = load_corpus(manifest, r.data)
        assert sorted(set(c.splits["test"].speakers)) == f.speakers and len(c.splits["test"].y) == 16
        assert not set(c.splits["train"].speakers) & set(f.speakers)
        assert not set(c.splits["val"].speakers) & set(f.speakers)
    # the command plans the same folds; --folds next to --by session is refused (one fold per session)
    res = _cv("--recipe", str(recipe_path), "--by", "session", "--folds", "3", "--set", f"data.manifest={manifest}",
              "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and "--folds: not with --by session" in res.output


def test_bad_input_exits_2_naming_the_setting_and_writes_nothing(recipe_path, tmp_path):
    out = tmp_path / "never"
    cases = [(["--folds", "1"], "--folds"), (["--folds", "7"], "only 6 speakers"), (["--jobs", "0"], "--jobs"),
             (["--by", "session"], "--by session: data.synth has no sessions"), (["--by", "voice"], "--by"),
             (["--by", "session", "--folds", "2"], "--folds: not with --by session")]
    for args, message in cases:
        res = _cv("--recipe", str(recipe_path), "--out", str(out), *args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert not out.exists(), args

    # a session with no test clips (its one label is not among data.classes), and a manifest without sessions
    corpus = tmp_path / "c"
    corpus.mkdir()
    rows = ["path,label,speaker,session"] + [f"{s}{i}.wav,{'happy' if s != 'e' else 'excited'},{s},{s}"
                                             for s in "abe" for i in range(2)]
    for row in rows[1:]:
        (corpus / row.split(",")[0]).write_bytes(b"")
    (corpus / "m.csv").write_text("\n".join(rows) + "\n")
    base = ["--recipe", str(recipe_path), "--out", str(out), "--set", f"data.manifest={corpus / 'm.csv'}",
            "--set", "data.classes=[happy]"]
    res = _cv(*base, "--by", "session")
    assert res.exit_code == 2 and "--by session: fold-3 (session e" in res.output and "no test clips" in res.output
    (corpus / "m.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    res = _cv(*base, "--by", "session")
    assert res.exit_code == 2 and "has no sessions" in res.output and "m.csv" in res.output
    assert not out.exists()
