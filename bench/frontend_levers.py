"""Front-end levers (issue 17): what each costs in MACs and in onnxruntime time, side by side in one run.

    .venv/bin/python bench/frontend_levers.py [--runs 300] [--samples 48000] [--lever NAME=JSON ...]

Each lever is a student front-end (the recipe's `student` keys n_freqs, fmax_hz, frame_ms, hop_ms, n_mels) and
the INT8 DFT's fine range (`qat.dft_fine_gain`, "gain"; 1 = one range), or its int32 output
(`qat.dft_output: int32`, "int32": true). For each, a seeded student of the
recipe's default size ("s", 4 classes) is built, quantised the way the QAT stage does for a recipe without
TensorRT (unsigned post-ReLU quantisers, the two-range DFT when gain > 1), calibrated on noise, and exported to
FP32 and INT8 ONNX through the artifacts' own exporter. Weights are random: latency and MACs depend on the
shapes and ops only, never on trained values. Accuracy is not measured here: bench/generalization.py measures
it with `--set student.KEY=VALUE` on the development corpora.

Timing: every model (the levers' FP32 and INT8 students and the FP32 SoundNet-8 teacher) gets an onnxruntime CPU
session at 1 thread (bench/compression.py's `session`), and they are called in turn on one fixed 3 s clip,
the order rotating round to round (`interleaved_latency`), so load from other work hits all alike. Printed per
lever: DFT MACs (the front-end's conv) and body MACs, INT8 and FP32 p50 / p95, INT8 vs FP32, and teacher /
INT8. The last line is one JSON object: per lever its figures, and the teacher's p50.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compression import int8_layer_macs, interleaved_latency  # noqa: E402  (same folder)

# the recipe default's front-end first: the ratios are against it
LEVERS = {
    "int8 out, two ranges": {"gain": 4.0},
    "int8 out, one range": {"gain": 1.0},
    "int32 out (qat.dft_output)": {"int32": True},
    "int32 out, 64 freqs to 4 kHz": {"n_freqs": 64, "fmax_hz": 4000, "int32": True},
    "64 freqs to 4 kHz, one range": {"n_freqs": 64, "fmax_hz": 4000, "gain": 1.0},
}
FRONTEND_KEYS = {"n_freqs", "fmax_hz", "frame_ms", "hop_ms", "n_mels"}


def build(lever: dict, samples: int, out: Path) -> dict:
    """Export the lever's FP32 and INT8 students into `out`; their paths and MACs."""
    from edgeser.export.onnx_export import export_onnx
    from edgeser.models.student import Student
    from edgeser.quant.calibrate import calibrate
    from edgeser.quant.qstudent import QuantStudent
    from edgeser.recipe import STUDENT_SIZES
    from edgeser.stages.common import model_stats

    bad = set(lever) - FRONTEND_KEYS - {"gain", "int32"}
    if bad:
        known = sorted(FRONTEND_KEYS | {"gain", "int32"})
        raise SystemExit(f"error: unknown lever key(s) {sorted(bad)}; known: {known}")
    torch.manual_seed(0)
    student = Student(4, STUDENT_SIZES["s"], frontend={k: v for k, v in lever.items() if k in FRONTEND_KEYS}).eval()
    q = QuantStudent(student, relu_unsigned=True)
    if lever.get("int32"):
        q.frontend.int32_output()  # qat.dft_output int32: the ONNX DFT becomes a MatMulInteger
    elif lever.get("gain", 1.0) > 1:
        q.frontend.two_range(lever["gain"])
    calibrate(q, torch.randn(16, samples, generator=torch.Generator().manual_seed(1)) * 0.1, 2, 8)
    qe = q.to_export()
    paths = {"int8": out / "int8.onnx", "fp32": out / "fp32.onnx"}
    export_onnx(qe, samples, paths["int8"])
    export_onnx(student, samples, paths["fp32"])
    dft_macs = int8_layer_macs(qe, samples)["frontend.dft"]
    return {"paths": paths, "macs": int(model_stats(qe, samples)["macs"]), "dft_macs": int(dft_macs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=300, help="timed rounds (default 300)")
    ap.add_argument("--samples", type=int, default=48000, help="clip length in samples (default 48000: 3 s)")
    ap.add_argument("--lever", action="append", default=[], metavar="NAME=JSON",
                    help='a lever of your own, e.g. \'mine={"n_freqs": 32, "gain": 1}\' (replaces the defaults)')
    args = ap.parse_args()
    levers = dict(LEVERS)
    if args.lever:
        levers = {}
        for item in args.lever:
            name, _, text = item.partition("=")
            try:
                levers[name] = json.loads(text)
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: --lever {item!r}: not NAME=JSON ({e})") from None
    from edgeser.export.onnx_export import export_onnx
    from edgeser.models.soundnet import SoundNet8
    from edgeser.stages.common import model_stats

    x = (np.random.default_rng(0).standard_normal((1, args.samples)) * 0.1).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = SoundNet8(4).eval()
        export_onnx(teacher, args.samples, tmp / "teacher.onnx")
        paths, built = {"teacher": tmp / "teacher.onnx"}, {}
        for i, (name, lever) in enumerate(levers.items()):
            (tmp / str(i)).mkdir()
            print(f"building {name} {lever}", file=sys.stderr, flush=True)
            built[name] = build(lever, args.samples, tmp / str(i))
            paths |= {f"{name}|{k}": p for k, p in built[name]["paths"].items()}
        lat = interleaved_latency(paths, x, args.runs, warmup=20)
    t50 = lat["teacher"]["p50_ms"]
    base = next(iter(levers))
    rows = {}
    print(f"\n{args.samples / 16000:g} s clip, onnxruntime CPU, 1 thread, {args.runs} interleaved rounds; teacher "
          f"SoundNet-8 FP32 p50 {t50:.3f} ms ({model_stats(teacher, args.samples)['macs'] / 1e6:.1f} MMAC)")
    print(f"{'lever':32s} {'DFT MMAC':>8s} {'all MMAC':>8s} {'INT8 p50/p95 ms':>16s} {'FP32 p50/p95 ms':>16s} "
          f"{'INT8/FP32':>9s} {'teacher/INT8':>12s}")
    for name, b in built.items():
        i8, f32 = lat[f"{name}|int8"], lat[f"{name}|fp32"]
        rows[name] = {"lever": levers[name], "dft_mmac": round(b["dft_macs"] / 1e6, 2),
                      "mmac": round(b["macs"] / 1e6, 2),
                      "dft_mac_cut_vs_today": round(built[base]["dft_macs"] / b["dft_macs"], 2),
                      "int8_p50_ms": round(i8["p50_ms"], 4), "int8_p95_ms": round(i8["p95_ms"], 4),
                      "fp32_p50_ms": round(f32["p50_ms"], 4), "fp32_p95_ms": round(f32["p95_ms"], 4),
                      "int8_speedup_vs_fp32": round(f32["p50_ms"] / i8["p50_ms"], 2),
                      "latency_ratio_vs_teacher": round(t50 / i8["p50_ms"], 1)}
        r = rows[name]
        print(f"{name:32s} {r['dft_mmac']:8.2f} {r['mmac']:8.2f} {r['int8_p50_ms']:7.3f} / {r['int8_p95_ms']:6.3f} "
              f"{r['fp32_p50_ms']:7.3f} / {r['fp32_p95_ms']:6.3f} {r['int8_speedup_vs_fp32']:9.2f} "
              f"{r['latency_ratio_vs_teacher']:12.1f}")
    print(json.dumps({"teacher_p50_ms": round(t50, 4), "samples": args.samples, "runs": args.runs, "levers": rows}))


if __name__ == "__main__":
    main()
