"""What an artifact promises to someone who has only the file: its class names and input spec in its own
format's metadata, any length from one analysis frame up, any input level, and clear errors on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeser.formats import load_runner


def _classes(run_dir) -> list[str]:
    return json.loads((run_dir / "stages/data/metrics.json").read_text())["classes"]


def _path(run_dir, name):
    recs = json.loads((run_dir / "stages/export/metrics.json").read_text())["artifacts"]
    rec = next(r for r in recs if r["name"] == name)
    return rec, (run_dir / rec["path"] if rec.get("path") else None)


def test_class_names_read_back_with_each_runtime_alone(tiny_run):
    """Each reader uses only that runtime's own API, never edgeser."""
    import onnxruntime as ort

    run_dir, _ = tiny_run
    want = _classes(run_dir)
    got = {}
    for name in ("onnx-int8", "onnx-fp32", "onnx-int8-ptq"):
        meta = ort.InferenceSession(str(_path(run_dir, name)[1])).get_modelmeta().custom_metadata_map
        got[name] = json.loads(meta["classes"])
        spec = json.loads(meta["input"])
        assert spec["sample_rate"] == 16000 and spec["range"] == [-1.0, 1.0] and spec["min_samples"] == 801
        assert len(meta["recipe_sha256"]) == 64 and meta["edgeser_version"]
    folder = _path(run_dir, "onnx-int8-stream")[1]
    for part in ("frontend.onnx", "body.onnx", "step.onnx"):
        meta = ort.InferenceSession(str(folder / part)).get_modelmeta().custom_metadata_map
        got[f"stream/{part}"] = json.loads(meta["classes"])
    import torchao.quantization.pt2e  # noqa: F401  (registers the Q/DQ ops the int8 graphs use)

    extra = {"edgeser.json": ""}
    torch.jit.load(str(_path(run_dir, "torchscript")[1]), _extra_files=extra)
    got["torchscript"] = json.loads(json.loads(extra["edgeser.json"])["classes"])
    extra = {"edgeser.json": ""}
    torch.export.load(str(_path(run_dir, "pt2")[1]), extra_files=extra)
    got["pt2"] = json.loads(json.loads(extra["edgeser.json"])["classes"])
    import coremltools as ct

    ml = ct.models.MLModel(str(_path(run_dir, "coreml")[1]), skip_model_load=True)
    got["coreml"] = json.loads(ml.user_defined_metadata["classes"])
    fn = ml.get_spec().mlProgram.functions["main"]  # and the classifier's labels, from its classify op
    classify = next(op for op in fn.block_specializations[fn.opset].operations if op.type == "classify")
    got["coreml classifier"] = [v.immediateValue.tensor.strings.values[0]
                                for v in classify.inputs["classes"].arguments[0].value.immediateValue.list.values]
    rng = ml.get_spec().description.input[0].type.multiArrayType.shapeRange.sizeRanges[1]
    assert (rng.lowerBound, rng.upperBound) == (801, 16000 * 60)  # a flexible length, not the clip's
    rec, _ = _path(run_dir, "tensorrt")
    side = json.loads((run_dir / rec["checks"]["metadata_file"]).read_text())
    got["tensorrt side file"] = json.loads(side["classes"])
    assert json.loads(side["tensorrt_profile"])["min_shape"] == [1, 801]
    assert got == {k: want for k in got}
    card = (run_dir / "artifacts/README.md").read_text()
    assert all(c in card for c in want) and "get_modelmeta" in card


@pytest.mark.parametrize("name", ["onnx-int8", "onnx-int8-stream", "torchscript", "pt2", "onnx-fp32"])
def test_any_length_from_one_frame(tiny_run, name):
    """One analysis frame (801 samples), the training length, 6 s and 30 s all run, and give the same logits as
    the PyTorch model on that length."""
    from edgeser.models.io import load_student
    from edgeser.quant.calibrate import load_qat

    run_dir, _ = tiny_run
    rec, path = _path(run_dir, name)
    runner = load_runner(rec["format"], path)
    ref = load_student(run_dir / "stages/prune/model.pt")[0] if name == "onnx-fp32" else \
        load_qat(run_dir / "stages/qat/model.pt")[0].to_export()
    g = np.random.default_rng(0)
    for n in (801, 1234, 16000, 96000, 480000):
        x = (g.standard_normal((2, n)) * 0.1).astype(np.float32)
        out = runner(x)
        with torch.no_grad():
            want = ref(torch.from_numpy(x)).numpy()
        assert out.shape == (2, len(_classes(run_dir)))
        # onnxruntime's INT8 kernels round differently from PyTorch's fake-quant: a few int8 steps of the logits
        assert (out.argmax(1) == want.argmax(1)).all() or np.abs(out - want).max() < 0.5, (n, out, want)


def test_level_invariant_at_any_gain(tiny_run):
    """-40 dB to +20 dB of the same clips (unclipped): the INT8 artifact's decisions do not move, because the
    input quantiser sees each clip levelled to its own peak. Logits stay within float rounding of the DFT input
    (far below one int8 step of the logits)."""
    run_dir, _ = tiny_run
    rec, path = _path(run_dir, "onnx-int8")
    runner = load_runner(rec["format"], path)
    x = (np.random.default_rng(1).standard_normal((16, 16000)) * 0.05).astype(np.float32)
    base = runner(x)
    for db in (-40, -30, -20, -10, 6, 20):
        out = runner((x * 10 ** (db / 20)).astype(np.float32))
        assert (out.argmax(1) == base.argmax(1)).all(), db


def test_static_length_graph_slides_its_window():
    """A fixed-length graph (QNN HTP) gets longer input as windows at half a window's hop, logits averaged,
    and shorter input tiled to the window."""
    from edgeser.runtimes import Runner

    seen = []

    def fn(x):
        seen.append(x.shape)
        return np.stack([x.mean(1), x.max(1)], 1)

    r = Runner(fn, static_batch=1, fixed_samples=4)
    x = np.arange(10, dtype=np.float32)[None]
    out = r(x)
    # windows start at 0, 2, 4, 6 (the last one flush with the end)
    want = np.mean([[x[0, s : s + 4].mean(), x[0, s : s + 4].max()] for s in (0, 2, 4, 6)], 0)
    assert np.allclose(out[0], want) and all(s == (1, 4) for s in seen)
    short = r(np.array([[1.0, 3.0]], np.float32))
    assert np.allclose(short[0], [2.0, 3.0])  # tiled: [1, 3, 1, 3]


@pytest.mark.parametrize("x, needle", [
    (np.zeros((1, 100), np.float32), "shorter than one analysis frame (801 samples)"),
    (np.full((1, 16000), np.nan, np.float32), "NaN"),
    (np.zeros(16000, np.float32), "rank 2"),
    (np.zeros((1, 16000), np.int16), "float PCM"),
])
def test_runner_rejects_bad_input_naming_the_problem(tiny_run, x, needle):
    run_dir, _ = tiny_run
    for name in ("onnx-int8", "torchscript"):
        rec, path = _path(run_dir, name)
        with pytest.raises(ValueError, match="audio: ") as e:
            load_runner(rec["format"], path)(x)
        assert needle in str(e.value)
