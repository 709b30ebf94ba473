"""The CPU check that says when onnxruntime's INT8 kernels saturate (x86 without VNNI), and only then."""
from __future__ import annotations

import pytest

from edgeser import cpu_quirks


@pytest.mark.parametrize("machine,flags,saturates", [
    ("x86_64", {"avx2", "fma"}, True),  # AVX2 only: vpmaddubsw sums u8 x s8 pairs in 16 bits
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, True),  # AVX-512 without VNNI: the same
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
    ("x86_64", {"avx2", "avx_vnni"}, False),
    ("aarch64", {"asimd"}, False),
    ("x86_64", set(), False),  # no /proc/cpuinfo: cannot tell, says nothing
])
def test_saturation_is_said_for_x86_without_vnni(monkeypatch, machine, flags, saturates):
    monkeypatch.setattr(cpu_quirks.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu_quirks, "cpu_flags", lambda: frozenset(flags))
    why = cpu_quirks.ort_int8_saturation()
    assert (why is not None) == saturates
    if saturates:
        assert "VNNI" in why and "saturation" in why
