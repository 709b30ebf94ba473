"""Issue 7, hostile input: malformed recipes, bad audio files, pickled checkpoints and manifests whose rows
leave the corpus root. Every recipe case goes through the real CLI and must exit 2, name the field or the
file, and write nothing; bad audio is skipped and counted by reason; nothing hostile is ever executed."""
from __future__ import annotations

import ast
import json
import os
import pickle
import struct
from collections import Counter
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.data.audio import BadAudio, load_audio
from edgeser.data.dataset import load_corpus
from edgeser.data.importers import import_corpus
from edgeser.data.manifest import read_manifest
from edgeser.pipeline import preflight
from edgeser.recipe import Data, RecipeError, load_recipe
from edgeser.models.io import read_model_file
from tests.conftest import DEL, TINY, recipe_with

runner = CliRunner()
SR = 16000
SENTINEL = "SENTINEL_hacked"  # created in tmp_path only if a hostile payload ever runs


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _compress(tmp: Path, recipe: Path, sets: list[str] = ()) -> tuple[object, Path]:
    """`edgeser compress --recipe R --out DIR`; asserts that nothing at all was written under tmp."""
    out = tmp / "run"
    before = _tree(tmp)
    args = ["compress", "--recipe", str(recipe), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert not out.exists(), "a bad input must write nothing"
    assert _tree(tmp) == before, f"files appeared: {_tree(tmp) - before}"
    assert "Traceback" not in res.output
    return res, out


def _tone(sr: int = SR, sec: float = 0.5, f: float = 200.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(sr * sec)) / sr
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- recipes

_changed, _DEL = recipe_with, DEL  # TINY with dotted keys set; _DEL removes a key
TINY_YAML = yaml.safe_dump(TINY)


class Case(NamedTuple):
    id: str
    build: Callable[[Path], object]  # tmp -> recipe content: a dict (dumped as YAML), str or bytes
    expect: tuple[str, ...]  # substrings of the message; "{recipe}" is the recipe file's path
    sets: tuple[str, ...] = ()


def _c(id, content, *expect, sets=()):
    build = content if callable(content) else (lambda tmp, c=content: c)
    return Case(id, build, expect, tuple(sets))


def _mkdir(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir(exist_ok=True)
    return tmp / name


def _with_dir(field: str, name: str, *extra):
    return lambda tmp: (_mkdir(tmp, name), _changed((field, name), *extra))[1]


def _with_file(field: str, name: str, data: bytes, *extra):
    return lambda tmp: ((tmp / name).write_bytes(data), _changed((field, name), *extra))[1]


_NO_SYNTH = ("data.synth", _DEL)
_WIDE = ("teacher.width_mult", 1.0)  # pretrained weights need the full-width teacher
_EVIL_TAG = f'!!python/object/apply:os.system ["touch {SENTINEL}"]'

RECIPE_CASES = [
    # unknown keys, top level and nested at every depth
    _c("unknown-top", _changed(("epochs_total", 3)), "epochs_total", "unknown key"),
    _c("unknown-nested-typo", _changed(("distill.temprature", 2.0)), "distill.temprature", "unknown key"),
    _c("unknown-deep", _changed(("data.augment.reverb", True)), "data.augment.reverb", "unknown key"),
    _c("unknown-synth", _changed(("data.synth.speakers", 4)), "data.synth.speakers", "unknown key"),
    # wrong types
    _c("str-for-int", _changed(("prune.max_steps", "twelve")), "prune.max_steps"),
    _c("bool-for-int", _changed(("teacher.epochs", True)), "teacher.epochs", "expected a number"),
    _c("bool-for-float", _changed(("distill.temperature", False)), "distill.temperature", "expected a number"),
    _c("float-for-int", _changed(("export.opset", 17.5)), "export.opset"),
    _c("list-for-section", _changed(("teacher", [1, 2])), "teacher", "valid dictionary"),
    _c("list-for-mapping", _changed(("data.label_map", ["excited", "happy"])), "data.label_map"),
    _c("mapping-for-list", _changed(("export.formats", {"onnx-int8": True})), "export.formats", "valid list"),
    _c("scalar-for-list", _changed(("distill.hint_layers", 3)), "distill.hint_layers", "valid list"),
    _c("mapping-for-str", _changed(("name", {"a": 1})), "name", "valid string"),
    # bad paths (relative ones resolve against the recipe's folder)
    _c("manifest-is-folder", _with_dir("data.manifest", "corpus", _NO_SYNTH), "data.manifest", "is a folder"),
    _c("manifest-missing", _changed(("data.manifest", "sub/gone.csv"), _NO_SYNTH), "data.manifest", "gone.csv"),
    _c("checkpoint-is-folder", _with_dir("teacher.checkpoint", "ckpt.pt"), "teacher.checkpoint", "is a folder"),
    _c("pretrained-missing", _changed(("teacher.pretrained", "sound8.npy"), _WIDE), "teacher.pretrained",
       "sound8.npy"),
    _c("pretrained-is-folder", _with_dir("teacher.pretrained", "weights", _WIDE), "teacher.pretrained"),
    _c("noise-folder-missing", _changed(("data.augment.noise_folder", "noise")), "data.augment.noise_folder",
       "folder not found"),
    _c("noise-folder-is-file", _with_file("data.augment.noise_folder", "noise.wav", b"RIFF"),
       "data.augment.noise_folder", "is a file, expected a folder"),
    _c("source-audio-missing", _changed(("teacher.source_audio", "env")), "teacher.source_audio"),
    # targets
    _c("target-null", _changed(("target", None)), "target"),
    _c("target-empty", _changed(("target", "")), "target: unknown profile"),
    _c("target-traversal", _changed(("target", "../../etc/passwd")), "target: unknown profile"),
    _c("target-profile-garbage", lambda tmp: ((tmp / "t.yaml").write_bytes(b"\xff\xfe\x00garbage\x81"),
                                              _changed(("target", str(tmp / "t.yaml"))))[1],
       "target profile", "t.yaml"),
    _c("target-profile-bad-runtime", lambda tmp: ((tmp / "t.yaml").write_text(
        "name: t\ndescription: d\nruntime: tflite\nprimary_artifact: onnx-int8\n"),
        _changed(("target", str(tmp / "t.yaml"))))[1], "target profile", "t.yaml", "runtime"),
    # the data section
    _c("data-missing", _changed(("data", _DEL)), "data", "Field required"),
    _c("data-null", _changed(("data", None)), "data"),
    _c("data-both-sources", _changed(("data.manifest", "m.csv")), "data.manifest or data.synth"),
    # negative or absurd numbers
    _c("epochs-negative", _changed(("teacher.epochs", -1)), "teacher.epochs"),
    _c("lr-zero", _changed(("distill.lr", 0)), "distill.lr", "must be > 0"),
    _c("batch-zero", _changed(("qat.batch_size", 0)), "qat.batch_size"),
    _c("temperature-absurd", _changed(("distill.temperature", 1e9)), "distill.temperature"),
    _c("temperature-inf", _changed(("distill.temperature", float("inf"))), "distill.temperature"),
    _c("snr-nan", _changed(("data.augment.snr_db", float("nan"))), "data.augment.snr_db"),
    _c("clip-seconds-1000", _changed(("data.clip_seconds", 1000)), "data.clip_seconds"),
    _c("opset-99", _changed(("export.opset", 99)), "export.opset"),
    _c("latency-runs-absurd", _changed(("verify.latency_runs", 10**12)), "verify.latency_runs"),
    _c("clips-per-class-1", _changed(("data.synth.clips_per_class", 1)), "data.synth.clips_per_class"),
    # unknown export formats
    _c("format-case", _changed(("export.formats", ["ONNX-INT8"])), "export.formats"),
    _c("gate-artifact-unknown", _changed(("verify.gate_artifacts", ["tflite"])), "verify.gate_artifacts"),
    # not a recipe at all
    _c("yaml-tab", "name: x\n\tdata: 1\n", "{recipe}", "not valid YAML"),
    _c("yaml-bad-indent", "name: a\n  b: c\n", "{recipe}", "not valid YAML"),
    _c("yaml-nul-byte", "name: a\x00\ndata: {synth: {}}\n", "{recipe}", "not valid YAML"),
    _c("yaml-scalar", "42\n", "{recipe}", "mapping", "int"),
    _c("yaml-list", "- data\n- teacher\n", "{recipe}", "mapping", "list"),
    _c("yaml-empty", "", "data", "Field required"),
    _c("binary-garbage", bytes(range(256)) * 8, "{recipe}", "not a text file"),
    _c("duplicate-key", "data: {synth: {}}\nname: a\ndata: {manifest: m.csv}\n", "{recipe}", "duplicate key 'data'"),
    _c("nested-too-deep", "name: " + "[" * 5000 + "]" * 5000 + "\n", "{recipe}", "nested too deeply"),
    _c("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nname: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
       "data: {synth: {}}\n", "name", "a: unknown key"),
    _c("python-tag-document", _EVIL_TAG + "\n", "{recipe}", "not valid YAML", "python/object/apply:os.system"),
    _c("python-tag-in-field", TINY_YAML + f"extra: {_EVIL_TAG}\n", "{recipe}", "not valid YAML"),
    _c("python-name-tag", "data: {synth: {seed: !!python/name:os.system }}\n", "{recipe}", "not valid YAML"),
    _c("run-name-traversal", _changed(("name", "../../outside")), "name", "runs/<name>"),
    _c("markup-in-key", _changed(("[/x]", 1)), "[/x]", "unknown key"),
    # malformed --set overrides
    _c("set-no-equals", TINY_YAML, "--set", "KEY=VALUE", sets=["distill.epochs"]),
    _c("set-empty-key-part", TINY_YAML, "--set", "empty part", sets=["distill..epochs=3"]),
    _c("set-only-dot", TINY_YAML, "--set", "empty part", sets=[".=3"]),
    _c("set-not-a-section", TINY_YAML, "--set name.x", "not a section", sets=["name.x=1"]),
    _c("set-bad-yaml-value", TINY_YAML, "--set distill.epochs", "not valid YAML", sets=["distill.epochs=[1"]),
    _c("set-python-tag", TINY_YAML, "--set distill.epochs", "not valid YAML",
       sets=[f"distill.epochs={_EVIL_TAG}"]),
    _c("set-out-of-range", TINY_YAML, "distill.alpha", sets=["distill.alpha=1.5"]),
    _c("set-unknown-section", TINY_YAML, "nosuch", "unknown key", sets=["nosuch.key=1"]),
    _c("set-list-for-section", TINY_YAML, "data", "valid dictionary", sets=["data=[1, 2]"]),
]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c.id for c in RECIPE_CASES])
def test_malformed_recipe_exits_2_naming_the_field(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # a payload that ran would leave SENTINEL here
    content = case.build(tmp_path)
    recipe = tmp_path / "r.yaml"
    if isinstance(content, dict):
        recipe.write_text(yaml.safe_dump(content))
    elif isinstance(content, bytes):
        recipe.write_bytes(content)
    else:
        recipe.write_text(content)
    res, _ = _compress(tmp_path, recipe, case.sets)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error:"), res.output
    for want in case.expect:
        assert want.replace("{recipe}", str(recipe)) in res.output, res.output
    assert not (tmp_path / SENTINEL).exists()


def test_recipe_case_count():
    assert len(RECIPE_CASES) >= 30 and len({c.id for c in RECIPE_CASES}) == len(RECIPE_CASES)


def test_well_formed_recipe_still_loads(tmp_path):
    """The control: the recipe the cases above break is itself fine (a string number for a float stays
    accepted, since YAML 1.1 reads `3e-4` as a string)."""
    (tmp_path / "r.yaml").write_text(TINY_YAML)
    r = load_recipe(tmp_path / "r.yaml", ["distill.lr=3e-4", "data.augment.noise=true"])
    assert r.distill.lr == pytest.approx(3e-4) and r.data.augment.noise is True and r.name == "tiny"


# ------------------------------------------------------------------------------------------------- audio

def _wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _set_rate(data: bytes, rate: int) -> bytes:
    b = bytearray(data)
    b[24:28] = struct.pack("<I", rate)  # fmt chunk of a canonical 44-byte header: sample rate, byte rate
    b[28:32] = struct.pack("<I", (rate * 2) & 0xFFFFFFFF)
    return bytes(b)


def _with_nonfinite(v: float) -> bytes:
    x = _tone()
    x[100] = v
    return _wav_bytes(x, subtype="FLOAT")


# kind -> (writer of the file at a path, the reason it is skipped with)
BAD_AUDIO: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty-0-bytes": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated-header": (lambda p: p.write_bytes(_wav_bytes(_tone())[:30]), "corrupt or truncated audio header"),
    "header-claims-more-data": (lambda p: p.write_bytes(_wav_bytes(_tone())[:44 + 2000]),
                                "truncated (header claims more data than the file holds)"),
    "png-named-wav": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "not an audio file"),
    "random-bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not an audio file"),
    "text-file": (lambda p: p.write_text("path,label,speaker\nthis is not audio\n" * 20), "text file, not audio"),
    "git-lfs-pointer": (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"),
                        "Git LFS pointer, not the audio (run git lfs pull)"),
    "silent": (lambda p: p.write_bytes(_wav_bytes(np.zeros(8000, np.float32))), "silent"),
    "nan-samples": (lambda p: p.write_bytes(_with_nonfinite(np.nan)), "NaN or Inf samples"),
    "inf-samples": (lambda p: p.write_bytes(_with_nonfinite(-np.inf)), "NaN or Inf samples"),
    "out-of-range-float": (lambda p: p.write_bytes(_wav_bytes(_tone(amp=3e5), subtype="FLOAT")),
                           "samples out of range"),
    "directory-named-wav": (lambda p: p.mkdir(), "not a file (a folder?)"),
    "missing": (lambda p: None, "missing file"),
    "dangling-symlink": (lambda p: p.symlink_to(p.with_name("nowhere.wav")), "missing file"),
    "one-sample": (lambda p: p.write_bytes(_wav_bytes(np.array([0.5], np.float32))), "too short"),
    "extremely-short-20ms": (lambda p: p.write_bytes(_wav_bytes(_tone(sec=0.02))), "too short"),
    "zero-frames": (lambda p: p.write_bytes(_wav_bytes(np.zeros(0, np.float32))), "no samples"),
    "zero-sample-rate": (lambda p: p.write_bytes(_set_rate(_wav_bytes(_tone()), 0)),
                         "corrupt or truncated audio header"),
    "huge-sample-rate": (lambda p: p.write_bytes(_set_rate(_wav_bytes(_tone()), 2**31 - 1)),
                         "implausible sample rate"),
    "one-hz-sample-rate": (lambda p: p.write_bytes(_set_rate(_wav_bytes(_tone()), 1)), "implausible sample rate"),
}

