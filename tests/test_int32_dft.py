"""The INT8 DFT with int32 sums and no output quantiser (qat.dft_output int32, QuantFrontend.int32_output):
onnxruntime runs it as one u8 x s8 MatMulInteger (edgeser/export/int32_dft.py) whose values are the QAT model's,
it is closer to the FP32 front-end than either int8-output layout, `auto` picks it only when every export
format takes it, and a saved model keeps it."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeser.export.onnx_export import export_onnx
from edgeser.models.student import Student
from edgeser.quant.calibrate import calibrate
from edgeser.quant.qstudent import QuantStudent
from tests.conftest import TINY, recipe_with
from tests.test_two_range_dft import _speechlike


def _qmodel(mode: str) -> QuantStudent:
    """mode: "int32", "one" (one int8 output range) or "two" (the two-range int8 output)."""
    torch.manual_seed(0)
    q = QuantStudent(Student(4, [16, 16, 16, 16]).eval(), relu_unsigned=True)
    if mode == "int32":
        q.frontend.int32_output()
    else:
        q.frontend.equalise(_speechlike(16, 1), 64.0)
        if mode == "two":
            q.frontend.two_range(4.0)
    calibrate(q, _speechlike(16, 1), 2, 8)
    return q.eval()


def _optimised_ops(path, tmp_path) -> collections.Counter:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)


def test_the_int32_dft_is_one_integer_gemm_in_onnxruntime_with_the_qat_models_values(tmp_path):
    """The front-end's log-mel frames from onnxruntime equal the QAT model's to float32 rounding: MatMulInteger's
    int32 sums are the int8 products exactly, and the scale is the input's times each row's weight scale. A
    wrong zero point (0 instead of 128 on the uint8 input) or a dropped weight scale moves them by whole nats."""
    from edgeser.export.stream_export import FRONTEND, STEP, export_stream

    q = _qmodel("int32")
    e = q.to_export()
    x = _speechlike(3, 3)[:, :12345]  # not whole hops: the zeros the blocks are padded with
    with torch.no_grad():
        ref = e.frontend.frames(x).numpy()
    export_stream(e, ["a", "b", "c", "d"], 16000, tmp_path / "stream")
    for name in (FRONTEND, STEP):
        ops = _optimised_ops(tmp_path / "stream" / name, tmp_path)
        # the DFT: one integer GEMM; no float conv but the mel matmul (FusedConv); in the step graph the
        # 4 body convs are QLinearConv
        assert ops["MatMulInteger"] == 1 and ops["Conv"] == 0 and ops["FusedConv"] <= 1, (name, ops)
    got = ort.InferenceSession(str(tmp_path / "stream" / FRONTEND)).run(None, {"audio": x.numpy()})[0]
    assert got.shape == ref.shape
    # float32 rounding of sums of ~800 products, then the log: a few 1e-6 of the log-mel's range
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()
    path = tmp_path / "q.onnx"
    export_onnx(e, 16000, path)
    assert _optimised_ops(path, tmp_path)["MatMulInteger"] == 1
    out = ort.InferenceSession(str(path)).run(None, {"audio": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - q(x).numpy()).max() < 1e-3


@pytest.mark.parametrize("bug", ["zero point", "weight scale"])
def test_the_int32_dft_check_fails_on_a_wrong_rewrite(tmp_path, bug, monkeypatch):
    """The comparison above catches a broken rewrite (a hand-made bug, each way)."""
    import edgeser.export.int32_dft as m
    from onnx import helper, numpy_helper

    real = m.rewrite

    def broken(model):
        n = real(model)
        for t in model.graph.initializer:
            if bug == "zero point" and t.name.endswith("_zx"):
                t.CopyFrom(helper.make_tensor(t.name, onnx.TensorProto.UINT8, [], [0]))
            if bug == "weight scale" and t.name.endswith("_scale"):
                a = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array((a * 0 + a.mean()).astype(np.float32), t.name))
        return n

    monkeypatch.setattr(m, "rewrite", broken)
    q = _qmodel("int32")
    e = q.to_export()
    x = _speechlike(2, 3)
    from edgeser.export.stream_export import StreamFrontend

    with torch.no_grad():
        ref = StreamFrontend(e)(x).numpy()
    fpath = tmp_path / "fe.onnx"
    export_onnx(StreamFrontend(e), 16000, fpath)
    got = ort.InferenceSession(str(fpath)).run(None, {"audio": x.numpy()})[0]
    assert np.abs(got - ref).max() > 1e-2


def test_the_int32_dft_is_closer_to_fp32_than_an_int8_output():
    """On clips whose blocks differ in loudness by up to 40 dB: the front-end's normalised log-mel against the FP32
    student's. Without the output step the only rounding left is the input's, so the error is smaller than with
    one int8 output range, and than with two."""
    fp32 = Student(4, [16, 16, 16, 16]).eval().frontend  # the log-mel has no random weights
    x = _speechlike(8, 7)
    err = {}
    with torch.no_grad():
        want = fp32(x)
        for mode in ("int32", "one", "two"):
            got = _qmodel(mode).frontend(x)
            err[mode] = float((got - want).pow(2).mean())
    assert err["int32"] < err["two"] < err["one"], err
    assert err["int32"] < 0.75 * err["two"], err  # measured 0.53: the input step is most of what is left


def test_auto_picks_int32_only_when_every_format_takes_it():
    from edgeser.recipe import validate
    from edgeser.stages.common import qat_layout

    ort_only = validate(recipe_with(("export.formats", ["onnx-int8", "onnx-int8-stream", "torchscript", "pt2"])))
    assert qat_layout(ort_only) == {"relu_unsigned": True, "int32_dft": True}
    with_trt = validate(recipe_with(("export.formats", ["onnx-int8", "tensorrt"])))
    assert qat_layout(with_trt) == {"relu_unsigned": False, "int32_dft": False}
    coreml = validate(recipe_with(("export.formats", ["onnx-int8", "coreml"])))  # W8A16 fails its spec check
    assert qat_layout(coreml)["int32_dft"] is False
    forced = validate(recipe_with(("export.formats", ["onnx-int8", "coreml"]), ("qat.dft_output", "int8")))
    assert qat_layout(forced)["int32_dft"] is False
    with pytest.raises(ValueError, match="qat.dft_output: int32 .* tensorrt"):
        validate(recipe_with(("export.formats", ["onnx-int8", "tensorrt"]), ("qat.dft_output", "int32")))


def test_the_qat_key_follows_the_formats_through_auto():
    """Changing export.formats so that `auto` resolves otherwise reruns QAT on --resume (its key changes)."""
    from edgeser.pipeline import key_sections
    from edgeser.recipe import validate
    from edgeser.stages import qat
    from edgeser.targets import load_target

    keys = []
    for formats in (["onnx-int8"], ["onnx-int8", "onnx-fp32"], ["onnx-int8", "tensorrt"]):
        raw = recipe_with(("export.formats", formats))
        r = validate(raw)
        keys.append(key_sections(qat.STAGE, raw, load_target(r.target), r))
    assert keys[0] == keys[1] != keys[2]
    assert TINY.get("export") is None  # the tiny recipe's defaults include tensorrt: its runs keep the int8 DFT


def test_a_saved_int32_model_loads_as_int32(tmp_path):
    from edgeser.models.io import save_model
    from edgeser.models.student import student_config
    from edgeser.quant.calibrate import load_qat

    q = _qmodel("int32")
    s = Student(4, [16, 16, 16, 16])
    save_model(tmp_path / "model.pt", q, student_config(s.body) | {"frontend": None})
    back, _ = load_qat(tmp_path / "model.pt")
    x = _speechlike(2, 4)
    with torch.no_grad():
        assert back.frontend.int32 and torch.equal(back(x), q(x))
    with pytest.raises(ValueError, match="int32"):
        back.frontend.two_range(4.0)
