"""Every gate edgeser evaluates, fed hand-built records: each one fails just past its threshold and passes at it.

The tiny end-to-end run (tests/conftest.py TINY) switches the accuracy gates off (max_ua_drop_pt 100, min_ua 0)
and its models score near chance, so its "all gates passed" shows no gate can fail. Here each gate function
gets made-up metric records instead; no model runs. The gates and where they are made:

    edgeser/verification.py   evaluate_gates     artifact ok, agreement, gated artifact, min_ua, UA drop vs
                                                 teacher, latency p95, size bytes
    edgeser/verification.py   robustness_gates   robust agreement (edgeser/robustness.py robust_gate)
    edgeser/run_manifest.py   check_hashes       sha256 of every artifact file against manifest.json
    edgeser/run_manifest.py   check_recipe       recipe.json against manifest.json's recipe_sha256
    edgeser/reverify.py       verify_run         "passed": every check above (tests/test_verify_cli.py)
"""
from __future__ import annotations

import json

import pytest

from edgeser.recipe import Verify
from edgeser.verification import evaluate_gates, robustness_gates

TEACHER_UA, N_CLASSES = 0.80, 4


def art(name="onnx-int8", **over) -> dict:
    """A verified deployed artifact that clears every default gate by a wide margin."""
    a = {"name": name, "status": "verified", "role": "deploy", "reason": None, "agreement": 1.0, "ua": 0.78,
         "ua_ci": [0.70, 0.85], "ua_drop_pt": 2.0, "ua_drop_ci_pt": [0.5, 3.5], "latency_ms": {"p50": 1.0, "p95": 2.0},
         "size_bytes": 1000}
    return a | over


def gates(cfg: Verify, *arts: dict, teacher_ua: float = TEACHER_UA) -> list[dict]:
    return evaluate_gates(cfg, list(arts), teacher_ua, N_CLASSES)


def gate(cfg: Verify, prefix: str, *arts: dict, **kw) -> dict:
    found = [g for g in gates(cfg, *arts, **kw) if g["name"].startswith(prefix)]
    assert len(found) == 1, (prefix, gates(cfg, *arts, **kw))
    return found[0]


def test_a_good_artifact_passes_every_gate_with_every_gate_on():
    cfg = Verify(max_latency_ms=5.0, max_size_bytes=2000)
    gs = gates(cfg, art())
    assert {g["name"] for g in gs} == {"agreement [onnx-int8]", "min_ua, UA 95% CI low [onnx-int8]",
                                       "UA drop vs teacher, pt [onnx-int8]", "latency p95 ms [onnx-int8]",
                                       "size bytes [onnx-int8]"}
    assert all(g["passed"] for g in gs)


def test_agreement_gate_boundary():
    cfg = Verify(min_agreement=0.95)
    assert gate(cfg, "agreement", art(agreement=0.95))["passed"]  # at the limit: passes
    g = gate(cfg, "agreement", art(agreement=0.9499))
    assert not g["passed"] and g["value"] == 0.9499 and g["limit"] == 0.95
    # every verified deployed artifact is gated, not only gate_artifacts
    g = gate(cfg, "agreement [onnx-fp32]", art(), art("onnx-fp32", agreement=0.5))
    assert not g["passed"]
    # a baseline (onnx-int8-ptq) is measured, not gated
    assert not [g for g in gates(cfg, art(), art("onnx-int8-ptq", role="baseline", agreement=0.1))
                if "onnx-int8-ptq" in g["name"]]


def test_artifact_ok_gate_fails_on_a_failed_artifact():
    g = gate(Verify(), "artifact ok", art(), art("coreml", status="failed", reason="CoreML spec check failed: x"))
    assert not g["passed"] and g["name"] == "artifact ok [coreml]" and "spec check failed" in g["value"]
    # skipped (no runtime on this machine) is not a failure, and gets no agreement gate either
    gs = gates(Verify(), art(), art("tensorrt", status="skipped", reason="cannot import tensorrt"))
    assert not [g for g in gs if "tensorrt" in g["name"]] and all(g["passed"] for g in gs)


@pytest.mark.parametrize("status,rec", [("not exported", None), ("skipped", "skipped"), ("failed", "failed")])
def test_gated_artifact_gate_fails_when_the_gated_artifact_did_not_verify(status, rec):
    cfg = Verify(gate_artifacts=["onnx-int8", "qnn-htp"])
    arts = [art()] + ([] if rec is None else [art("qnn-htp", status=rec, reason="no onnxruntime-qnn")])
    g = gate(cfg, "gated artifact", *arts)
    assert not g["passed"] and g["name"] == "gated artifact [qnn-htp]" and g["value"].startswith(status)
    # and none of the accuracy, latency or size gates is made for it (nothing to measure)
    assert not [g for g in gates(cfg, *arts) if g["name"].startswith(("min_ua", "UA drop")) and "qnn-htp" in g["name"]]
    # verified: no gated-artifact record, the accuracy gates instead
    assert not [g for g in gates(cfg, art(), art("qnn-htp")) if g["name"].startswith("gated artifact")]