# kind -> (writer, the mono 16 kHz signal expected back)
GOOD_AUDIO: dict[str, tuple[Callable[[Path], object], np.ndarray]] = {
    "pcm-u8": (lambda p: sf.write(p, _tone(), SR, subtype="PCM_U8"), _tone()),
    "pcm-24": (lambda p: sf.write(p, _tone(), SR, subtype="PCM_24"), _tone()),
    "pcm-32": (lambda p: sf.write(p, _tone(), SR, subtype="PCM_32"), _tone()),
    "stereo-mixed-to-mono": (lambda p: sf.write(p, np.stack([_tone(), 0.5 * _tone()], 1), SR), 0.75 * _tone()),
    "rate-8k-resampled": (lambda p: sf.write(p, _tone(8000), 8000), _tone()),
    "rate-44k1-resampled": (lambda p: sf.write(p, _tone(44100), 44100), _tone()),
}


def test_at_least_ten_bad_kinds():
    assert len(BAD_AUDIO) >= 10 and len({r for _, r in BAD_AUDIO.values()}) >= 10


@pytest.mark.parametrize("kind", list(BAD_AUDIO))
def test_load_audio_refuses_with_reason(tmp_path, kind):
    write, reason = BAD_AUDIO[kind]
    p = tmp_path / f"{kind}.wav"
    write(p)
    with pytest.raises(BadAudio) as e:
        load_audio(p)
    assert e.value.reason == reason and str(e.value).startswith(reason)


