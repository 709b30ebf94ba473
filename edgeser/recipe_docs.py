"""`edgeser recipe defaults` and `edgeser recipe schema`: the recipe's options, rendered from its pydantic schema
(edgeser/recipe.py), so the list of options, their defaults and their descriptions cannot drift from it."""
from __future__ import annotations

import textwrap
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from edgeser.recipe import Recipe

WIDTH = 100  # the longest line `edgeser recipe defaults` writes

HEADER = (
    "Every recipe option with its default and what it does (`edgeser recipe defaults`); the comment after a "
    "value, or in [...] after a description, gives the values allowed. A recipe needs only `data` (manifest "
    "or synth) and the keys that differ from these defaults.\n"
    "For editors: `edgeser recipe schema --out recipe.schema.json`, then begin a recipe with\n"
    "`# yaml-language-server: $schema=recipe.schema.json`.")

DATA_NOTE = ("This file uses synth (manifest: null). For your own corpus, set manifest to its CSV and delete "
             "synth, or run with --set data.manifest=FILE, which replaces synth.")


def section_model(info: FieldInfo) -> type[BaseModel] | None:
    """The section class of a field whose value is a section (e.g. `teacher`, or `data.synth`, which may be
    null), else None: the field is a leaf."""
    ann = info.annotation
    kinds = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    return next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)


def fields(model: type[BaseModel] = Recipe, prefix: str = "") -> Iterator[tuple[str, FieldInfo, bool]]:
    """(dotted name, field, is a section) for every field of the recipe, depth first in schema order."""
    for name, info in model.model_fields.items():
        sub = section_model(info)
        yield prefix + name, info, sub is not None
        if sub is not None:
            yield from fields(sub, f"{prefix}{name}.")


def _choices(ann) -> tuple:
    """The allowed values of a Literal field, also inside Optional[...] or list[...]."""
    if get_origin(ann) is Literal:
        return get_args(ann)
    for a in get_args(ann) if get_origin(ann) in (Union, types.UnionType, list) else ():
        if found := _choices(a):
            return found
    return ()


def _limits(info: FieldInfo) -> list[str]:
    out = []
    for m in info.metadata:
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                out.append(f"{op} {getattr(m, attr)}")
    return out


def allowed(info: FieldInfo) -> str:
    """The values a field allows, as its Literal choices or numeric limits: `one of: a, b`, `>= 0, <= 1`."""
    notes = _limits(info)
    choices = _choices(info.annotation)
    if len(choices) > 1:
        notes.insert(0, ("any of: " if get_origin(info.annotation) is list else "one of: ")
                     + ", ".join(map(str, choices)))
    return ", ".join(notes)


def _comment(text: str, indent: str) -> list[str]:
    out = []
    for para in text.splitlines():
        out += [f"{indent}# {line}" for line in textwrap.wrap(para, WIDTH - len(indent) - 2, break_long_words=False,
                                                               break_on_hyphens=False)]
    return out


def _flow(value: Any) -> str:
    """One YAML value on one line (flow style): null, 0.0003, auto, [a, b], {}."""
    lines = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False).splitlines()
    if lines and lines[-1] == "...":  # the document end marker PyYAML adds after a plain scalar
        lines = lines[:-1]
    return " ".join(lines)


def _leaf(name: str, info: FieldInfo, indent: str) -> list[str]:
    """The field's description as a comment, then `name: default`, its allowed values as a trailing comment
    (or after the description when that line would be too long)."""
    desc, note = (info.description or "").strip(), allowed(info)
    value = to_jsonable_python(info.get_default(call_default_factory=True))
    line = f"{indent}{name}: {_flow(value)}"
    if len(line) > WIDTH and isinstance(value, list) and value:  # too long for one line: a block list
        return _comment(desc + (f" [{note}]" if note else ""), indent) + [f"{indent}{name}:"] + [
            f"{indent}  - {_flow(v)}" for v in value]
    if note and len(f"{line}  # {note}") <= WIDTH:
        return _comment(desc, indent) + [f"{line}  # {note}"]
    return _comment(desc + (f" [{note}]" if note else ""), indent) + [line]


def _section(model: type[BaseModel], indent: str) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        sub = section_model(info)
        if indent == "" and out:
            out.append("")  # a blank line between top-level entries
        if sub is None:
            out += _leaf(name, info, indent)
            continue
        # a section: its fields with their defaults (data.synth too, though its own default is null)
        out += _comment((info.description or "").strip(), indent)
        if name == "data" and model is Recipe:
            out += _comment(DATA_NOTE, indent)
        out += [f"{indent}{name}:"] + _section(sub, indent + "  ")
    return out


def defaults_yaml() -> str:
    """The whole recipe with every option at its default, each described by a comment: valid YAML that
    validates as a Recipe (it uses data.synth, the one choice the recipe requires)."""
    return "\n".join(_comment(HEADER, "") + [""] + _section(Recipe, "")) + "\n"


def schema() -> dict:
    """The recipe's JSON Schema, for editors (e.g. the YAML language server)."""
    return Recipe.model_json_schema()
