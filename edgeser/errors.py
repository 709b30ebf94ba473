"""The error every command maps to exit code 2: bad input (a recipe field, a manifest, a run folder, an
importer's source, a target profile). Its message names the field or file."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the field or file. The CLI maps it to exit code 2."""


RecipeError = InputError  # the older name, kept: `except RecipeError` catches every bad input
