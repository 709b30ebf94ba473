"""Core ML (mlprogram, iOS17) W8A8 export and static spec checks."""
import numpy as np
import pytest
import torch

from edgeser.export.coreml import check_coreml_spec, coreml_predict_available, export_coreml
from tests.tiny_models import TinySER

SHAPE = (1, 16000)


def _check(path, **kw):
    args = dict(input_name="audio", input_shape=SHAPE, output_name="logits", n_classes=4)
    return check_coreml_spec(path, **{**args, **kw})


@pytest.fixture(scope="module")
def int8_pkg(tmp_path_factory):
    path = tmp_path_factory.mktemp("coreml") / "tiny.mlpackage"
    info = export_coreml(TinySER(), torch.randn(SHAPE), path)
    return path, info


def test_export_int8_passes(int8_pkg):
    path, info = int8_pkg
    assert info["route"] == "direct-quantized_decomposed"
    assert info["minimum_deployment_target"] == "iOS17" and path.is_dir()
    res = _check(path, frontend_ops_allowed=20)
    assert res["passed"], res["violations"]
    assert res["int8_weight_layers"] == 3 and res["float_weight_layers"] == 0
    assert res["ops"]["constexpr_affine_dequantize"] == 3
    assert res["ops"]["quantize"] == res["ops"]["dequantize"] == 7
    assert set(res["float_compute_ops"]) <= set(res["frontend_ops"])
    # DFT conv and mel matmul (lowered to `linear`) stay float in the front-end
    assert res["ops"]["conv"] == 3 and res["ops"]["linear"] == 2
    assert {"conv1d", "matmul", "log"} <= set(res["frontend_ops"])


def _op_dtypes(path):
    import coremltools as ct
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    return spec, {op.outputs[0].name: op.outputs[0].type.tensorType.dataType for op in ops}


def test_quantised_dft_with_float_mel_island(tmp_path):
    """Float ops between Q/DQ regions (power, mel matmul, log) belong to the front-end, in fp32."""
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2
    path = tmp_path / "qdft.mlpackage"
    export_coreml(TinySER(quant_dft=True), torch.randn(SHAPE), path)
    res = _check(path, frontend_ops_allowed=20)
    assert res["passed"], res["violations"]
    assert res["ops"]["quantize"] == 9 and res["int8_weight_layers"] == 3
    assert res["frontend_float_layers"] == ["conv1d", "matmul"]  # DFT conv + mel projection
    assert {"log", "add"} <= set(res["float_compute_ops"])
    spec, dtypes = _op_dtypes(path)
    fp32, fp16 = MIL_pb2.DataType.Value("FLOAT32"), MIL_pb2.DataType.Value("FLOAT16")
    assert dtypes["log"] == fp32 and dtypes["conv1d"] == fp32
    assert dtypes["conv1d_1_cast_fp16"] == fp16  # the quantised body runs in fp16
    assert spec.description.input[0].type.multiArrayType.dataType == \
        FeatureTypes_pb2.ArrayFeatureType.FLOAT32