@pytest.mark.parametrize("kind", list(GOOD_AUDIO))
def test_load_audio_accepts(tmp_path, kind):
    write, want = GOOD_AUDIO[kind]
    p = tmp_path / f"{kind}.wav"
    write(p)
    x = load_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == len(want)
    tol = 0.01 if "u8" not in kind else 0.02  # 8-bit: 1/128 quantisation steps
    assert np.abs(x[100:-100] - want[100:-100]).max() < tol  # resampler edges aside


def test_corpus_skips_every_bad_kind_and_counts_it_by_reason(tmp_path):
    rows = ["path,label,speaker"]
    for s in range(4):  # the good ones: 4 speakers x 2 labels
        for lab in ("a", "b"):
            sf.write(tmp_path / f"s{s}_{lab}.wav", _tone(f=150 + 50 * s), SR)
            rows.append(f"s{s}_{lab}.wav,{lab},spk{s}")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i, (kind, (write, _)) in enumerate(BAD_AUDIO.items()):
        write(bad / f"{kind}.wav")
        rows.append(f"bad/{kind}.wav,{'ab'[i % 2]},spk{i % 4}")
    for i, (kind, (write, _)) in enumerate(GOOD_AUDIO.items()):
        write(bad / f"{kind}.wav")
        rows.append(f"bad/{kind}.wav,{'ab'[i % 2]},spk{i % 4}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    c = load_corpus(tmp_path / "m.csv", Data(manifest=tmp_path / "m.csv", clip_seconds=0.5, val_speakers=0.25,
                                              test_speakers=0.25))
    assert c.skipped == Counter(reason for _, reason in BAD_AUDIO.values())
    assert sum(len(s.y) for s in c.splits.values()) == 8 + len(GOOD_AUDIO)
    for split in c.splits.values():
        assert torch.isfinite(split.x).all() and split.x.abs().max() <= 1.0
    assert c.summary()["skipped"]["too short"] == 2  # fixed reasons: two short files, one count


