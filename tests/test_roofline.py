"""The calibrated INT8 roofline: a quick peak measurement and the fraction arithmetic."""
from __future__ import annotations

import math

import pytest

from edgeser.roofline import INT8_OPS, achieved_fraction, int8_peak_macs_per_s


def test_peak_is_positive_and_runs_int8_kernels():
    r = int8_peak_macs_per_s(threads=1, seconds=0.05)
    assert r["peak_macs_per_s"] > 0 and math.isfinite(r["peak_macs_per_s"])
    assert r["unverified"] == {}, r["unverified"]
    assert set(r["kernels"]) == set(INT8_OPS)
    assert r["peak_macs_per_s"] == max(r["kernels"].values())
    for name, ops in r["optimized_ops"].items():
        assert INT8_OPS[name] & set(ops), f"{name}: no INT8 op in the optimised graph {ops}"
        assert not {"Conv", "Gemm", "MatMul", "FusedConv"} & set(ops), f"{name}: float op left in {ops}"
    assert "QLinearConv" in r["optimized_ops"]["qlinearconv"] and "QGemm" in r["optimized_ops"]["qgemm"]
    assert all(0 < s <= 1 for s in r["int8_op_share"].values())
    assert all(n >= 5 for n in r["runs"].values())
    assert "calibrated" in r["method"]


def test_achieved_fraction_arithmetic():
    assert achieved_fraction(1e9, 0.01, 200e9) == pytest.approx(0.5)
    assert achieved_fraction(27e6, 1e-3, 27e9) == pytest.approx(1.0)
    assert achieved_fraction(0, 1.0, 1.0) == 0.0
    with pytest.raises(ValueError):
        achieved_fraction(1e6, 0.0, 1e9)
    with pytest.raises(ValueError):
        achieved_fraction(1e6, 1.0, 0.0)