def test_atomic_overwrite(int8_pkg):
    path, _ = int8_pkg
    export_coreml(TinySER(), torch.randn(SHAPE), path)  # replace an existing package
    assert _check(path)["passed"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.mlpackage"]


def test_float_model_fails_int8_check(tmp_path):
    path = tmp_path / "float.mlpackage"
    export_coreml(TinySER(quantised=False), torch.randn(SHAPE), path)
    res = _check(path)
    assert not res["passed"] and res["int8_weight_layers"] == 0
    assert any("conv1d_1" in v and "not int8" in v for v in res["violations"]), res["violations"]
    assert any("no quantize op" in v for v in res["violations"])


def test_wrong_input_name_fails(int8_pkg):
    res = _check(int8_pkg[0], input_name="waveform")
    assert not res["passed"]
    assert any(v.startswith("input: expected name 'waveform'") for v in res["violations"])


def test_wrong_classes_and_frontend_budget_fail(int8_pkg):
    res = _check(int8_pkg[0], n_classes=7, frontend_ops_allowed=3)
    assert any("output 'logits'" in v for v in res["violations"])
    assert any(v.startswith("front-end:") for v in res["violations"])


def test_predict_available_reason():
    ok, reason = coreml_predict_available()
    assert isinstance(ok, bool) and reason
    if not ok:
        assert reason == "CoreML predict() runs only on macOS"


def test_coreml_predict_matches_torch(int8_pkg):
    ok, reason = coreml_predict_available()
    if not ok:
        pytest.skip(reason)
    import coremltools as ct
    x = torch.randn(SHAPE) * 0.1
    model = TinySER()
    ref = model(x).detach().numpy()
    out = ct.models.MLModel(str(int8_pkg[0])).predict({"audio": x.numpy()})["logits"]
    # both sides put the logits on their quantiser's grid (its scale: the torch graph's last dequantize), so one
    # flipped rounding is one step; Core ML's grid is the fp16-rounded scale and its output fp16, each off by at
    # most 2^-11 of the logit
    step = _torch_body(model)[0][-1][1][1]
    assert np.abs(out - ref).max() <= step + 2 * FP16_REL * np.abs(ref).max()


# torch.export op -> the MIL op coremltools 9 lowers it to, in the quantised body (from the first quantize on)
TORCH_TO_MIL = {"quantize_per_tensor": "quantize", "dequantize_per_tensor": "dequantize",
                "dequantize_per_channel": "constexpr_affine_dequantize", "conv1d": "conv", "relu": "relu",
                "mean": "reduce_mean", "linear": "linear"}
FP16_REL = 2.0 ** -11  # fp16 rounding: at most half an ulp, 2^-11 of the value


def _mil_program(path):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load
    m = ct.models.MLModel(str(path), skip_model_load=True)
    spec = m.get_spec()
    return load(spec, spec.specificationVersion, m.weights_dir).functions["main"]


def _torch_body(model):
    """(op, args, kwargs) of the exported torch graph from its first quantize_per_tensor on; buffer arguments
    replaced by their values."""
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (torch.randn(SHAPE),)).run_decompositions({})
    buffers = {k: getattr(model, v) for k, v in ep.graph_signature.inputs_to_buffers.items()}
    val = lambda a: buffers.get(a.name, a) if isinstance(a, torch.fx.Node) else a  # noqa: E731
    ops = [(n.target._opname, [val(a) for a in n.args], n.kwargs) for n in ep.graph.nodes if n.op == "call_function"]
    return ops[next(i for i, o in enumerate(ops) if o[0] == "quantize_per_tensor"):], buffers


def _fp16(x):
    return np.asarray(x, np.float32).astype(np.float16)


