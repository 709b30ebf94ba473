"""Recipe validation: malformed recipes exit 2, name the field, and write nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.recipe import RecipeError, load_recipe
from tests.conftest import DEL, recipe_with, write_recipe

runner = CliRunner()


def _with(path_value: list[tuple[str, object]]) -> dict:
    return recipe_with(*path_value)


_DEL = DEL

BAD = [
    ([("distill.temperature", 0)], "distill.temperature"),
    ([("distill.temperature", -1.5)], "distill.temperature"),
    ([("distill.alpha", 1.5)], "distill.alpha"),
    ([("distill.epochs", "three")], "distill.epochs"),
    ([("teacher.lr", -0.1)], "teacher.lr"),
    ([("prune.channel_ratio", 1.0)], "prune.channel_ratio"),
    ([("qat.calib_batches", 0)], "qat.calib_batches"),
    ([("student.channels", [16, -4])], "student.channels"),
    ([("student.colour", "red")], "student.colour"),
    ([("bogus", 1)], "bogus"),
    ([("export.formats", ["onnx-int8", "tflite"])], "export.formats"),
    ([("target", "toaster")], "target"),
    ([("data.synth", _DEL)], "data.manifest or data.synth"),
    ([("data.manifest", "nowhere.csv"), ("data.synth", _DEL)], "data.manifest"),
    ([("teacher.checkpoint", "missing.pt")], "teacher.checkpoint"),
    ([("verify.max_ua_drop_pt", -1)], "verify.max_ua_drop_pt"),
    ([("data.test_speakers", 0.5), ("data.val_speakers", 0.5)], "val_speakers"),
    ([("qat.relu_quant", "unsigned"), ("export.formats", ["onnx-int8", "tensorrt"])], "qat.relu_quant"),
    ([("qat.relu_quant", "zero")], "qat.relu_quant"),
    ([("qat.dft_output", "int32"), ("export.formats", ["onnx-int8", "coreml"])], "qat.dft_output"),
    ([("student.fmax_hz", 9000)], "student.fmax_hz"),
]


@pytest.mark.parametrize("changes,field", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_recipe_exits_2_naming_field(tmp_path, changes, field):
    recipe = write_recipe(tmp_path / "r.yaml", _with(changes))
    out = tmp_path / "run"
    res = runner.invoke(app, ["compress", "--recipe", str(recipe), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert field in res.output
    assert not out.exists(), "a bad recipe must write nothing"


def test_not_yaml_and_not_mapping(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed\n")
    res = runner.invoke(app, ["compress", "--recipe", str(p), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    p.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(p)


def test_missing_recipe_file(tmp_path):
    res = runner.invoke(app, ["compress", "--recipe", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "nope.yaml" in res.output


def test_set_overrides_any_field(tiny_recipe_path):
    r = load_recipe(tiny_recipe_path, ["distill.epochs=3", "distill.temperature=2.5", "export.formats=[onnx-int8]"])
    assert r.distill.epochs == 3 and r.distill.temperature == 2.5 and r.export.formats == ["onnx-int8"]


def test_set_bad_override_names_field(tiny_recipe_path, tmp_path):
    res = runner.invoke(app, ["compress", "--recipe", str(tiny_recipe_path), "--set", "distill.temperature=0",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "distill.temperature" in res.output and "must be > 0" in res.output
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(tiny_recipe_path, ["distill.epochs"])


def test_bad_manifest_writes_nothing(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,emotion\na.wav,happy\n")
    recipe = write_recipe(tmp_path / "r.yaml", _with([("data.manifest", str(m)), ("data.synth", _DEL)]))
    res = runner.invoke(app, ["compress", "--recipe", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "m.csv" in res.output and "speaker" in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml")))
def test_shipped_recipes_validate(name):
    r = load_recipe(Path(__file__).parents[1] / "recipes" / f"{name}.yaml")
    assert r.name == name


def test_paths_resolve_recipe_relative_in_the_file_and_cwd_relative_from_set(tmp_path):
    """A path written in the recipe file resolves against the recipe's folder; one from --set against the working
    folder (issue 12: the README's `--set teacher.pretrained=weights/sound8.npy` resolved under recipes/)."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.npy").write_bytes(b"x")
    (tmp_path / "recipes" / "near.npy").write_bytes(b"x")
    recipe = write_recipe(tmp_path / "recipes" / "r.yaml", _with([("teacher.checkpoint", "near.npy")]))
    assert load_recipe(recipe, cwd=tmp_path).teacher.checkpoint == tmp_path / "recipes" / "near.npy"
    r = load_recipe(recipe, ["teacher.checkpoint=weights/w.npy"], cwd=tmp_path)
    assert r.teacher.checkpoint == tmp_path / "weights" / "w.npy"
    with pytest.raises(RecipeError, match=r"teacher.checkpoint: file not found: .*/recipes/weights/w.npy .*"
                                          r"recipe's folder"):
        load_recipe(write_recipe(tmp_path / "recipes" / "r2.yaml", _with([("teacher.checkpoint", "weights/w.npy")])))
    with pytest.raises(RecipeError, match=r"file not found: .*nope.npy \(a relative path resolves against the "
                                          r"working folder \(--set\)\)"):
        load_recipe(recipe, ["teacher.checkpoint=nope.npy"], cwd=tmp_path)


def test_set_cli_paths_resolve_against_the_folder_the_command_runs_in(tmp_path, monkeypatch, tiny_recipe_path):
    (tmp_path / "weights").mkdir()
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["compress", "--recipe", str(tiny_recipe_path), "--set", "teacher.checkpoint=weights/x.npy",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and f"{tmp_path}/weights/x.npy" in res.output and "working folder" in res.output


def test_setting_one_data_source_replaces_the_other(tiny_recipe_path, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label,speaker\n")
    r = load_recipe(tiny_recipe_path, [f"data.manifest={m}"])
    assert r.data.manifest == m and r.data.synth is None
    r = load_recipe(tiny_recipe_path, [f"data.manifest={m}", "data.synth=null"])
    assert r.data.manifest == m and r.data.synth is None
    with pytest.raises(RecipeError, match="exactly one of data.manifest or data.synth .*replaces"):
        load_recipe(tiny_recipe_path, [f"data.manifest={m}", "data.synth={n_speakers: 4}"])
    manifest_recipe = write_recipe(tmp_path / "r.yaml", _with([("data.manifest", str(m)), ("data.synth", _DEL)]))
    r = load_recipe(manifest_recipe, ["data.synth={n_speakers: 6}"])
    assert r.data.synth is not None and r.data.manifest is None
