"""`edgeser recipe defaults` and `edgeser recipe schema`: rendered from the recipe's pydantic schema, every option
described there."""
from __future__ import annotations

import json

import yaml
from pydantic import Field
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.recipe import Data, Recipe, Student, SynthData, load_recipe
from edgeser.recipe_docs import WIDTH, fields, schema

runner = CliRunner()


def _undocumented(model=Recipe) -> list[str]:
    """Every field of the recipe (sections and leaves, depth first) whose description is missing or blank."""
    return [name for name, info, _ in fields(model) if not (info.description or "").strip()]


def _leaves(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k}
    return out


def test_defaults_yaml_round_trips_and_validates(tmp_path):
    res = runner.invoke(app, ["recipe", "defaults"])
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert max(map(len, text.splitlines())) <= WIDTH
    raw = yaml.safe_load(text)
    # data needs one of manifest / synth: the file shows manifest as null and synth with its defaults
    assert raw["data"]["manifest"] is None and raw["data"]["synth"] == SynthData().model_dump()
    r = Recipe.model_validate(raw)
    assert r.model_dump() == Recipe(data=Data(synth=SynthData())).model_dump()
    # every leaf option is written out, in schema order, sections too
    assert _leaves(raw) == {name for name, _, section in fields() if not section}
    assert list(raw) == list(Recipe.model_fields)
    assert list(raw["distill"]) == list(Recipe.model_fields["distill"].annotation.model_fields)
    # each option's description is its comment
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip().startswith("temperature:"))
    assert lines[i - 1].strip() == "# " + Recipe.model_fields["distill"].annotation.model_fields[
        "temperature"].description
    assert "# > 0, <= 100" in lines[i]
    # and the file is a recipe that `compress` accepts as it stands
    p = tmp_path / "defaults.yaml"
    p.write_text(text)
    assert load_recipe(p).model_dump() == r.model_dump()


def test_every_field_has_a_description():
    assert _undocumented() == []
    props = [(name, p) for d in [schema(), *schema()["$defs"].values()] for name, p in d.get("properties", {}).items()]
    assert len(props) > 100 and all(p.get("description", "").strip() for _, p in props), \
        [name for name, p in props if not p.get("description", "").strip()]


def test_a_field_without_a_description_is_caught():
    class WithNewField(Student):
        undocumented: int = 3
        blank: float = Field(1.0, description="  ")

    assert [n.split(".")[-1] for n in _undocumented(WithNewField)] == ["undocumented", "blank"]


def test_schema_command_prints_the_json_schema():
    res = runner.invoke(app, ["recipe", "schema"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s == Recipe.model_json_schema()
    t = s["$defs"]["Distill"]["properties"]["temperature"]
    assert (t["exclusiveMinimum"], t["maximum"], t["default"]) == (0, 100, 4.0) and t["description"]
    assert "data" in s["required"]
    assert s["$defs"]["Data"]["properties"]["manifest"]["description"]


def test_schema_out_writes_the_file(tmp_path):
    out = tmp_path / "schemas" / "recipe.schema.json"
    res = runner.invoke(app, ["recipe", "schema", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == Recipe.model_json_schema()
    assert [p.name for p in out.parent.iterdir()] == ["recipe.schema.json"]  # no temp file left beside it