def test_mil_program_holds_the_torch_models_numbers(int8_pkg):
    """Core ML's runtime exists only on macOS: on Linux nothing executes the package (MLModel.predict raises;
    coremltools has no MIL interpreter, only per-op constant folding, and `conv` has none), so CoreML logits are
    never compared here. What can be compared is every number the program carries against the torch model it came
    from: op for op through the quantised body, the activation scales, the int8 weights bit for bit with their
    per-channel scales, axis and zero points (decompressed by coremltools' own constexpr op), biases, conv
    geometry, pooling axes and the front-end's fp32 DFT and mel weights. Scales and biases are fp16 in the body
    (it runs in fp16), so each is the torch value rounded once to fp16, exactly."""
    model = TinySER()
    fn = _mil_program(int8_pkg[0])
    mil = [op for op in fn.operations if op.op_type not in ("const", "cast")]
    first_q = next(i for i, op in enumerate(mil) if op.op_type == "quantize")
    body, front = mil[first_q:], mil[:first_q]
    ref, buffers = _torch_body(model)
    assert [op.op_type for op in body] == [TORCH_TO_MIL[t] for t, _, _ in ref]
    (inp,), (out,) = list(fn.inputs.values()), fn.outputs
    assert (inp.name, tuple(inp.shape), out.name, tuple(out.shape)) == ("audio", SHAPE, "logits", (1, 4))
    assert out.op is body[-1]  # the logits are the last dequantize's output: nothing after the body
    weight_of = {}  # constexpr op -> the torch int8 buffer it holds
    for op, (t, args, kwargs) in zip(body, ref):
        if t in ("quantize_per_tensor", "dequantize_per_tensor"):
            x, scale, zp, qmin, qmax, dtype = args
            assert op.scale.val.dtype == np.float16 and op.scale.val == _fp16(scale), op.name
            assert (op.zero_point is None and zp == 0) or op.zero_point.val == zp, op.name
            if t == "quantize_per_tensor":
                assert (dtype, qmin, qmax) == (torch.int8, -128, 127) and op.output_dtype.val == "int8", op.name
            else:
                assert op.input.op.op_type == "quantize" and op.input.op.scale.val == op.scale.val, op.name
        elif t == "dequantize_per_channel":
            q, s, zp, axis, _, _, dtype = args
            assert op.quantized_data.val.dtype == np.int8 and np.array_equal(op.quantized_data.val, q.numpy())
            assert np.array_equal(op.scale.val, _fp16(s)) and np.array_equal(op.zero_point.val, zp.numpy())
            assert op.axis.val == axis == 0, op.name
            ref_w = torch.ops.quantized_decomposed.dequantize_per_channel(q, s, zp, axis, -127, 127, dtype).numpy()
            got = op.materialized_val_inference().astype(np.float64)  # coremltools decompresses the blob
            # two fp16 roundings (the scale, then q * scale), each <= 2^-11 of the channel's largest weight
            bound = 2 * FP16_REL * np.abs(ref_w).reshape(len(ref_w), -1).max(1)
            assert (np.abs(got - ref_w).reshape(len(ref_w), -1).max(1) <= bound * 1.0001).all(), op.name
            weight_of[op] = next(k for k, v in buffers.items() if v is q)
        elif t in ("conv1d", "linear"):
            x, w, b = args[:3]
            assert op.x.op.op_type == "dequantize", op.name  # int8 activations in
            assert op.weight.op in weight_of, op.name  # an int8 constexpr weight (which one: below)
            assert np.array_equal(op.bias.val, _fp16(b)), op.name
            if t == "conv1d":
                stride, padding = (args[3:4] or [[1]])[0], (args[4:5] or [[0]])[0]
                assert list(op.strides.val) == list(stride) and op.pad_type.val == "custom"
                assert list(op.pad.val) == [p for p in padding for _ in (0, 1)], op.name
                assert list(op.dilations.val) == [1] and op.groups.val == 1, op.name
        elif t == "mean":
            x, dims = args[:2]
            keep = args[2] if len(args) > 2 else False
            assert list(op.axes.val) == list(dims) and bool(op.keep_dims.val) == keep, op.name
    # each weight layer reads its own torch layer's int8 weights, in torch's order
    layers = [op for op in body if op.op_type in ("conv", "linear")]
    assert [weight_of[op.weight.op] for op in layers] == ["b_c1_q", "b_c2_q", "b_fc_q"]
    # the fp32 front-end keeps the torch float weights as they are
    dft = next(op for op in front if op.op_type == "conv")
    assert dft.weight.val.dtype == np.float32 and np.array_equal(dft.weight.val, model.dft.numpy())
    assert list(dft.strides.val) == [160] and dft.pad_type.val == "valid"
    mel = next(op for op in front if op.op_type in ("linear", "matmul") and op.inputs.get("weight") is not None)
    assert mel.weight.val.dtype == np.float32 and np.array_equal(mel.weight.val, model.mel.numpy().T)


