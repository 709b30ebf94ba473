"""The README's commands, as a user types them, from a folder other than the repository root (issue 12).

Every `edgeser ...` line in the README's bash blocks must parse against the real CLI, and every repository path
it names must exist. Then the commands run for real with tiny settings (the recipe's sizes overridden with
`--set`), in a temp folder, so that relative paths resolve the way a user's shell resolves them."""
from __future__ import annotations

import re
import shlex
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import typer
from typer._click.exceptions import MissingParameter  # typer vendors click
from typer.testing import CliRunner

from edgeser.cli import app
from tests.conftest import ORT_INT8_EXACT

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
REPO_DIRS = ("recipes/", "examples/", "edgeser/profiles/", "bench/")
runner = CliRunner()

# the recipe's sizes made tiny (the conftest's TINY run), given the way a user would: with --set
TINY_SETS = ["data.synth={seed: 0, clips_per_class: 24, n_speakers: 6, clip_seconds: 1.0}", "data.clip_seconds=1.0",
             "data.test_speakers=0.2", "teacher.epochs=1", "teacher.min_steps=0", "teacher.width_mult=0.25", "teacher.batch_size=16",
             "student.channels=[16, 16, 16, 16]", "distill.batch_size=16", "distill.min_kd_rows=0", "prune.epochs=1", "prune.batch_size=16",
             "qat.epochs=1", "qat.batch_size=16", "qat.calib_batches=2", "verify.max_ua_drop_pt=100",
             "verify.min_agreement=0.5", "verify.latency_runs=5", "verify.min_ua=0.0",
             "verify.min_robust_agreement=0.5"]


def readme_commands() -> list[list[str]]:
    """argv after `edgeser` for every command line in the README's bash blocks: `\\` continuations joined,
    comments dropped, `[optional]` parts kept, the right side of a pipe taken."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line.split("| ")[-1]).strip()
            words = shlex.split(re.sub(r"\[(--[^\]]+)\]", r"\1", line))
            if "edgeser" in words:
                out.append(words[words.index("edgeser") + 1:])
    return out


def parse(argv: list[str]) -> tuple[str, dict]:
    """Parse argv with the real CLI without running it: (command path, params). Unknown commands or flags raise
    a usage error."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("edgeser", list(argv))
    path = []
    while hasattr(cmd, "resolve_command"):  # a group: typer vendors click, so no click.Group to test
        name, cmd, rest = cmd.resolve_command(ctx, ctx._protected_args + ctx.args)
        path.append(name)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return " ".join(path), ctx.params


def test_readme_has_the_commands_a_user_needs():
    names = {parse(a)[0] for a in readme_commands()}
    assert {"compress", "finetune", "data import", "data synth", "stream", "bench", "verify"} <= names


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses_and_its_repository_paths_exist(argv):
    parse(argv)  # raises on an unknown command or flag
    for word in argv:
        for part in word.split("="):
            if part.startswith(REPO_DIRS):
                assert (REPO / part).exists(), f"README names {part}, which is not in the repository"


def test_inline_commands_parse():
    """`edgeser ...` in inline code spans (prose) too: a renamed flag there misleads as much as in a block."""
    spans = [s for s in re.findall(r"`(edgeser [^`]+)`", README) if "..." not in s and "…" not in s]
    assert len(spans) >= 3
    for span in spans:
        try:
            parse(shlex.split(re.sub(r"\[(--[^\]]+)\]", r"\1", span))[1:])
        except MissingParameter:  # a command named in prose, without its arguments
            pass


def _readme(prefix: str) -> list[str]:
    found = [a for a in readme_commands() if " ".join(a).startswith(prefix)]
    assert found, f"no README command starts with `edgeser {prefix}`"
    return found[0]


def _ok(args: list[str], **kw):
    res = runner.invoke(app, args, **kw)
    assert res.exit_code == 0, f"edgeser {' '.join(args)} -> {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res


