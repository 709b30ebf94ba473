"""--resume keys hold a target profile's content, not only its name: editing `channel_multiple` in the profile
reruns prune and every stage after it, and only those."""
from __future__ import annotations

import json

import yaml
from rich.console import Console

from edgeser.pipeline import compress
from edgeser.recipe import validate
from edgeser.run_dir import RunDir

from .conftest import recipe_with

FORMATS = ["onnx-int8"]  # one artifact keeps the two runs short


def _keys(run: RunDir) -> dict:
    return {s: json.loads(run.done(s).read_text())["key"] for s in ("teacher", "distill", "prune", "qat", "export",
                                                                   "verify")}


def test_editing_channel_multiple_reruns_prune_and_after(tmp_path):
    profile = tmp_path / "my-device.yaml"
    spec = {"name": "my-device", "description": "a CPU whose kernels like multiples of 1", "runtime": "onnxruntime",
            "primary_artifact": "onnx-int8", "channel_multiple": 1}
    profile.write_text(yaml.safe_dump(spec))
    recipe = validate(recipe_with(("target", str(profile)), ("export.formats", FORMATS)))
    run = RunDir(tmp_path / "run")
    compress(recipe, run.root, console=Console(quiet=True), show_progress=False)
    before, channels = _keys(run), run.read_metrics("prune")["channels"]

    spec["channel_multiple"] = 6  # 16 channels at ratio 0.5: 8 kept at a multiple of 1, a multiple of 6 now
    profile.write_text(yaml.safe_dump(spec))
    log = Console(record=True, width=200)
    compress(recipe, run.root, console=log, show_progress=False, resume=True)
    after, text = _keys(run), log.export_text()

    assert {s for s in before if before[s] == after[s]} == {"teacher", "distill"}
    assert "teacher: finished before" in text and "distill: finished before" in text
    assert "prune: finished before" not in text and "qat: finished before" not in text
    new = run.read_metrics("prune")["channels"]
    assert new != channels and all(c % 6 == 0 for c in new[:-1]), (channels, new)


def test_same_profile_resumes_everything(tmp_path):
    """The control: nothing edited, so --resume skips every stage that can be skipped."""
    profile = tmp_path / "dev.yaml"
    profile.write_text(yaml.safe_dump({"name": "dev", "description": "d", "runtime": "onnxruntime",
                                       "primary_artifact": "onnx-int8"}))
    recipe = validate(recipe_with(("target", str(profile)), ("export.formats", FORMATS)))
    run = RunDir(tmp_path / "run")
    compress(recipe, run.root, console=Console(quiet=True), show_progress=False)
    log = Console(record=True, width=200)
    compress(recipe, run.root, console=log, show_progress=False, resume=True)
    text = log.export_text()
    assert all(f"{s}: finished before" in text for s in ("teacher", "distill", "prune", "qat", "export", "verify"))