def test_classifier_labels_are_in_the_package(tmp_path):
    """With class_labels the package is a Core ML classifier: `label` (string) and `logits` (a dictionary per
    class name), its labels readable from the spec alone; the spec check fails on other labels or a plain model."""
    import coremltools as ct

    from edgeser.export.coreml import classifier_labels
    path = tmp_path / "cls.mlpackage"
    classes = ["neutral", "happy", "sad", "angry"]
    export_coreml(TinySER(), torch.randn(SHAPE), path, class_labels=classes)
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert classifier_labels(spec) == classes
    assert {f.name: f.type.WhichOneof("Type") for f in spec.description.output} == \
        {"label": "stringType", "logits": "dictionaryType"}
    res = _check(path, class_labels=classes)
    assert res["passed"], res["violations"]
    assert res["class_labels"] == classes
    wrong = _check(path, class_labels=classes[::-1])
    assert any(v.startswith("classifier labels") for v in wrong["violations"])


def test_plain_model_fails_a_classifier_check(int8_pkg):
    res = _check(int8_pkg[0], class_labels=["a", "b", "c", "d"])
    assert not res["passed"] and res["class_labels"] is None
    assert any(v.startswith("classifier labels None") for v in res["violations"])
    assert any(v.startswith("classifier outputs") for v in res["violations"])


def test_logits_from_a_classifier_prediction_follow_the_class_order():
    from edgeser.export.coreml import logits_from_prediction
    out = {"label": "sad", "logits": {"sad": 3.0, "neutral": -1.0, "happy": 0.5}}
    got = logits_from_prediction(out, "logits", ["neutral", "happy", "sad"])
    assert got.tolist() == [[-1.0, 0.5, 3.0]]
    plain = np.zeros((1, 3), np.float32)
    assert logits_from_prediction({"logits": plain}, "logits", ["a", "b", "c"]) is plain


def test_float_logits_from_an_int8_head_pass_but_a_float_output_mid_body_fails(tmp_path):
    """The head's int8 x int8 layer may give float logits (the project's graphs do); a body layer whose output
    is not re-quantised before the next layer is W8A16 there and fails. The front-end stays the float ops before
    the last quantize, not the whole model (which would run the body in fp32)."""
    ok = tmp_path / "head.mlpackage"
    export_coreml(TinySER(quant_dft=True, float_logits=True), torch.randn(SHAPE), ok)
    res = _check(ok, frontend_ops_allowed=20)
    assert res["passed"], res["violations"]
    assert res["frontend_float_layers"] == ["conv1d", "matmul"] and "linear" not in res["frontend_ops"]
    _, dtypes = _op_dtypes(ok)
    from coremltools.proto import MIL_pb2
    assert dtypes["conv1d_1_cast_fp16"] == MIL_pb2.DataType.Value("FLOAT16")  # the body still runs in fp16
    bad = tmp_path / "w8a16.mlpackage"
    export_coreml(TinySER(quant_dft=True, float_logits=True, w8a16_c2=True), torch.randn(SHAPE), bad)
    res = _check(bad, frontend_ops_allowed=20)
    assert not res["passed"] and any("W8A16" in v for v in res["violations"]), res["violations"]


def test_a_relu_between_an_int8_conv_and_its_quantize_is_w8a8(tmp_path):
    """qat.relu_quant unsigned: dequantize -> conv -> relu -> quantize, the pattern Core ML fuses; the ReLU is
    neither a float op nor a W8A16 layer. (A tanh there is not fused: the W8A16 test above.)"""
    path = tmp_path / "fused.mlpackage"
    export_coreml(TinySER(quant_dft=True, float_logits=True, relu_fused=True), torch.randn(SHAPE), path)
    res = _check(path, frontend_ops_allowed=20)
    assert res["passed"], res["violations"]
    assert res["int8_weight_layers"] == 3 and "relu" not in res["float_compute_ops"]
    plain = tmp_path / "plain.mlpackage"
    export_coreml(TinySER(quant_dft=True, float_logits=True), torch.randn(SHAPE), plain)
    assert res["ops"]["quantize"] == _check(plain, frontend_ops_allowed=20)["ops"]["quantize"] - 2