def _wav(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pcm = (np.sin(np.arange(int(16000 * seconds)) * 0.05) * 8000 + rng.normal(0, 500, int(16000 * seconds)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def _repo_path(argv: list[str]) -> list[str]:
    """A user outside the repository names the recipe by its path: recipes/x.yaml -> REPO/recipes/x.yaml."""
    return [str(REPO / a) if a.startswith(REPO_DIRS) else a for a in argv]


@ORT_INT8_EXACT
def test_readme_commands_run_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # compress, as in the README (its --set and --out kept), with tiny sizes; then --resume skips every stage
    compress = _repo_path(_readme("compress --recipe recipes/jetson.yaml --set"))
    _ok([*compress, *sum((["--set", s] for s in TINY_SETS), []), "--no-progress"])
    run = tmp_path / compress[compress.index("--out") + 1]
    assert (run / "report.md").is_file() and run.is_relative_to(tmp_path)
    resume = _repo_path(_readme("compress --recipe recipes/jetson.yaml --resume"))
    res = _ok([*resume, *sum((["--set", s] for s in TINY_SETS), []), "--set", "distill.epochs=3",
               "--out", str(run), "--no-progress"])
    assert "finished before with the same inputs" in res.output

    # verify, every optional flag of the README's line, with --data a CSV of held-out clips
    verify = _readme("verify")
    manifest = (run / "data/synth/manifest.csv").read_text().splitlines()
    rows = [f"{run / 'data/synth'}/{r}" for r in manifest[1:9]]  # absolute paths to the run's own clips
    Path(verify[verify.index("--data") + 1]).write_text("\n".join([manifest[0], *rows]) + "\n")
    res = _ok(verify + ["--set", "data.allow_outside_root=true"])  # runs/jetson: the --out of compress above
    assert "scored 8 clips" in res.output and Path(verify[verify.index("--junit") + 1]).is_file()

    # stream: a WAV through the cached stream folder; raw PCM on stdin as from arecord
    stream = _readme("stream runs/demo")
    _wav(tmp_path / stream[stream.index("--wav") + 1], 3.0)
    art = str(run / "artifacts/student_int8_stream")
    res = _ok([art if a.startswith("runs/") else a for a in stream])
    assert res.output.count('"label"') >= 2
    stdin = _readme("stream ART --stdin")
    pcm = struct.pack(f"<{16000 * 3}h", *(np.sin(np.arange(16000 * 3) * 0.05) * 8000).astype(int))
    res = _ok([art if a == "ART" else a for a in stdin], input=pcm)
    assert res.output.count('"label"') >= 2

    # the README's "use the artifact in your app" example, on this run's artifact and talk.wav
    app_example = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "InferenceSession" in b)
    exec(compile(app_example.replace("runs/demo/", "runs/jetson/"), "README", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines()[-1] in ("neutral", "happy", "sad", "angry")

    # bench of the artifacts folder, as written
    bench = _readme("bench runs/demo/artifacts")
    _ok([str(run / "artifacts") if a == "runs/demo/artifacts" else a for a in bench])

    # data synth (its clip count made tiny) and the folder importer on a corpus in both layouts
    synth = _readme("data synth")
    synth[synth.index("--clips-per-class") + 1] = "3"
    _ok(synth + ["--speakers", "3", "--seconds", "0.5"])
    assert (tmp_path / synth[synth.index("--out") + 1] / "manifest.csv").is_file()
    for label in ("happy", "sad"):
        for spk in ("alice", "bob", "carol"):
            (tmp_path / "my_corpus" / label / spk).mkdir(parents=True)
            _wav(tmp_path / "my_corpus" / label / spk / "c1.wav", 0.5)
            (tmp_path / "flat" / label).mkdir(parents=True, exist_ok=True)
            _wav(tmp_path / "flat" / label / f"{spk}_001.wav", 0.5)
    for prefix, src in (("data import folder   /data/my_corpus", "my_corpus"), ("data import folder   /data/flat", "flat")):
        argv = [src if a.startswith("/data/") else a for a in _readme(prefix.replace("   ", " "))]
        _ok(argv)
        assert (tmp_path / argv[argv.index("--out") + 1]).read_text().count("\n") == 7  # header + 6 clips

    # finetune with the README's --set path, relative to this folder: weights/sound8.npy
    from tests.test_soundnet_weights import _save_object_npy
    from edgeser.models.soundnet_weights import LAYERS

    rng = np.random.default_rng(0)
    layers = {f"conv{i}": {"weights": rng.standard_normal((k, 1, ci, co)).astype(np.float32) / np.sqrt(ci * k),
                           "biases": np.zeros(co, np.float32), "gamma": np.ones(co, np.float32),
                           "beta": np.zeros(co, np.float32), "mean": np.zeros(co, np.float32),
                           "var": np.ones(co, np.float32)} for i, (ci, co, k) in enumerate(LAYERS, start=1)}
    (tmp_path / "weights").mkdir()
    _save_object_npy(tmp_path / "weights/sound8.npy", layers)
    finetune = _repo_path(_readme("finetune"))
    sets = [s for s in TINY_SETS if not s.startswith(("teacher.width_mult", "verify", "prune", "qat"))]
    res = _ok([*finetune, *sum((["--set", s] for s in sets), []), "--out", "ft", "--no-progress"])
    assert "teacher" in res.output and (tmp_path / "ft/stages/teacher/model.pt").is_file()


def test_version_and_help_fit_80_columns():
    res = _ok(["--version"])
    assert re.fullmatch(r"edgeser \S+\n", res.output)
    for argv in (["--help"], ["compress", "--help"], ["verify", "--help"], ["data", "import", "--help"],
                 ["stream", "--help"], ["bench", "--help"], ["recipe", "defaults", "--help"]):
        res = runner.invoke(app, argv, terminal_width=80, env={"COLUMNS": "80"})
        assert res.exit_code == 0, res.output
        assert "<bool>" not in res.output and "[OPTIONS]" in res.output
        too_long = [line for line in res.output.splitlines() if len(line) > 80]
        assert not too_long, f"edgeser {' '.join(argv)}: lines over 80 columns: {too_long}"


def test_ctrl_c_names_the_stage_and_the_resume_command(tmp_path, monkeypatch, capsys, tiny_recipe_path):
    """Ctrl-C during a stage: exit 130, a message naming the stage and run folder and the exact command with
    --resume; the finished stages are kept, so that command skips them."""
    import sys

    from edgeser import cli, pipeline

    def interrupted(ctx):
        raise KeyboardInterrupt

    import dataclasses

    stages = [dataclasses.replace(s, run=interrupted) if s.name == "teacher" else s for s in pipeline.STAGES]
    monkeypatch.setattr(pipeline, "STAGES", stages)
    argv = ["compress", "--recipe", str(tiny_recipe_path), "--out", str(tmp_path / "run"), "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["edgeser", *argv])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130
    msg = " ".join(capsys.readouterr().err.split())
    assert f"interrupted during stage teacher of {tmp_path / 'run'}" in msg
    assert f"`edgeser {' '.join(argv)} --resume` continues" in msg
    assert (tmp_path / "run/stages/data/done.json").is_file() and not pipeline.RUNNING