# ------------------------------------------------------------------------------------------- checkpoints

class Evil:
    """Unpickling this runs `touch <path>`: what a hostile checkpoint would do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _evil_files(tmp: Path) -> dict[str, Path]:
    sentinel = tmp / SENTINEL
    files = {"torch-save-extra-key": tmp / "evil.pt", "torch-save-in-config": tmp / "evil_config.pt",
             "raw-pickle-protocol-2": tmp / "evil_raw2.pt", "raw-pickle-default": tmp / "evil_raw.pt"}
    torch.save({"config": {"n_classes": 4}, "state_dict": {"w": torch.zeros(2)}, "x": Evil(sentinel)},
               files["torch-save-extra-key"])
    torch.save({"config": Evil(sentinel), "state_dict": {}}, files["torch-save-in-config"])
    files["raw-pickle-protocol-2"].write_bytes(pickle.dumps(Evil(sentinel), protocol=2))
    files["raw-pickle-default"].write_bytes(pickle.dumps({"config": {}, "state_dict": {}, "x": Evil(sentinel)}))
    return files


def test_read_model_file_refuses_pickle_payloads(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"config": {"n_classes": 4}, "state_dict": {"w": torch.ones(3)}}, good)
    cfg, state = read_model_file(good)  # the control: a weights-only model file loads
    assert cfg == {"n_classes": 4} and torch.equal(state["w"], torch.ones(3))
    for kind, path in _evil_files(tmp_path).items():
        with pytest.raises(pickle.UnpicklingError):
            read_model_file(path)
        assert not (tmp_path / SENTINEL).exists(), kind


def test_cli_refuses_pickled_teacher_checkpoint(tmp_path):
    for kind, path in _evil_files(tmp_path).items():
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump(_changed(("teacher.checkpoint", path.name))))
        res, _ = _compress(tmp_path, recipe)
        assert res.exit_code == 2, (kind, res.output)
        assert "teacher.checkpoint" in res.output and str(path) in res.output, res.output
        assert not (tmp_path / SENTINEL).exists(), kind
    assert "posix.system" in res.output or "GLOBAL" in res.output or "Unpickling" in res.output


def test_every_torch_load_is_weights_only():
    """Source scan of edgeser/: each torch.load(...) passes weights_only=True."""
    root = Path(__file__).resolve().parents[1] / "edgeser"
    calls = []
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                calls.append((f"{f.relative_to(root.parent)}:{node.lineno}", ok))
    assert calls, "torch.load is used in edgeser/fileio.py at least"
    assert all(ok for _, ok in calls), [c for c, ok in calls if not ok]


# --------------------------------------------------------------------------------------------- manifests

def _corpus(root: Path) -> list[str]:
    """4 speakers x 2 labels of good audio under root; manifest rows (relative paths)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(4):
        for lab in ("a", "b"):
            sf.write(root / f"s{s}_{lab}.wav", _tone(f=150 + 50 * s), SR)
            rows.append(f"s{s}_{lab}.wav,{lab},spk{s}")
    return rows


