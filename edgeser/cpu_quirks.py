"""What this machine's CPU does to INT8 artifacts, said where a result depends on it.

onnxruntime runs QDQ INT8 convolutions and GEMMs as u8 x s8 products. On x86-64 CPUs without VNNI (AVX2, or
AVX-512 without VNNI) its kernels sum pairs of them in 16 bits with saturation (vpmaddubsw), which onnxruntime's
own quantisation docs warn about ("U8S8 can have saturation issue", reduce_range or U8U8 as the remedies). A
graph with full-range int8 weights, as edgeser's QAT scheme has, then computes other numbers than its QDQ
definition. Measured on an AMD EPYC with AVX2 only (the demo run, 400 held-out clips): onnx-int8 agreed with the
QAT model on 90.25 % of clips, max |dlogit| 4.05, while the same graph with onnxruntime's optimisations off (the
QDQ ops run in float) was within 1e-6 of it, and ExecuTorch/LiteRT/OpenVINO on the same CPU agreed on 99-100 %.
Since edgeser 0.2 the DFT's input is levelled per frame (per block of one hop since issue 17), so its int8
codes span the full range and more pairs saturate: the same demo run gave 79.75 % (per frame; torchscript
and pt2 on this CPU: 100 %, robust 98.75 %).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def ort_int8_saturation() -> str | None:
    """Why onnxruntime's INT8 kernels may saturate on this CPU (None where they do not, or it cannot tell)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = cpu_flags()
    if not flags or any(f in flags for f in VNNI_FLAGS):
        return None
    return ("this x86 CPU has no VNNI: onnxruntime's u8 x s8 INT8 kernels sum pairs in 16 bits with saturation "
            "here, so INT8 ONNX artifacts with full-range weights may disagree with their QDQ definition "
            "(edgeser/cpu_quirks.py)")