def test_min_ua_gate_boundary_on_the_interval_low_end():
    cfg = Verify(min_ua=0.6)
    assert gate(cfg, "min_ua", art(ua=0.9, ua_ci=[0.6, 0.95]))["passed"]
    g = gate(cfg, "min_ua", art(ua=0.9, ua_ci=[0.5999, 0.95]))  # a high UA whose interval dips below: fails
    assert not g["passed"] and g["value"] == 0.5999 and g["limit"] == 0.6 and g["ci"] == [0.5999, 0.95]
    # without an interval (older records) the UA itself is compared
    assert gate(cfg, "min_ua", art(ua=0.6, ua_ci=None))["passed"]
    assert not gate(cfg, "min_ua", art(ua=0.59, ua_ci=None))["passed"]
    # the default: chance + 0.10 = 0.35 for 4 classes
    assert gate(Verify(), "min_ua", art(ua_ci=[0.35, 0.5]))["passed"]
    g = gate(Verify(), "min_ua", art(ua_ci=[0.3499, 0.5]))
    assert not g["passed"] and g["limit"] == 0.35


def test_ua_drop_gate_boundary():
    cfg = Verify(max_ua_drop_pt=3.0)
    assert gate(cfg, "UA drop", art(ua_drop_pt=3.0))["passed"]
    g = gate(cfg, "UA drop", art(ua_drop_pt=3.01, ua_drop_ci_pt=[1.0, 5.0]))
    assert not g["passed"] and g["value"] == 3.01 and g["limit"] == 3.0 and g["ci"] == [1.0, 5.0]
    # the value is rounded to 0.01 pt before the comparison: 3.004 reads as 3.0 and passes
    assert gate(cfg, "UA drop", art(ua_drop_pt=3.004))["passed"]
    # no paired drop recorded: teacher UA - UA, in points
    assert gate(cfg, "UA drop", art(ua=0.77, ua_drop_pt=None), teacher_ua=0.80)["passed"]  # 3.0 pt
    g = gate(cfg, "UA drop", art(ua=0.76, ua_drop_pt=None), teacher_ua=0.80)
    assert not g["passed"] and g["value"] == 4.0
    # null switches the gate off
    assert not [g for g in gates(Verify(max_ua_drop_pt=None), art(ua_drop_pt=90.0)) if g["name"].startswith("UA drop")]


def test_latency_gate_boundary():
    cfg = Verify(max_latency_ms=2.0)
    assert gate(cfg, "latency", art(latency_ms={"p50": 1.0, "p95": 2.0}))["passed"]
    assert gate(cfg, "latency", art(latency_ms={"p50": 1.0, "p95": 2.0004}))["passed"]  # rounded to 0.001 ms
    g = gate(cfg, "latency", art(latency_ms={"p50": 1.0, "p95": 2.001}))
    assert not g["passed"] and g["value"] == 2.001 and g["limit"] == 2.0
    assert not [g for g in gates(Verify(), art(latency_ms={"p95": 1e6})) if g["name"].startswith("latency")]  # off


def test_size_gate_boundary():
    cfg = Verify(max_size_bytes=1000)
    assert gate(cfg, "size", art(size_bytes=1000))["passed"]
    g = gate(cfg, "size", art(size_bytes=1001))
    assert not g["passed"] and g["value"] == 1001 and g["limit"] == 1000
    assert not [g for g in gates(Verify(), art(size_bytes=10**12)) if g["name"].startswith("size")]  # off


def test_size_and_latency_apply_to_gate_artifacts_only():
    cfg = Verify(max_latency_ms=1.0, max_size_bytes=10, gate_artifacts=["onnx-int8"])
    gs = gates(cfg, art(), art("onnx-fp32", size_bytes=10**9, latency_ms={"p95": 1e3}))
    failed = {g["name"] for g in gs if not g["passed"]}
    assert failed == {"latency p95 ms [onnx-int8]", "size bytes [onnx-int8]"}  # art() is 2 ms, 1000 bytes