def _escape(tmp: Path, kind: str) -> str:
    """The path written in the manifest row for each way out of the corpus root tmp/corpus."""
    outside = tmp / "outside.wav"
    sf.write(outside, _tone(f=333), SR)
    if kind == "dotdot":
        return "../outside.wav"
    if kind == "dotdot-via-subfolder":
        (tmp / "corpus/sub").mkdir(exist_ok=True)
        return "sub/../../outside.wav"
    if kind == "absolute-etc-passwd":
        return "/etc/passwd"
    if kind == "absolute-outside":
        return str(outside)
    if kind == "symlink-inside-pointing-out":
        (tmp / "corpus/link.wav").symlink_to(outside)
        return "link.wav"
    raise ValueError(kind)


ESCAPES = ["dotdot", "dotdot-via-subfolder", "absolute-etc-passwd", "absolute-outside", "symlink-inside-pointing-out"]


def _manifest_recipe(tmp: Path, kind: str, allow: bool | None = None) -> tuple[Path, Path, str]:
    rows = _corpus(tmp / "corpus")
    raw = _escape(tmp, kind)
    rows.insert(3, f"{raw},a,spk1")  # line 5: the header is line 1
    manifest = tmp / "corpus/m.csv"
    manifest.write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    data = {"manifest": "corpus/m.csv", "clip_seconds": 0.5, "val_speakers": 0.25, "test_speakers": 0.25}
    if allow is not None:
        data["allow_outside_root"] = allow
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(_changed(("data", data))))
    return recipe, manifest, raw


