"""Self-describing artifacts: class names in output order, sample rate, input spec, version and recipe hash,
written into each format's own metadata so an engineer who receives only the file can use it.

    ONNX         metadata_props (onnx.ModelProto), read with onnxruntime's get_modelmeta().custom_metadata_map
    TorchScript  extra file `edgeser.json`, read with torch.jit.load(_extra_files={"edgeser.json": ""})
    pt2          extra file `edgeser.json`, read with torch.export.load(extra_files={"edgeser.json": ""})
    CoreML       user_defined_metadata (model.user_defined_metadata)
    TensorRT     a side file `<engine>.json` next to the build script (an engine has no metadata of its own)

Every value is a string (ONNX and CoreML allow nothing else): lists and mappings are JSON.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgeser.fileio import atomic_path

EXTRA_FILE = "edgeser.json"
# The longest input every dynamic-length artifact is exported for (and TensorRT's max profile).
MAX_SECONDS = 60


def recipe_sha256(recipe_json: dict) -> str:
    """The same hash RUN/manifest.json records."""
    return hashlib.sha256(json.dumps(recipe_json, sort_keys=True).encode()).hexdigest()


def describe(*, classes: list[str], sample_rate: int, min_samples: int, max_samples: int | None,
             fixed_samples: int | None, batch: int | None, recipe_json: dict, version: str) -> dict:
    """The metadata dict (str -> str). fixed_samples: a static-length artifact, which a runtime slides over
    longer input and whose logits it averages (edgeser.runtimes.Runner does)."""
    spec = {"name": "audio", "dtype": "float32", "layout": "(batch, samples)", "channels": "mono",
            "range": [-1.0, 1.0], "sample_rate": sample_rate, "batch": batch if batch else "any",
            "min_samples": fixed_samples or min_samples, "max_samples": fixed_samples or max_samples,
            "frame_samples": min_samples}  # one analysis frame: the shortest audio a runtime may slide or tile
    if fixed_samples:
        length = (f"fixed window of {fixed_samples} samples: slide it over longer input with a hop of "
                  f"{fixed_samples // 2} samples and average the logits; tile shorter input to the window")
    else:
        length = f"any length from {min_samples} samples (one analysis frame) to {max_samples}"
    return {"classes": json.dumps(list(classes)), "sample_rate": str(sample_rate), "input": json.dumps(spec),
            "output": json.dumps({"name": "logits", "layout": "(batch, classes)",
                                  "meaning": "unnormalised scores; softmax for probabilities, argmax indexes classes"}),
            "length": length, "edgeser_version": version, "recipe_sha256": recipe_sha256(recipe_json)}


def write_onnx_metadata(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k in sorted(meta):
        model.metadata_props.add(key=k, value=meta[k])
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def read_onnx_metadata(path: Path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def extra_files(meta: dict) -> dict:
    return {EXTRA_FILE: json.dumps(meta, sort_keys=True)}


def write_side_file(path: Path, meta: dict) -> Path:
    from edgeser.fileio import write_text

    side = Path(path).with_suffix(".json")
    write_text(side, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return side
