"""The executorch-* formats: a tiny QAT student exported through the registry. XNNPACK runs on ExecuTorch's runtime
and is compared with the PyTorch QAT model and onnxruntime's INT8 graph; Core ML lowers whole and is skipped with
the reason (it runs on Apple OSes); QNN is skipped without a local SDK, and never downloads one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeser.export.onnx_export import export_onnx
from edgeser.formats import REGISTRY, available, load_runner, resolve
from edgeser.runtimes import onnx_runner
from tests.quant_steps import MIN_RANGE_STEPS, logit_step, tiny_export_job

ok, why = available("executorch-xnnpack")
pytestmark = pytest.mark.skipif(not ok, reason=f"executorch runtime absent: {why}")
CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return tiny_export_job(tmp_path_factory.mktemp("et"))[1]


def export(job, name):
    f = REGISTRY[name]
    return resolve(f.export)(job, job.path(name), *[job.path(n) for n in f.needs])


@pytest.fixture(scope="module")
def xnnpack(job):
    return export(job, "executorch-xnnpack")


def test_xnnpack_is_one_delegate_with_the_metadata(job, xnnpack):
    from edgeser.export.executorch import read_metadata

    et = xnnpack["checks"]["executorch"]
    assert xnnpack.get("status", "exported") == "exported", xnnpack
    assert et["whole_graph"] and et["delegate_calls"] == 1 and et["ops_outside_delegate"] == {}
    assert et["delegated_nodes"] > 40  # every conv, Q/DQ, the front-end's float ops
    assert json.loads(read_metadata(job.path("executorch-xnnpack"))["classes"]) == CLASSES
    from executorch.runtime import Runtime

    # memory is planned for the longest input the artifact promises (the edge passes narrowed it once)
    planned = Runtime.get().load_program(job.path("executorch-xnnpack")).metadata("forward").input_tensor_meta(0)
    assert list(planned.sizes()) == [1, job.samples_range()[1]], planned


def test_xnnpack_agrees_with_the_qat_model_at_any_length_and_level(job, xnnpack):
    x = (torch.randn(6, 24000, generator=torch.Generator().manual_seed(1)) * 0.1).numpy()
    x[::2] *= 0.01  # 40 dB quieter: the graph levels each clip before the INT8 DFT
    r = load_runner("executorch-xnnpack", job.path("executorch-xnnpack"))
    with torch.no_grad():
        ref = job.qexport(torch.from_numpy(x)).numpy()
    export_onnx(job.qexport, 16000, job.path("onnx-int8"), meta=job.meta)
    ort = onnx_runner(job.path("onnx-int8"))(x)
    step = logit_step(job.qexport)
    assert np.ptp(ref) > MIN_RANGE_STEPS * step
    out = r(x)
    # The same Q/DQ scales, the same int8 grids: measured 1.5e-8 against the QAT model (float rounding only), so
    # one logit step is all the slack. onnxruntime's int8 kernels round differently (5.2 steps from the QAT model
    # here, at 1.5 s): ExecuTorch may be no further from it than the QAT model is, plus a step.
    assert np.abs(out - ref).max() <= 1 * step
    assert np.abs(out - ort).max() <= np.abs(ref - ort).max() + step
    assert (out.argmax(1) == ref.argmax(1)).all()
    one_frame = r(x[:2, :801])  # the shortest input, and a long one: the program takes any length
    assert one_frame.shape == (2, 4) and r(np.tile(x[:1], (1, 20))).shape == (1, 4)
    with torch.no_grad():
        assert np.abs(one_frame - job.qexport(torch.from_numpy(x[:2, :801])).numpy()).max() <= step
    odd = x[:2, :16123]  # not whole hops: the runner zero-pads, which must change no logit
    with torch.no_grad():
        assert np.abs(r(odd) - job.qexport(torch.from_numpy(odd)).numpy()).max() <= step
    with pytest.raises(ValueError, match="shorter than one analysis frame"):
        r(x[:1, :800])


def test_xnnpack_threadpool_is_sized_once(job, xnnpack):
    """Resetting ExecuTorch's threadpool after a method loaded crashed the process (7 of 8 runs): the runner
    sizes it before the first load and says so, instead of resetting, when asked for another count later."""
    r = load_runner("executorch-xnnpack", job.path("executorch-xnnpack"))
    x = (np.random.default_rng(0).standard_normal((1, 16000)) * 0.1).astype(np.float32)
    r(x)
    from edgeser.export.executorch import _POOL

    r.set_threads(_POOL["threads"] + 1)
    assert r.threads_note and "fixed" in r.threads_note
    assert r(x).shape == (1, 4)


def test_coreml_lowers_whole_for_ios17_and_is_skipped_with_why(job):
    rec = export(job, "executorch-coreml")
    et = rec["checks"]["executorch"]
    assert et["backend"] == "CoreMLBackend" and et["minimum_deployment_target"] == "iOS17"
    assert et["passed"] and et["whole_graph"], et
    assert job.path("executorch-coreml").stat().st_size > 10_000
    ran, reason = available("executorch-coreml")
    if not ran:
        assert rec["status"] == "skipped" and "Core ML" in rec["reason"]


def test_qnn_without_an_sdk_is_skipped_and_downloads_nothing(job, monkeypatch, tmp_path):
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    rec = export(job, "executorch-qnn")
    assert rec["status"] == "skipped" and "QNN_SDK_ROOT" in rec["reason"]
    assert not job.path("executorch-qnn").exists()
    monkeypatch.setenv("QNN_SDK_ROOT", str(tmp_path))  # set, but no SDK there
    rec = export(job, "executorch-qnn")
    assert rec["status"] == "skipped" and "not a QNN SDK" in rec["reason"]