def _robustness(gain_rows, length_rows):
    """A robustness record as Suite.measure writes it: gain rows (agree_ref, agree_self), length rows."""
    rows = [{"case": f"gain {g:+d} dB", "kind": "gain", "gated": True, "agree_ref": r, "agree_self": s}
            for g, (r, s) in gain_rows.items()]
    rows += [{"case": f"length {f:g}x", "kind": "length", "gated": gated, "agree_ref": r, "agree_self": None}
             for f, (r, gated) in length_rows.items()]
    rows.append({"case": "white noise SNR 5 dB", "kind": "noise", "gated": False, "agree_ref": 0.1, "agree_self": None})
    gains = [min(r["agree_ref"], r["agree_self"]) for r in rows if r["kind"] == "gain"]
    lengths = [r["agree_ref"] for r in rows if r["kind"] == "length" and r["gated"]]
    return {"cases": rows, "min_gain_agreement": min(gains), "min_length_agreement": min(lengths or [1.0])}


def test_robust_agreement_gate_boundary():
    cfg = Verify(min_robust_agreement=0.98)
    ok = _robustness({0: (1.0, 1.0), -40: (0.98, 1.0)}, {0.5: (0.99, True)})
    g = robustness_gates(cfg, [art(robustness=ok)])
    assert len(g) == 1 and g[0]["name"] == "robust agreement [onnx-int8]" and g[0]["passed"] and g[0]["value"] == 0.98
    # the worst gain case, by its agreement with the artifact's own 0 dB decisions
    bad = _robustness({0: (1.0, 1.0), -40: (1.0, 0.979)}, {0.5: (1.0, True)})
    g = robustness_gates(cfg, [art(robustness=bad)])[0]
    assert not g["passed"] and g["value"] == 0.979 and g["worst_case"] == "gain -40 dB"
    # the worst gated length case, against the FP32 student
    bad = _robustness({0: (1.0, 1.0)}, {0.5: (0.97, True), 3.0: (1.0, True)})
    g = robustness_gates(cfg, [art(robustness=bad)])[0]
    assert not g["passed"] and g["worst_case"] == "length 0.5x"
    # a length row that is not gated (a fixed-window runtime) and the noise rows do not count
    ungated = _robustness({0: (1.0, 1.0)}, {0.5: (0.1, False)})
    assert robustness_gates(cfg, [art(robustness=ungated)])[0]["passed"]
    # an artifact that did not verify, or ran no suite (a baseline), gets no robustness gate
    assert robustness_gates(cfg, [art(status="failed", robustness=bad), art("onnx-int8-ptq")]) == []


def _run_with_file(tmp_path, data: bytes = b"model bytes"):
    from edgeser.fileio import sha256

    (tmp_path / "artifacts").mkdir()
    f = tmp_path / "artifacts/m.onnx"
    f.write_bytes(data)
    return {"artifacts": {"onnx-int8": {"path": "artifacts/m.onnx", "sha256": sha256(f), "status": "exported"}}}


def test_sha256_gate(tmp_path):
    from edgeser.run_manifest import check_hashes

    manifest = _run_with_file(tmp_path)
    assert check_hashes(tmp_path, manifest) == [{"name": "sha256 [onnx-int8]", "passed": True,
                                                 "value": "artifacts/m.onnx"}]
    (tmp_path / "artifacts/m.onnx").write_bytes(b"model byteS")  # one byte changed
    [g] = check_hashes(tmp_path, manifest)
    assert not g["passed"] and "artifacts/m.onnx: sha256" in g["value"] and "!= recorded" in g["value"]
    (tmp_path / "artifacts/m.onnx").unlink()
    [g] = check_hashes(tmp_path, manifest)
    assert not g["passed"] and g["value"] == "missing file artifacts/m.onnx"
    assert check_hashes(tmp_path, manifest, only="onnx-fp32") == []  # --artifact: only that one


def test_recipe_hash_gate():
    from edgeser.run_manifest import check_recipe, recipe_sha256

    recipe = {"name": "r", "seed": 0, "verify": {"max_ua_drop_pt": 3.0, "min_agreement": 0.95}}
    manifest = {"recipe_sha256": recipe_sha256(recipe)}
    g = check_recipe(manifest, recipe)
    assert g == {"name": "recipe sha256 [recipe.json]", "passed": True, "value": "recipe.json"}
    # the same recipe re-indented, keys reordered: the same content, passes
    reordered = json.loads(json.dumps({"verify": {"min_agreement": 0.95, "max_ua_drop_pt": 3.0}, "seed": 0,
                                       "name": "r"}, indent=4))
    assert check_recipe(manifest, reordered)["passed"]
    # a gate removed, or loosened by the smallest step: fails, naming recipe.json
    for edited in ({"name": "r", "seed": 0, "verify": {"min_agreement": 0.95}},
                   {"name": "r", "seed": 0, "verify": {"max_ua_drop_pt": 3.0000001, "min_agreement": 0.95}},
                   {"name": "r", "seed": 0, "verify": {"max_ua_drop_pt": None, "min_agreement": 0.95}}):
        g = check_recipe(manifest, edited)
        assert not g["passed"] and g["value"].startswith("recipe.json: sha256") and "!= recorded" in g["value"]
    # a manifest without the hash cannot vouch for the recipe
    g = check_recipe({}, recipe)
    assert not g["passed"] and "records no recipe_sha256" in g["value"]


