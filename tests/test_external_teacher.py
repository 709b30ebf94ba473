"""External teachers (issue 16, part 2): teacher.onnx, teacher.torchscript, teacher.module + checkpoint, run in the
real pipeline on a tiny synthetic corpus; their logits mapped onto the corpus classes by name; every bad teacher
an InputError naming the field and the file, with nothing written."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from rich.console import Console
from scipy.signal import resample_poly
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.data.dataset import load_corpus
from edgeser.data.synth import CLASSES as SYNTH_CLASSES
from edgeser.data.synth import synthesize_corpus
from edgeser.errors import InputError
from edgeser.fileio import load_state, sha256
from edgeser.models.io import load_teacher
from edgeser.pipeline import compress
from edgeser.recipe import load_recipe
from edgeser.report import teacher_row
from tests.conftest import DEL, recipe_with, write_recipe
from tests.teacher_factory import REVERSED, LogMelCNN, TinyWav2Vec, WaveCNN, build, export_onnx, train_briefly

CORPUS_CLASSES = sorted(SYNTH_CLASSES)  # a manifest's classes: its labels, sorted
TEACHER_CLASSES = list(SYNTH_CLASSES)  # neutral, happy, sad, angry: another order than the corpus's


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny synthetic corpus as a manifest (4 classes x 24 clips of 1 s, 6 speakers), and its splits as the
    pipeline loads them."""
    root = tmp_path_factory.mktemp("corpus")
    manifest = synthesize_corpus(root, seed=0, clips_per_class=24, n_speakers=6, clip_seconds=1.0)
    recipe = load_recipe(write_recipe(root / "r.yaml", _recipe(manifest, {})))
    return manifest, load_corpus(manifest, recipe.data)


def _recipe(manifest: Path, teacher: dict, *changes) -> dict:
    return recipe_with(("data.synth", DEL), ("data.manifest", str(manifest)), ("teacher", teacher),
                       ("distill.aug_views", 1), *changes)


def _run(tmp_path: Path, manifest: Path, teacher: dict, until: str = "teacher", *changes, resume: bool = False):
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", _recipe(manifest, teacher, *changes)))
    run_dir = tmp_path / "run"
    compress(recipe, run_dir, console=Console(quiet=True), show_progress=False, until=until, resume=resume)
    return run_dir


def _metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "stages" / stage / "metrics.json").read_text())


def _order(teacher_classes: list[str]) -> list[int]:
    """The teacher column of each corpus class, worked out here independently of the code under test."""
    return [teacher_classes.index(c) for c in CORPUS_CLASSES]


def _script(model: torch.nn.Module, path: Path, classes: list[str] | None = None) -> torch.jit.ScriptModule:
    ts = torch.jit.script(model.eval())
    torch.jit.save(ts, str(path), _extra_files={"classes": json.dumps(classes)} if classes else {})
    return ts


# ---- the ONNX transformer teacher, through distillation ----

@pytest.fixture(scope="module")
def onnx_teacher(corpus, tmp_path_factory):
    """TinyWav2Vec (conv feature encoder + a transformer layer), random init, trained briefly on the train split,
    exported to ONNX with dynamic batch and length and its classes in metadata_props (synth order)."""
    _, c = corpus
    train = c.splits["train"]
    y = torch.tensor([TEACHER_CLASSES.index(CORPUS_CLASSES[i]) for i in train.y])  # labels in the teacher's order
    torch.manual_seed(0)
    model = train_briefly(TinyWav2Vec(), train.x, y, steps=20, batch=8)
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    export_onnx(model, path, TEACHER_CLASSES)
    return path


