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
    ref = TinySER()(x).detach().numpy()
    out = ct.models.MLModel(str(int8_pkg[0])).predict({"audio": x.numpy()})["logits"]
    # one int8 step of the logits' scale (0.05) covers fp16 rounding
    assert np.abs(out - ref).max() <= 0.051


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