def test_relative_rows_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    rows = _corpus(tmp_path / "corpus")
    (tmp_path / "corpus/m.csv").write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    items = read_manifest(Path("corpus/m.csv"))
    assert items[0].path == Path("corpus/s0_a.wav") and all(it.path.is_file() for it in items)


@pytest.mark.parametrize("kind", ESCAPES)
def test_manifest_row_outside_root_exits_2(tmp_path, kind):
    recipe, manifest, raw = _manifest_recipe(tmp_path, kind)
    res, _ = _compress(tmp_path, recipe)
    assert res.exit_code == 2, res.output
    assert f"{manifest}:5:" in res.output and repr(raw) in res.output and "allow_outside_root" in res.output
    with pytest.raises(RecipeError, match=r"m\.csv:5: .*outside the corpus root"):
        preflight(load_recipe(recipe))
    with pytest.raises(RecipeError, match=r"m\.csv:5"):
        load_corpus(manifest, load_recipe(recipe).data)


@pytest.mark.parametrize("kind", ESCAPES)
def test_manifest_row_outside_root_accepted_when_allowed(tmp_path, kind):
    recipe, manifest, raw = _manifest_recipe(tmp_path, kind, allow=True)
    r = load_recipe(recipe)
    assert r.data.allow_outside_root is True
    preflight(r)  # what `compress` checks before it writes anything
    c = load_corpus(manifest, r.data)
    n = sum(len(s.y) for s in c.splits.values())
    if kind == "absolute-etc-passwd":
        assert n == 8 and c.skipped == Counter({"text file, not audio": 1})
    else:
        assert n == 9 and not c.skipped  # the file outside the root was read
    res = runner.invoke(app, ["compress", "--recipe", str(recipe), "--set", "data.allow_outside_root=false",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "m.csv:5" in res.output


def test_verify_data_enforces_the_root(tmp_path):
    """`edgeser verify RUN --data M.csv` reads the manifest under the same rule, before it checks anything."""
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"artifacts": {}}))
    (run / "recipe.json").write_text(json.dumps(TINY))
    for stage in ("data", "teacher", "prune", "qat", "export"):
        (run / "stages" / stage).mkdir()
        (run / "stages" / stage / "metrics.json").write_text("{}")
    _, manifest, raw = _manifest_recipe(tmp_path, "dotdot")
    before = _tree(tmp_path)
    res = runner.invoke(app, ["verify", str(run), "--data", str(manifest)])
    assert res.exit_code == 2 and f"{manifest}:5:" in res.output and repr(raw) in res.output, res.output
    assert _tree(tmp_path) == before