def test_package_version_warnings(monkeypatch):
    from edgeser import run_manifest

    monkeypatch.setattr(run_manifest, "_version", {"numpy": "2.0.0", "torch": "2.5.0", "coremltools": None}.get)
    assert run_manifest.package_warnings({"packages": {"numpy": "2.0.0", "torch": "2.5.0"}}) == []
    w = run_manifest.package_warnings({"packages": {"numpy": "1.26.4", "torch": "2.5.0", "coremltools": "8.0"}})
    assert w == ["package coremltools: the run recorded 8.0, this machine has not installed",
                 "package numpy: the run recorded 1.26.4, this machine has 2.0.0"]
    assert run_manifest.package_warnings({}) == []  # nothing recorded, nothing to compare


def test_report_passes_only_when_every_gate_passes():
    """build_report's "passed" (compress's exit code) is every gate's verdict, one failure enough."""
    from types import SimpleNamespace

    from edgeser.recipe import validate
    from edgeser.report import build_report

    def report(gs):
        t = {"test": {"ua": 0.8, "wa": 0.8, "macro_f1": 0.8}, "params": 1, "macs": 1, "size_bytes": 1}
        results = {"teacher": t, **{s: {"test": {"ua": 0.8}} for s in ("distill", "prune", "qat")},
                   "data": {"speakers": {"test": ["s1"]}}, "verify": {"artifacts": [], "gates": gs}}
        ctx = SimpleNamespace(results=results, recipe=validate({"data": {"synth": {}}}),
                              target=SimpleNamespace(model_dump=lambda: {"name": "cpu"}))
        return build_report(ctx)

    g = gates(Verify(max_size_bytes=1000), art(size_bytes=1000))
    assert report(g)["passed"]
    g = gates(Verify(max_size_bytes=1000), art(size_bytes=1001))
    assert [x["name"] for x in g if not x["passed"]] == ["size bytes [onnx-int8]"] and not report(g)["passed"]


def test_agreement_matrix_pairs_and_cross_agreement_gate():
    """agreement_matrix pairs every verified artifact; only pairs of one reference model, baselines out, are
    gated, and the gate fails just below verify.min_cross_agreement."""
    import numpy as np

    from edgeser.verification import agreement_matrix, cross_agreement_gates

    eye = np.eye(4)[[0, 1, 2, 3] * 25]  # 100 clips, one-hot logits
    other = eye.copy()
    other[:3] = np.eye(4)[[1, 2, 3]]  # 3 of 100 decisions differ: 97 %
    arts = [{"name": "onnx-int8", "status": "verified", "reference": "qat", "role": "deploy"},
            {"name": "openvino", "status": "verified", "reference": "qat", "role": "deploy"},
            {"name": "onnx-fp32", "status": "verified", "reference": "prune", "role": "deploy"},
            {"name": "onnx-int8-ptq", "status": "verified", "reference": "prune", "role": "baseline"},
            {"name": "coreml", "status": "skipped", "reference": "qat", "role": "deploy"}]
    logits = {"onnx-int8": eye, "openvino": other, "onnx-fp32": eye, "onnx-int8-ptq": eye}
    m = agreement_matrix(arts, logits)
    assert [(p["a"], p["b"]) for p in m] == [("onnx-int8", "openvino"), ("onnx-int8", "onnx-fp32"),
                                             ("onnx-int8", "onnx-int8-ptq"), ("openvino", "onnx-fp32"),
                                             ("openvino", "onnx-int8-ptq"), ("onnx-fp32", "onnx-int8-ptq")]
    pair = m[0]
    assert pair["agreement"] == 0.97 and pair["max_abs_logit_diff"] == 1.0 and pair["should_match"]
    assert [p["should_match"] for p in m] == [True, False, False, False, False, False]
    assert cross_agreement_gates(Verify(min_cross_agreement=0.97), m)[0]["passed"]
    g = cross_agreement_gates(Verify(min_cross_agreement=0.9701), m)
    assert len(g) == 1 and not g[0]["passed"] and g[0]["name"] == "cross agreement [onnx-int8 ~ openvino]"