def test_onnx_transformer_teacher_distils(corpus, onnx_teacher, tmp_path):
    manifest, c = corpus
    run = _run(tmp_path, manifest, {"onnx": str(onnx_teacher)}, "distill", ("distill.epochs", 3),
               ("distill.hint_layers", [5]))
    m = _metrics(run, "teacher")
    src = m["source"]
    assert (src["format"], src["path"], src["label"]) == ("onnx", str(onnx_teacher), "ONNX: teacher.onnx")
    assert src["sha256"] == sha256(onnx_teacher) and src["teacher_classes"] == TEACHER_CLASSES
    # onnxruntime runs it, so FlopCounter sees nothing: no MACs; the parameters are its initializers' elements
    # (the weights, and a few exported constants)
    initializers = sum(math.prod(i.dims) for i in onnx.load(str(onnx_teacher)).graph.initializer)
    weights = sum(p.numel() for p in TinyWav2Vec().parameters())
    assert m["macs"] is None and m["params"] == initializers and weights <= initializers < 1.01 * weights
    assert 0 <= m["test"]["ua"] <= 1 and m["size_bytes"] == onnx_teacher.stat().st_size
    # the cached KD logits are onnxruntime's outputs, columns permuted into the corpus's class order
    blob = load_state(run / "stages/distill/teacher_logits.pt")
    sess = ort.InferenceSession(str(onnx_teacher), providers=["CPUExecutionProvider"])
    order = _order(TEACHER_CLASSES)
    assert order != list(range(4))
    for split, got in (("train", blob["logits"]), ("val", blob["val_logits"])):
        x = c.splits[split].x[:6].numpy()
        want = sess.run(["logits"], {"audio": x})[0][:, order]
        np.testing.assert_allclose(got[:6].numpy(), want, atol=1e-4, rtol=0)
    # the student trains on them; the hint layers are skipped (the teacher exposes no block features)
    d = _metrics(run, "distill")
    losses = [h["loss"] for h in d["train"]["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert d["train"]["hint_layers"] == [] and (run / "stages/distill/model.pt").is_file()
    # the report's teacher row names the source; an ONNX teacher has no MAC count
    row = teacher_row({**m["test"], "size_bytes": m["size_bytes"], "macs": m["macs"], "source": src})
    assert row[0] == "teacher (ONNX: teacher.onnx)" and row[-1] == "—"


# ---- TorchScript, at another sample rate ----

def test_torchscript_teacher_at_8khz_is_resampled(corpus, tmp_path):
    manifest, c = corpus
    torch.manual_seed(0)
    ts = _script(LogMelCNN(sample_rate=8000), tmp_path / "cnn.ts", TEACHER_CLASSES)
    run = _run(tmp_path, manifest, {"torchscript": str(tmp_path / "cnn.ts"), "sample_rate": 8000})
    m = _metrics(run, "teacher")
    assert m["source"]["format"] == "torchscript" and m["source"]["sample_rate"] == 8000
    assert m["params"] == sum(p.numel() for p in ts.parameters()) and m["macs"] > 0
    teacher = load_teacher(run / "stages/teacher/model.pt")
    x = c.splits["test"].x[:3]
    with torch.no_grad():
        at_8k = torch.from_numpy(resample_poly(x.numpy(), 1, 2, axis=1).astype(np.float32))
        want = ts(at_8k)[:, _order(TEACHER_CLASSES)]
    got = teacher(x)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # any length: a clip of 0.7 s goes through (and is resampled to 5600 samples)
    assert teacher(x[:2, :11200]).shape == (2, 4)


def test_changed_teacher_file_reruns_the_teacher_stage(corpus, tmp_path):
    manifest, _ = corpus
    path = tmp_path / "cnn.ts"
    torch.manual_seed(0)
    _script(WaveCNN(), path, TEACHER_CLASSES)
    teacher = {"torchscript": str(path)}
    run = _run(tmp_path, manifest, teacher)
    metrics = run / "stages/teacher/metrics.json"
    before = metrics.stat().st_mtime_ns
    _run(tmp_path, manifest, teacher, resume=True)
    assert metrics.stat().st_mtime_ns == before  # same file: skipped
    torch.manual_seed(1)
    _script(WaveCNN(), path, TEACHER_CLASSES)  # other weights, same path
    with pytest.raises(InputError, match=r"teacher\.torchscript: .*cnn\.ts changed since the teacher stage"):
        load_teacher(run / "stages/teacher/model.pt")
    _run(tmp_path, manifest, teacher, resume=True)
    assert metrics.stat().st_mtime_ns != before and _metrics(run, "teacher")["source"]["sha256"] == sha256(path)
    load_teacher(run / "stages/teacher/model.pt")


# ---- class order ----

def test_teacher_classes_in_another_order_are_permuted(corpus, tmp_path):
    manifest, c = corpus
    torch.manual_seed(0)
    ts = _script(WaveCNN(), tmp_path / "cnn.ts")  # no metadata: the recipe names the order
    run = _run(tmp_path, manifest, {"torchscript": str(tmp_path / "cnn.ts"), "classes": REVERSED})
    assert _metrics(run, "teacher")["source"]["teacher_classes"] == REVERSED
    assert REVERSED == CORPUS_CLASSES[::-1]
    x = c.splits["val"].x[:4]
    raw = ts(x).detach()
    got = load_teacher(run / "stages/teacher/model.pt")(x)
    assert torch.equal(got, raw.flip(1))  # exactly the teacher's columns, corpus class by corpus class


def test_module_factory_with_weights_only_checkpoint(corpus, tmp_path):
    manifest, c = corpus
    torch.manual_seed(7)
    trained = build()
    for p in trained.parameters():
        p.data.normal_()  # weights unlike the factory's own fixed init
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    run = _run(tmp_path, manifest, {"module": "tests.teacher_factory:build", "checkpoint": str(tmp_path / "state.pt")})
    src = _metrics(run, "teacher")["source"]
    assert (src["format"], src["module"], src["label"]) == ("module", "tests.teacher_factory:build",
                                                            "module: tests.teacher_factory:build")
    assert src["teacher_classes"] == REVERSED  # the module's `classes` attribute
    x = c.splits["test"].x[:3]
    with torch.no_grad():
        want, fresh = trained.eval()(x), build().eval()(x)
    got = load_teacher(run / "stages/teacher/model.pt")(x)
    assert torch.equal(got, want[:, _order(REVERSED)]) and not torch.allclose(got, fresh[:, _order(REVERSED)])


# ---- bad teachers: InputError naming the field and the file, nothing written ----

def _refused(tmp_path, manifest, teacher: dict, field: str, *names: str, before_data: bool = True):
    with pytest.raises(InputError) as e:
        _run(tmp_path, manifest, teacher)
    msg = str(e.value)
    assert msg.startswith(field + ":") and all(n in msg for n in names), msg
    assert not (tmp_path / "run/stages/teacher/model.pt").exists()
    if before_data:  # caught by compress's preflight: not even the run folder exists
        assert not (tmp_path / "run").exists()
    return msg


@pytest.mark.parametrize("field", ["onnx", "torchscript"])
def test_garbage_file_is_refused(corpus, tmp_path, field):
    bad = tmp_path / "model.bin"
    bad.write_bytes(bytes(range(256)) * 40)
    _refused(tmp_path, corpus[0], {field: str(bad)}, f"teacher.{field}", str(bad))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("field", ["onnx", "torchscript", "checkpoint"])
def test_pickle_is_never_unpickled(corpus, tmp_path, field):
    marker = tmp_path / "unpickled"
    bad = tmp_path / "model.pkl"
    bad.write_bytes(pickle.dumps({"state": _Payload(marker)}))
    assert not marker.exists()
    pickle.loads(bad.read_bytes())  # the control: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()
    teacher = ({"module": "tests.teacher_factory:build", "checkpoint": str(bad)} if field == "checkpoint"
               else {field: str(bad)})
    _refused(tmp_path, corpus[0], teacher, f"teacher.{field}", str(bad))
    assert not marker.exists()


def test_torch_save_of_a_whole_model_is_refused_as_checkpoint(corpus, tmp_path):
    bad = tmp_path / "model.pt"
    torch.save(build(), bad)  # a pickled nn.Module, not a state_dict
    _refused(tmp_path, corpus[0], {"module": "tests.teacher_factory:build", "checkpoint": str(bad)},
             "teacher.checkpoint", str(bad), "weights-only")


class _ThreeD(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, frames, classes): not pooled
        return x[:, :400].reshape(x.shape[0], 100, 4)


class _ThreeColumns(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * 2


@pytest.mark.parametrize("model,shape", [(_ThreeD(), "(2, 100, 4)"), (_ThreeColumns(), "(2, 3)")])
def test_wrong_output_dimensions_are_refused(corpus, tmp_path, model, shape):
    _script(model, tmp_path / "bad.ts", TEACHER_CLASSES)
    msg = _refused(tmp_path, corpus[0], {"torchscript": str(tmp_path / "bad.ts")}, "teacher.torchscript",
                   str(tmp_path / "bad.ts"), shape, before_data=False)
    assert "expected float logits (2, 4)" in msg


def test_unknown_and_missing_class_names_are_refused(corpus, tmp_path):
    _script(WaveCNN(), tmp_path / "cnn.ts")
    msg = _refused(tmp_path, corpus[0], {"torchscript": str(tmp_path / "cnn.ts"),
                                         "classes": ["neutral", "happy", "sad", "calm"]},
                   "teacher.classes", str(tmp_path / "cnn.ts"), before_data=False)
    assert "not in the corpus: calm" in msg and "missing from the teacher: angry" in msg


def test_no_class_names_anywhere_is_refused(corpus, tmp_path):
    _script(WaveCNN(), tmp_path / "cnn.ts")  # no extra file, no attribute, no teacher.classes
    _refused(tmp_path, corpus[0], {"torchscript": str(tmp_path / "cnn.ts")}, "teacher.classes",
             str(tmp_path / "cnn.ts"), "give teacher.classes")


@pytest.mark.parametrize("spec,why", [("tests.teacher_factory:nope", "has no function 'nope'"),
                                      ("tests.no_such_module:build", "cannot import 'tests.no_such_module'"),
                                      ("tests.teacher_factory:broken", "this factory fails"),
                                      ("tests.teacher_factory:not_a_module", "not a torch.nn.Module")])
def test_unresolvable_factory_is_refused(corpus, tmp_path, spec, why):
    torch.save(build().state_dict(), tmp_path / "state.pt")
    _refused(tmp_path, corpus[0], {"module": spec, "checkpoint": str(tmp_path / "state.pt")}, "teacher.module", why)


def test_cli_exits_2_and_writes_no_teacher(corpus, tmp_path):
    _script(WaveCNN(), tmp_path / "cnn.ts", ["neutral", "happy", "sad", "bored"])  # metadata names a foreign class
    recipe = write_recipe(tmp_path / "recipe.yaml", _recipe(corpus[0], {"torchscript": str(tmp_path / "cnn.ts")}))
    res = CliRunner().invoke(app, ["finetune", "--recipe", str(recipe), "--out", str(tmp_path / "run"),
                                   "--no-progress"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "teacher.classes" in out and "bored" in out
    assert not (tmp_path / "run/stages/teacher/model.pt").exists()


def test_recipe_takes_any_rate_only_for_an_external_teacher(tmp_path):
    from edgeser.recipe import Teacher

    assert Teacher(onnx=tmp_path / "t.onnx", sample_rate=44100).sample_rate == 44100
    assert Teacher(sample_rate=22050).sample_rate == 22050
    for bad, why in ((dict(sample_rate=8000), "SoundNet-8 takes 16000 or 22050"),
                     (dict(onnx="a.onnx", torchscript="b.ts"), "at most one external teacher"),
                     (dict(module="pkg.mod:build"), "needs teacher.checkpoint"),
                     (dict(module="pkg mod", checkpoint="s.pt"), "package.module:factory"),
                     (dict(classes=["a", "b"]), "names an external teacher's outputs")):
        with pytest.raises(ValueError, match=why):
            Teacher(**bad)