def test_importer_manifest_outside_src_needs_the_recipe_root(tmp_path):
    """`edgeser data import folder SRC --out elsewhere/m.csv`: rows are ../SRC/..., which leave the manifest's
    folder; the importer prints the `data.root` the recipe needs, and only the recipe widens the rule."""
    src = tmp_path / "corpora/mine"
    for s in range(4):
        for lab in ("angry", "sad"):
            (src / lab / f"spk{s}").mkdir(parents=True, exist_ok=True)
            sf.write(src / lab / f"spk{s}" / "x.wav", _tone(f=150 + 40 * s), SR)
    out = tmp_path / "meta/m.csv"
    res = runner.invoke(app, ["data", "import", "folder", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "root:" in res.output and str(src.resolve()) in res.output.replace("\n", "")
    assert all(line.startswith("../corpora/mine/") for line in out.read_text().splitlines()[1:])
    assert [p.name for p in out.parent.iterdir()] == ["m.csv"]  # nothing travels with the manifest
    with pytest.raises(RecipeError, match=r"m\.csv:2: .*outside the corpus root.*data\.root"):
        read_manifest(out)  # strict by default
    items = read_manifest(out, root=src)
    assert len(items) == 8 and all(it.path.is_file() for it in items)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_changed(("data", {"manifest": "meta/m.csv", "root": "corpora/mine",
                                                        "clip_seconds": 0.5, "val_speakers": 0.25,
                                                        "test_speakers": 0.25}))))
    r = load_recipe(recipe)
    preflight(r)
    assert sum(len(s.y) for s in load_corpus(out, r.data).splits.values()) == 8

    # data.root widens the rule to that folder only: a row leaving it is still refused
    out.write_text(out.read_text() + "../corpora/other.wav,angry,spk0\n")
    with pytest.raises(RecipeError, match=r"m\.csv:10: path '\.\./corpora/other\.wav'"):
        read_manifest(out, root=src)

    # a manifest inside SRC needs no root
    inside = src / "manifest.csv"
    s = import_corpus("folder", src, inside)
    assert s["needs_root"] is None and len(read_manifest(inside)) == 8
