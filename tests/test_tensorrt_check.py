"""Static TensorRT-10 QDQ rule checks on a small export-form INT8 model."""
import copy
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgeser.export.tensorrt import build_engine, check_tensorrt_rules, tensorrt_available, write_trtexec_script
from tests.tiny_models import TinySER


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "tiny_qdq.onnx"
    torch.onnx.export(TinySER().eval(), (torch.randn(2, 16000),), str(path), dynamo=True,
                      external_data=False, opset_version=18, input_names=["audio"],
                      output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    return onnx.load(str(path))


def _first(model, op, pred=lambda n: True):
    return next(n for n in model.graph.node if n.op_type == op and pred(n))


def _rules(model, node_name=None):
    res = check_tensorrt_rules(model)
    assert not res["passed"]
    return {v["rule"] for v in res["violations"] if node_name in (None, v["node"])}


def _add_init(model, name, arr):
    model.graph.initializer.append(numpy_helper.from_array(arr, name))


def test_good_model_passes(good_onnx, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(good_onnx, str(path))
    res = check_tensorrt_rules(path)
    assert res["passed"], res["violations"]
    c = res["checked"]
    assert c["quantize"] == 7 and c["dequantize"] == 10 and c["per_channel"] == 3
    assert {"Conv", "Gemm", "MatMul", "QuantizeLinear", "DequantizeLinear"} <= set(c["op_types"])


def test_nonzero_zero_point(good_onnx):
    m = copy.deepcopy(good_onnx)
    q = _first(m, "QuantizeLinear")
    _add_init(m, "zp_bad", np.array(3, dtype=np.int8))
    q.input[2] = "zp_bad"
    assert _rules(m, q.name) == {"zero_point"}


def test_uint8_type(good_onnx):
    m = copy.deepcopy(good_onnx)
    q = _first(m, "QuantizeLinear")
    _add_init(m, "zp_u8", np.array(0, dtype=np.uint8))
    q.input[2] = "zp_u8"
    assert "int8_type" in _rules(m, q.name)


def test_per_channel_axis_1(good_onnx):
    m = copy.deepcopy(good_onnx)
    inits = {t.name for t in m.graph.initializer}
    dq = _first(m, "DequantizeLinear", lambda n: n.input[0] in inits)  # conv weight DQ
    for a in dq.attribute:
        if a.name == "axis":
            a.i = 1
    v = [x for x in check_tensorrt_rules(m)["violations"] if x["node"] == dq.name]
    assert [x["rule"] for x in v] == ["per_channel_axis"]
    assert "expected output-channel axis 0" in v[0]["detail"]


def test_non_constant_scale(good_onnx):
    m = copy.deepcopy(good_onnx)
    q = _first(m, "QuantizeLinear")
    _add_init(m, "one", np.array(1.0, dtype=np.float32))
    m.graph.node.insert(0, helper.make_node("Mul", [q.input[1], "one"], ["computed_scale"],
                                            name="scale_mul"))
    q.input[1] = "computed_scale"
    assert _rules(m, q.name) == {"const_qparams"}


def test_bad_scale_value(good_onnx):
    m = copy.deepcopy(good_onnx)
    q = _first(m, "QuantizeLinear")
    _add_init(m, "neg_scale", np.array(-0.1, dtype=np.float32))
    q.input[1] = "neg_scale"
    assert _rules(m, q.name) == {"scale_value"}


def test_unsupported_and_custom_ops(good_onnx):
    m = copy.deepcopy(good_onnx)
    _add_init(m, "step", np.array(160, dtype=np.int64))
    m.graph.node.append(helper.make_node("STFT", ["audio", "step"], ["spec"], name="my_stft"))
    m.graph.node.append(helper.make_node("FancyMel", ["audio"], ["mel"], name="my_custom",
                                         domain="com.example"))
    res = check_tensorrt_rules(m)
    got = {(v["node"], v["rule"]) for v in res["violations"]}
    assert got == {("my_stft", "unsupported_op"), ("my_custom", "custom_domain")}


def test_fully_dynamic_input(good_onnx):
    m = copy.deepcopy(good_onnx)
    inp = m.graph.input[0]
    for i, d in enumerate(inp.type.tensor_type.shape.dim):
        d.dim_param = f"d{i}"
    assert _rules(m, inp.name) == {"dynamic_input"}
    inp.type.tensor_type.ClearField("shape")
    assert _rules(m, inp.name) == {"dynamic_input"}


def test_weight_q_dq_pair_is_accepted(good_onnx):
    """float weight -> QuantizeLinear -> DequantizeLinear (QAT-style export) is fine."""
    m = copy.deepcopy(good_onnx)
    inits = {t.name: t for t in m.graph.initializer}
    dq = _first(m, "DequantizeLinear", lambda n: n.input[0] in inits)
    w = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    _add_init(m, "w_float", w)
    idx = list(m.graph.node).index(dq)
    m.graph.node.insert(idx, helper.make_node("QuantizeLinear", ["w_float", dq.input[1], dq.input[2]],
                                              ["w_q"], name="w_quant", axis=0))
    dq.input[0] = "w_q"
    res = check_tensorrt_rules(m)
    assert res["passed"], res["violations"]


def test_write_trtexec_script(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    script = tmp_path / "deploy" / "build_engine.sh"
    cmd = write_trtexec_script(tmp_path / "model.onnx", script, input_name="audio",
                               min_shape=(1, 16000), opt_shape=(4, 16000), max_shape=(8, 16000))
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and cmd in text
    assert os.access(script, os.X_OK)
    for flag in ("--onnx=../model.onnx", "--saveEngine=model.engine", "--int8", "--fp16",
                 "--minShapes=audio:1x16000", "--optShapes=audio:4x16000",
                 "--maxShapes=audio:8x16000", "--timingCacheFile=timing.cache"):
        assert flag in cmd.split(), flag
    assert not list(script.parent.glob(".*tmp*"))


def test_build_engine_needs_tensorrt(tmp_path):
    ok, reason = tensorrt_available()
    if ok:
        pytest.skip("TensorRT is installed; covered by test_build_engine")
    assert reason
    with pytest.raises(RuntimeError, match="TensorRT not available"):
        build_engine("x.onnx", tmp_path / "x.engine", min_shape=(1, 16000), opt_shape=(1, 16000),
                     max_shape=(1, 16000), input_name="audio")


def test_build_engine(tmp_path, good_onnx):
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT not installed: {reason}")
    src = tmp_path / "m.onnx"
    onnx.save(good_onnx, str(src))
    res = build_engine(src, tmp_path / "m.engine", min_shape=(1, 16000), opt_shape=(4, 16000),
                       max_shape=(8, 16000), input_name="audio", timing_cache=tmp_path / "t.cache")
    assert (tmp_path / "m.engine").stat().st_size == res["size_bytes"] > 0
    assert (tmp_path / "t.cache").exists()
    # the engine runs, and agrees with onnxruntime on the same QDQ graph
    import onnxruntime as ort

    from edgeser.runtimes import tensorrt_runner

    x = (np.random.default_rng(0).standard_normal((4, 16000)) * 0.1).astype(np.float32)
    got = tensorrt_runner(tmp_path / "m.engine")(x)
    ref = ort.InferenceSession(str(src)).run(None, {"audio": x})[0]
    assert got.shape == ref.shape and (got.argmax(1) == ref.argmax(1)).mean() >= 0.75



def test_dynamic_length_needs_a_covering_profile(good_onnx):
    """A dynamic time axis is legal only with an optimisation profile that spans it (min <= opt <= max)."""
    m = copy.deepcopy(good_onnx)
    inp = m.graph.input[0]
    for i, d in enumerate(inp.type.tensor_type.shape.dim):
        d.dim_param = f"d{i}"
    assert _rules(m, inp.name) == {"dynamic_input"}  # no profile: only the batch may be dynamic
    ok = {"min_shape": (1, 801), "opt_shape": (1, 32000), "max_shape": (8, 480000)}
    assert not [v for v in check_tensorrt_rules(m, profile=ok)["violations"] if v["node"] == inp.name]
    bad = {"min_shape": (1, 32000), "opt_shape": (1, 801), "max_shape": (8, 480000)}
    assert {v["rule"] for v in check_tensorrt_rules(m, profile=bad)["violations"] if v["node"] == inp.name} == {"dynamic_input"}
    short = {"min_shape": (1,), "opt_shape": (1,), "max_shape": (1,)}
    assert check_tensorrt_rules(m, profile=short)["violations"][0]["detail"].startswith("profile rank")
