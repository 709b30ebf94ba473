"""`edgeser bench` core: real tiny artifacts (ONNX, TorchScript, torch.export) measured in child processes."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeser.benchmark import BenchError, bench_artifacts, bench_main, bench_table, summary_json

SAMPLES = 400  # recipe.json below: 0.025 s at 16 kHz
BATCH = 4
FAST = {"runs": 10, "min_seconds": 0.05}


def _onnx(model: nn.Module, path: Path) -> Path:
    x = torch.randn(2, SAMPLES)
    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, opset_version=18,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), verbose=False)
    return path


def _static_batch_copy(src: Path, dst: Path, batch: int) -> Path:
    import onnx

    m = onnx.load(str(src))
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = batch
    onnx.save(m, str(dst))
    return dst


def _big_onnx(path: Path, hidden: int = 25_000) -> Path:
    """(batch, SAMPLES) @ W (SAMPLES x hidden, ~40 MB fp32) -> ReLU -> @ W2: built directly, a second
    dynamo export would cost seconds."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((SAMPLES, hidden)) * 0.01).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, 4)) * 0.01).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["audio", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", SAMPLES])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _unrunnable_onnx(path: Path) -> Path:
    """Valid ONNX that onnxruntime cannot load (an op from a domain it does not know)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Bogus", ["audio"], ["logits"], domain="com.example")], "g",
                          [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", SAMPLES])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """RUN/recipe.json + RUN/artifacts/ as `edgeser compress` lays them out, with tiny models."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    (run / "recipe.json").write_text(json.dumps({"name": "t", "data": {"clip_seconds": SAMPLES / 16000,
                                                                       "sample_rate": 16000}}))
    art = run / "artifacts"
    art.mkdir()
    tiny = nn.Sequential(nn.Linear(SAMPLES, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, SAMPLES)
    _onnx(tiny, art / "tiny.onnx")
    _big_onnx(art / "big.onnx")
    _static_batch_copy(art / "tiny.onnx", art / "tiny_b1.onnx", 1)
    _unrunnable_onnx(art / "broken.onnx")
    torch.jit.save(torch.jit.trace(tiny, x), str(art / "tiny.ts"))
    ep = torch.export.export(tiny, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(ep, str(art / "tiny.pt2"))
    pkg = art / "fake.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (art / "fake.engine").write_bytes(b"\0" * 64)
    return run


@pytest.fixture(scope="module")
def rows(run_dir) -> dict:
    art = run_dir / "artifacts"
    names = ["tiny.onnx", "tiny.ts", "tiny.pt2", "tiny_b1.onnx", "big.onnx", "broken.onnx", "fake.mlpackage"]
    seen = []
    out = bench_artifacts([art / n for n in names], threads=1, batch=BATCH, progress=lambda i, n, p: seen.append(i),
                          **FAST)
    assert seen == list(range(len(names) + 1))  # before each artifact, then once at the end
    assert [r["name"] for r in out] == names
    return {r["name"]: r for r in out}


@pytest.mark.parametrize("name", ["tiny.onnx", "tiny.ts", "tiny.pt2", "tiny_b1.onnx", "big.onnx"])
def test_runnable_artifacts_measured(rows, run_dir, name):
    r = rows[name]
    assert r["status"] == "ok", r["reason"]
    assert r["format"] == {".onnx": "onnx", ".ts": "torchscript", ".pt2": "pt2"}[Path(name).suffix]
    assert r["samples"] == SAMPLES and r["threads"] == 1
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["calls"] >= FAST["runs"]
    assert r["timed_s"] >= FAST["min_seconds"] or r["calls"] == 5000  # or the call cap was reached
    # clips/s = batch x calls / timed seconds: at most batch / mean latency (the loop adds only overhead)
    per_mean = r["batch"] * 1000 / r["mean_ms"]
    assert 0.5 * per_mean < r["throughput_per_s"] <= per_mean * 1.0001
    assert r["batch"] * 1000 / r["p99_ms"] / 2 < r["throughput_per_s"] < r["batch"] * 1000 / r["p50_ms"] * 3
    assert r["peak_rss_mb"] > 20 and r["baseline_rss_mb"] > 0 and r["model_rss_mb"] >= 0
    assert r["peak_rss_mb"] >= r["baseline_rss_mb"] + r["model_rss_mb"] - 1e-6
    assert r["size_bytes"] == (run_dir / "artifacts" / name).stat().st_size


def test_batch_and_samples_resolution(rows):
    assert rows["tiny.onnx"]["batch"] == BATCH and rows["tiny.onnx"]["note"] == ""
    assert rows["tiny.ts"]["batch"] == BATCH and rows["tiny.pt2"]["batch"] == BATCH  # samples from recipe.json
    b1 = rows["tiny_b1.onnx"]
    assert b1["batch"] == 1 and b1["requested_batch"] == BATCH
    assert "static batch 1" in b1["note"] and f"--batch {BATCH}" in b1["note"]


def test_onnx_runs_without_torch_in_the_process(rows):
    # torch alone is ~170 MiB resident: an ONNX child stays well under what a torch child starts with
    assert rows["tiny.onnx"]["baseline_rss_mb"] < rows["tiny.ts"]["baseline_rss_mb"] - 100


def test_quant_ops_only_for_graphs_that_use_them(run_dir, tmp_path):
    from edgeser.benchmark import _needs_quant_ops

    assert not _needs_quant_ops(str(run_dir / "artifacts" / "tiny.ts"))
    assert not _needs_quant_ops(str(run_dir / "artifacts" / "tiny.pt2"))
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a zip")
    assert _needs_quant_ops(str(junk))  # unknown: import them, as load_runner does

    import edgeser.quant.ops  # noqa: F401
    from edgeser.quant.ops import QD

    class QDQ(nn.Module):
        def forward(self, x):
            q = QD.quantize_per_tensor(x, 0.01, 0, -128, 127, torch.int8)
            return QD.dequantize_per_tensor(q, 0.01, 0, -128, 127, torch.int8)

    x = torch.randn(2, SAMPLES)
    torch.jit.save(torch.jit.trace(QDQ(), x), str(tmp_path / "q.ts"))
    torch.export.save(torch.export.export(QDQ(), (x,)), str(tmp_path / "q.pt2"))
    assert _needs_quant_ops(str(tmp_path / "q.ts")) and _needs_quant_ops(str(tmp_path / "q.pt2"))


def test_bigger_model_bigger_footprint(rows):
    big, tiny = rows["big.onnx"], rows["tiny.onnx"]
    assert big["size_bytes"] > 39e6
    assert big["model_rss_mb"] > tiny["model_rss_mb"] + 30  # 40 MB of weights loaded
    assert big["peak_rss_mb"] > tiny["peak_rss_mb"] + 30
    # each child's own peak, not the test process's (which built a 40 MB model and imported torch)
    assert tiny["peak_rss_mb"] < 150


def test_failed_artifact_reported_others_still_run(rows):
    r = rows["broken.onnx"]
    assert r["status"] == "failed"
    assert "Bogus" in r["reason"] or "com.example" in r["reason"], r["reason"]
    assert r["p50_ms"] is None and r["peak_rss_mb"] is None
    assert rows["big.onnx"]["status"] == "ok"  # measured after the failure


def test_crashed_child_fails_only_its_row(run_dir, tmp_path, monkeypatch):
    """A runtime that kills its process (segfault) fails that artifact's row; the call still returns rows."""
    fake = tmp_path / "crashing-python"
    fake.write_text("#!/bin/sh\necho 'about to crash' >&2\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    art = run_dir / "artifacts"
    rows = bench_artifacts([art / "tiny.onnx", art / "tiny_b1.onnx"], **FAST)
    assert [r["name"] for r in rows] == ["tiny.onnx", "tiny_b1.onnx"]  # the second still got its try
    for r in rows:
        assert r["status"] == "failed" and "SIGSEGV" in r["reason"] and "about to crash" in r["reason"]
        assert r["p50_ms"] is None


@pytest.mark.skipif(sys.platform == "darwin", reason="CoreML predicts on macOS")
def test_coreml_skipped_off_macos(rows):
    r = rows["fake.mlpackage"]
    assert r["format"] == "coreml" and r["status"] == "skipped"
    assert "macOS" in r["reason"] and r["p50_ms"] is None
    assert r["size_bytes"] == 2  # the folder's files


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_skipped_without_tensorrt(run_dir):
    (r,) = bench_artifacts([run_dir / "artifacts" / "fake.engine"], **FAST)
    assert r["format"] == "tensorrt" and r["status"] == "skipped"
    assert "tensorrt" in r["reason"].lower() and "import" in r["reason"]


def test_bad_input_raises_before_running(run_dir, tmp_path):
    art = run_dir / "artifacts"
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"x")
    calls = []
    with pytest.raises(BenchError, match="model.bin"):
        bench_artifacts([art / "tiny.onnx", weird], progress=lambda *a: calls.append(a), **FAST)
    assert calls == []  # nothing ran: all inputs are checked first
    with pytest.raises(BenchError, match="nothere.onnx"):
        bench_artifacts([tmp_path / "nothere.onnx"], **FAST)
    assert issubclass(BenchError, ValueError)
    # TorchScript has no shape to read: without RUN/recipe.json the clip length must be given
    lone = tmp_path / "lone" / "tiny.ts"
    lone.parent.mkdir()
    lone.write_bytes((art / "tiny.ts").read_bytes())
    with pytest.raises(BenchError, match="tiny.ts.*--samples"):
        bench_artifacts([lone], **FAST)
    for bad in ({"threads": 0}, {"batch": 0}, {"samples": -1}):
        with pytest.raises(BenchError):
            bench_artifacts([art / "tiny.onnx"], **bad, **FAST)


def test_summary_json_and_table(rows):
    s = summary_json(list(rows.values()))
    line = json.dumps(s)
    assert "\n" not in line
    back = json.loads(line)
    assert back["threads"] == 1 and back["batch"] == BATCH
    assert set(back["artifacts"]) == set(rows)
    a = back["artifacts"]["tiny.onnx"]
    for k in ("p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "peak_rss_mb", "model_rss_mb", "size_bytes"):
        assert isinstance(a[k], (int, float)), k
    assert back["artifacts"]["fake.mlpackage"]["p50_ms"] is None
    table = bench_table(list(rows.values()))
    assert table.row_count == len(rows)


def test_bench_main_prints_table_then_one_json_line(run_dir, capsys):
    from rich.console import Console

    art = run_dir / "artifacts"
    code = bench_main([art / "tiny.onnx", art / "fake.mlpackage"], threads=2, batch=3, samples=None,
                      console=Console(width=200), **FAST)
    out = capsys.readouterr().out.rstrip("\n").splitlines()
    assert code == 0  # ok + skipped with a reason
    assert any("tiny.onnx" in ln and "ok" in ln for ln in out[:-1])  # the table comes first
    last = json.loads(out[-1])
    assert last["threads"] == 2 and last["batch"] == 3
    assert set(last["artifacts"]) == {"tiny.onnx", "fake.mlpackage"}
    assert last["artifacts"]["tiny.onnx"]["threads"] == 2 and last["artifacts"]["tiny.onnx"]["batch"] == 3

    code = bench_main([art / "broken.onnx"], console=Console(width=200), **FAST)
    last = json.loads(capsys.readouterr().out.rstrip("\n").splitlines()[-1])
    assert code == 1 and last["artifacts"]["broken.onnx"]["status"] == "failed"


def test_cli_bench_folder_and_bad_input(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from edgeser.cli import app

    run_dir, _ = tiny_run
    runner = CliRunner()
    onnx_only = tmp_path / "arts"
    onnx_only.mkdir()
    (onnx_only / "student_int8.onnx").write_bytes((run_dir / "artifacts/student_int8.onnx").read_bytes())
    (onnx_only / "build_engine.sh").write_text("trtexec ...\n")  # not an artifact: left out, not an error
    r = runner.invoke(app, ["bench", str(onnx_only), "--runs", "5", "--seconds", "0", "--samples", "16000"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(summary["artifacts"]) == ["student_int8.onnx"]
    assert summary["artifacts"]["student_int8.onnx"]["p50_ms"] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["bench", str(empty)])
    assert r.exit_code == 2 and "no artifacts" in r.output
    r = runner.invoke(app, ["bench", str(tmp_path / "nope.onnx")])
    assert r.exit_code == 2 and "nope.onnx" in r.output


def _stream_run(tiny_run, dst: Path) -> Path:
    """A copy of the tiny run's recipe.json, student_int8.onnx and stream folder: RUN/artifacts/ with nothing that
    needs torch in the measuring process (fast)."""
    import shutil

    run_dir, _ = tiny_run
    (dst / "artifacts").mkdir(parents=True)
    shutil.copy(run_dir / "recipe.json", dst / "recipe.json")
    shutil.copy(run_dir / "artifacts/student_int8.onnx", dst / "artifacts/student_int8.onnx")
    shutil.copytree(run_dir / "artifacts/student_int8_stream", dst / "artifacts/student_int8_stream")
    return dst / "artifacts"


# the tiny recipe: 1 s windows (data.clip_seconds) every 0.5 s; 801-sample frames every 400 samples
STEP_NOTE = "per 1 s window every 0.5 s, cached: step.onnx on 8401 new samples + 18 cached frames"


def _check_stream_row(a: dict) -> None:
    assert a["format"] == "onnx-stream" and a["status"] == "ok", a["reason"]
    assert a["measures"] == "cached stream step (per window)" and STEP_NOTE in a["note"], a["note"]
    assert a["samples"] == 16000 and a["hop_samples"] == 8000
    assert a["p50_ms"] > 0 and a["calls"] >= 5 and a["model_rss_mb"] >= 0


def test_cli_bench_artifacts_folder_includes_the_stream(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from edgeser.benchmark import expand_artifacts
    from edgeser.cli import app

    run_dir, _ = tiny_run
    assert run_dir / "artifacts/student_int8_stream" in expand_artifacts([run_dir / "artifacts"])
    art = _stream_run(tiny_run, tmp_path / "run")
    r = CliRunner().invoke(app, ["bench", str(art), "--runs", "5", "--seconds", "0"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(summary["artifacts"]) == ["student_int8.onnx", "student_int8_stream"]
    _check_stream_row(summary["artifacts"]["student_int8_stream"])
    assert summary["artifacts"]["student_int8.onnx"]["measures"] == "one call on whole clips"
    table = "\n".join(r.stdout.strip().splitlines()[:-1])
    assert "student_int8_stream" in table and "cached" in table  # the table says what was timed


def test_cli_bench_stream_folder_directly(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from edgeser.cli import app

    art = _stream_run(tiny_run, tmp_path / "run")
    runner = CliRunner()
    r = runner.invoke(app, ["bench", str(art / "student_int8_stream"), "--runs", "5", "--seconds", "0"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(summary["artifacts"]) == ["student_int8_stream"]
    _check_stream_row(summary["artifacts"]["student_int8_stream"])
    # an older folder without step.onnx: the same window in two calls, front-end then body
    (art / "student_int8_stream/step.onnx").unlink()
    (row,) = bench_artifacts([art / "student_int8_stream"], **FAST)
    assert row["status"] == "ok" and row["p50_ms"] > 0, row["reason"]
    assert "frontend.onnx on 8401 new samples, body.onnx on those + 18 cached frames" in row["note"], row["note"]
    # nothing left to run it with: exit 2 naming what is missing
    (art / "student_int8_stream/body.onnx").unlink()
    r = runner.invoke(app, ["bench", str(art / "student_int8_stream")])
    assert r.exit_code == 2 and "step.onnx and body.onnx" in r.output, r.output
