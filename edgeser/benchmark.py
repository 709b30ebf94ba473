"""`edgeser bench`: latency, throughput and memory of exported artifacts on this machine.

Each artifact is measured in a fresh child Python process (`python -c ...`), so one model's memory never
shows in another's figures and a crashing runtime only fails its own row. The child measures its resident
memory right before loading the model (after importing the runtime), loads it, runs `warmup` calls, then
timed calls until at least `runs` calls AND `min_seconds` have passed (capped at `max_runs` calls or
`max_seconds`). It reports p50/p95/p99 latency per call, throughput (batch x calls / timed seconds), its
peak RSS (VmHWM on Linux, getrusage ru_maxrss elsewhere) and the growth of RSS over the pre-load baseline:
the model's own footprint (weights, runtime arenas, activations).

ONNX artifacts run in onnxruntime with the same session options as `edgeser.runtimes.onnx_runner`, but
without importing torch: a process that only needs onnxruntime would otherwise carry ~180 MiB of torch in
its peak RSS. TorchScript and torch.export artifacts load as `edgeser.runtimes.load_runner` loads them
(torch_runner), but import the int8 Q/DQ ops (edgeser.quant.ops, torchao) only when the graph uses them;
CoreML and TensorRT go through `load_runner`.

A stream folder (the onnx-int8-stream artifact, RUN/artifacts/student_int8_stream: stream.json + step.onnx,
frontend.onnx, body.onnx) is measured per window as `edgeser stream` runs it with the cache: one call is the
cached per-hop step, i.e. the front-end on the hop's new audio plus the body on a whole window whose other frames
come from the cache (step.onnx; frontend.onnx then body.onnx when the folder has no step.onnx, or when the hop
is not shorter than the window so nothing is shared). Window and hop come from the run's recipe.json (stream
section, else the training clip length and 0.5 s), --samples overrides the window; the row's note says what
one call was. A full uncached window of the same model is the onnx-int8 file's row (student_int8.onnx).

Memory figures are MiB (2**20 bytes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from edgeser.fileio import size_bytes
from edgeser.formats import by_marker, by_suffix
from edgeser.run_dir import RunDir
from edgeser.timing import time_calls

SAMPLE_RATE = 16000

SUFFIX_FORMATS = by_suffix()  # file suffix -> the kind measured (the format registry's `bench`)
MARKER_FORMATS = by_marker()  # a folder artifact holding this file -> its kind (OpenVINO IR: model.xml)

# the onnx-int8-stream folder, named as in edgeser.export.stream_export (which imports torch: the measuring
# process of an ONNX artifact must not)
STREAM_FORMAT = "onnx-stream"
STREAM_CONFIG, STREAM_STEP, STREAM_FRONTEND, STREAM_BODY = "stream.json", "step.onnx", "frontend.onnx", "body.onnx"

FIGURES = ("format", "status", "reason", "note", "measures", "batch", "threads", "samples", "hop_samples", "p50_ms",
           "p95_ms", "p99_ms", "mean_ms", "calls", "timed_s", "throughput_per_s", "peak_rss_mb", "model_rss_mb",
           "baseline_rss_mb", "size_bytes")


class BenchError(ValueError):
    """Bad input (unknown artifact type, missing file, unknown clip length): the CLI exits 2."""


# ----------------------------------------------------------------------------------------------- parent side

def is_stream_dir(path: Path) -> bool:
    """A folder holding the onnx-int8-stream artifact (or what is left of one: _plan names a missing file)."""
    path = Path(path)
    return path.is_dir() and any((path / f).is_file() for f in (STREAM_CONFIG, STREAM_STEP, STREAM_BODY))


def marker_format(path: Path) -> str | None:
    """The kind of a folder artifact recognised by a file inside it (formats.Format.marker), or None."""
    path = Path(path)
    return next((k for m, k in MARKER_FORMATS.items() if path.is_dir() and (path / m).is_file()), None)


def expand_artifacts(paths: Iterable[Path]) -> list[Path]:
    """Command-line paths -> artifacts. A stream folder is one artifact; any other folder without an artifact
    suffix (RUN/artifacts) gives what in it bench can measure, sorted by name: files and packages with a known
    suffix, and stream folders. Everything else passes through, so a wrong path fails with its own message."""
    out = []
    for p in map(Path, paths):
        if p.is_dir() and p.suffix.lower() not in SUFFIX_FORMATS and not is_stream_dir(p) and not marker_format(p):
            out += sorted(f for f in p.iterdir()
                          if f.suffix.lower() in SUFFIX_FORMATS or is_stream_dir(f) or marker_format(f))
        else:
            out.append(p)
    return out


def artifact_format(path: Path) -> str:
    path = Path(path)
    if is_stream_dir(path):
        return STREAM_FORMAT
    if marker_format(path):
        return marker_format(path)
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIX_FORMATS))
        if path.is_dir():
            raise BenchError(f"{path}: a folder, but not a stream artifact (no {STREAM_CONFIG}); bench knows {known} "
                             f"and stream folders")
        raise BenchError(f"{path}: unknown artifact type {path.suffix or '(no suffix)'!r}; "
                         f"bench knows {known} and stream folders")
    if not path.exists():
        raise BenchError(f"{path}: no such file")
    if fmt == "coreml" and path.suffix.lower() == ".mlpackage":
        if not path.is_dir():
            raise BenchError(f"{path}: a .mlpackage must be a folder")
    elif not path.is_file():
        raise BenchError(f"{path}: not a file")
    return fmt


def onnx_input_shape(path: Path) -> list[int | None]:
    """The first graph input's shape, None for a dynamic dimension (read from the proto, no session)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (a truncated or foreign file)
        raise BenchError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise BenchError(f"{path}: the ONNX graph has no input")
    dims = inputs[0].type.tensor_type.shape.dim
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def recipe_samples(path: Path) -> tuple[int | None, Path]:
    """Samples per clip from RUN/recipe.json next to RUN/artifacts/ (data.clip_seconds at 16 kHz)."""
    recipe = RunDir.of_artifact(path, resolve=False).recipe
    if not recipe.is_file():
        return None, recipe
    try:
        data = json.loads(recipe.read_text())["data"]
        rate = int(data.get("sample_rate", SAMPLE_RATE))
        return int(round(float(data["clip_seconds"]) * rate)), recipe
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"{recipe}: cannot read data.clip_seconds for {path} ({type(e).__name__}: {e})") from e


def _recipe_stream(path: Path) -> tuple[float | None, float | None, Path]:
    """(stream.window_s, stream.hop_s) from RUN/recipe.json next to RUN/artifacts/; None where it says nothing."""
    recipe = RunDir.of_artifact(path, resolve=False).recipe
    try:
        stream = json.loads(recipe.read_text()).get("stream") or {}
    except (OSError, ValueError, AttributeError):
        return None, None, recipe
    out = []
    for key in ("window_s", "hop_s"):
        v = stream.get(key) if isinstance(stream, dict) else None
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise BenchError(f"{recipe}: stream.{key} must be a positive number of seconds, got {v!r}")
        out.append(None if v is None else float(v))
    return out[0], out[1], recipe


def _plan_stream(path: Path, row: dict, samples: int | None) -> dict:
    """Geometry of one cached stream window, as edgeser.streaming.streamer.Streamer steps it."""
    cfg_file = path / STREAM_CONFIG
    try:
        cfg = json.loads(cfg_file.read_text())
        sr, frame, hop, n_mels = (int(cfg[k]) for k in ("sample_rate", "frame_samples", "hop_samples", "n_mels"))
        if min(sr, frame, hop, n_mels) < 1:
            raise ValueError("a value below 1")
    except OSError:
        raise BenchError(f"{path}: missing {STREAM_CONFIG} (is this an onnx-int8-stream artifact?)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"{cfg_file}: cannot read sample_rate, frame_samples, hop_samples and n_mels "
                         f"({type(e).__name__}: {e})") from None
    window_s, hop_s, recipe = _recipe_stream(path)
    if samples is not None:
        window, where = samples, "--samples"
    elif window_s is not None:
        window, where = int(round(window_s * sr)), f"stream.window_s in {recipe}"
    else:
        window, recipe = recipe_samples(path)
        where = f"data.clip_seconds in {recipe}"
        if window is None:
            window, where = cfg.get("clip_samples"), f"clip_samples in {cfg_file}"
            if not isinstance(window, int) or isinstance(window, bool) or window < 1:
                raise BenchError(f"{path}: cannot tell the window length (no {recipe}, no clip_samples in "
                                 f"{cfg_file}); give the number of samples (--samples)")
    from edgeser.recipe import Stream

    step = int(round((hop_s or Stream().hop_s) * sr))
    if window < frame:
        raise BenchError(f"{path}: a window of {window} samples ({where}) is shorter than one {frame}-sample frame")
    if step % hop:
        raise BenchError(f"{path}: the stream hop of {step} samples (stream.hop_s in {recipe}) is not a multiple of "
                         f"the {hop}-sample frame hop, so windows could not share frames")
    win_frames, step_frames = (window - frame) // hop + 1, step // hop
    cached = win_frames - step_frames
    has = {f: (path / f).is_file() for f in (STREAM_STEP, STREAM_FRONTEND, STREAM_BODY)}
    mode = "step" if cached > 0 and has[STREAM_STEP] else "split"
    missing = [] if mode == "step" else [f for f in (STREAM_FRONTEND, STREAM_BODY) if not has[f]]
    if missing:
        if cached > 0:  # either one-call path would do
            missing.insert(0, STREAM_STEP)
        raise BenchError(f"{path}: missing {' and '.join(missing)} (is this an onnx-int8-stream artifact?)")
    new = (step_frames - 1) * hop + frame if cached > 0 else window
    geometry = f"per {window / sr:g} s window every {step / sr:g} s"
    if cached <= 0:
        what = f"nothing cached (hop >= window): {STREAM_FRONTEND} then {STREAM_BODY} on the whole window"
    elif mode == "step":
        what = f"cached: {STREAM_STEP} on {new} new samples + {cached} cached frames"
    else:
        what = f"cached: {STREAM_FRONTEND} on {new} new samples, {STREAM_BODY} on those + {cached} cached frames"
    row.update(samples=window, hop_samples=step,
               measures="cached stream step (per window)" if cached > 0 else "stream window, nothing cached",
               stream={"mode": mode, "new_samples": new, "cached_frames": max(cached, 0), "n_mels": n_mels,
                       "frame_samples": frame, "hop_samples": hop})
    return {"note": f"{geometry}, {what}; clips/s = windows/s"
                    + (f"; {row['batch']} streams per call" if row["batch"] > 1 else "")}


def runtime_missing(kind: str) -> str | None:
    """Why this machine cannot run artifacts of this kind at all, or None: the availability check of the
    registry's formats measured as `kind` (edgeser/formats.py)."""
    from edgeser.formats import REGISTRY, resolve

    for f in REGISTRY.values():
        if f.bench == kind and f.available is not None:
            ok, why = resolve(f.available)()
            return None if ok else why
    return None


def _plan(path: Path, threads: int, batch: int, samples: int | None) -> dict:
    """Row skeleton with the resolved input shape; raises BenchError on bad input."""
    fmt = artifact_format(path)
    row = {"path": str(path), "name": path.name, "format": fmt, "status": "ok", "reason": "", "note": "",
           "measures": "one call on whole clips", "threads": threads, "requested_batch": batch, "batch": batch,
           "samples": samples, "hop_samples": None, "size_bytes": size_bytes(path)}
    for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "calls", "timed_s", "throughput_per_s",
              "peak_rss_mb", "model_rss_mb", "baseline_rss_mb"):
        row[k] = None
    notes = []
    missing = runtime_missing(fmt)
    if missing:
        row.update(status="skipped", reason=missing)
    fixed = None
    if fmt == STREAM_FORMAT:
        notes.append(_plan_stream(path, row, samples)["note"])
        row["note"] = "; ".join(notes)
        return row
    if fmt == "onnx":
        shape = onnx_input_shape(path)
        if len(shape) != 2:
            raise BenchError(f"{path}: expected an audio input (batch, samples), the ONNX input has shape {shape}")
        static_batch, fixed = shape
        if static_batch is not None and static_batch != batch:
            notes.append(f"static batch {static_batch} in the ONNX input overrides --batch {batch}")
            row["batch"] = static_batch
        if fixed is not None and samples is not None and samples != fixed:
            notes.append(f"the ONNX input is fixed at {fixed} samples; --samples {samples} ignored")
    if fixed is not None:
        row["samples"] = fixed
    elif samples is None and row["status"] == "ok":
        row["samples"], recipe = recipe_samples(path)
        if row["samples"] is None:
            raise BenchError(f"{path}: cannot tell the clip length (the input length is not fixed in the "
                             f"artifact and there is no {recipe}); give the number of samples (--samples)")
    row["note"] = "; ".join(notes)
    return row


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


def _measure_in_child(row: dict, runs: int, min_seconds: float, max_runs: int, max_seconds: float,
                      warmup: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeser-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cfg = {"path": str(Path(row["path"]).resolve()), "format": row["format"], "threads": row["threads"],
               "batch": row["batch"], "samples": row["samples"], "runs": runs, "min_seconds": min_seconds,
               "max_runs": max_runs, "max_seconds": max_seconds, "warmup": warmup, "out": str(out),
               "stream": row.get("stream")}
        cmd = [sys.executable, "-c", "from edgeser.benchmark import _child_main; _child_main()", json.dumps(cfg)]
        try:
            proc = subprocess.run(cmd, env=_child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
        if out.is_file():
            try:
                return json.loads(out.read_text())
            except ValueError:
                pass
        if proc.returncode < 0:
            import signal

            try:
                sig = signal.Signals(-proc.returncode).name
            except ValueError:
                sig = str(-proc.returncode)
            why = f"the measuring process was killed by {sig}"
        else:
            why = f"the measuring process exited with {proc.returncode}"
        last = _last_error_line(proc.stderr) or _last_error_line(proc.stdout)
        return {"status": "failed", "reason": f"{why}: {last}" if last else why}


def bench_artifacts(paths: Iterable[Path], threads: int = 1, batch: int = 1, samples: int | None = None,
                    runs: int = 50, min_seconds: float = 1.0, progress: Callable | None = None, *,
                    max_runs: int = 5000, max_seconds: float = 10.0, warmup: int = 5,
                    timeout: float = 900.0) -> list[dict]:
    """Measure every artifact, one child process each, in order. All inputs are checked before anything
    runs (BenchError on bad input). `progress(i, n, path)` is called before artifact i (0-based) starts
    and `progress(n, n, None)` at the end. Returns one dict per artifact (see FIGURES)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise BenchError("no artifacts to benchmark")
    for name, v in (("threads", threads), ("batch", batch), ("runs", runs), ("max_runs", max_runs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BenchError(f"{name} must be a positive integer, got {v!r}")
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 1):
        raise BenchError(f"samples must be a positive integer, got {samples!r}")
    if min_seconds < 0 or max_seconds <= 0 or warmup < 0:
        raise BenchError("min_seconds and warmup must be >= 0 and max_seconds > 0")
    max_runs, max_seconds = max(max_runs, runs), max(max_seconds, min_seconds)

    rows = [_plan(p, threads, batch, samples) for p in paths]
    for i, row in enumerate(rows):
        if progress:
            progress(i, len(rows), paths[i])
        if row["status"] != "ok":
            continue
        res = _measure_in_child(row, runs, min_seconds, max_runs, max_seconds, warmup, timeout)
        res["note"] = "; ".join(x for x in (row["note"], res.get("note")) if x)
        row.update({k: v for k, v in res.items() if k in FIGURES and v is not None})
    if progress:
        progress(len(rows), len(rows), None)
    return rows


# ------------------------------------------------------------------------------------------------ output

def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def bench_table(rows: list[dict]):
    from rich.markup import escape
    from rich.table import Table

    per = "latency per call; a stream folder's call is one window" if any(
        r["format"] == STREAM_FORMAT for r in rows) else "latency per call"
    t = Table(title=f"edgeser bench ({per}; memory in MiB)")
    for col, just in (("artifact", "left"), ("format", "left"), ("status", "left"), ("batch", "right"),
                      ("threads", "right"), ("p50 ms", "right"), ("p95 ms", "right"), ("p99 ms", "right"),
                      ("clips/s", "right"), ("peak RSS", "right"), ("model RSS", "right"), ("size", "right"),
                      ("note", "left")):
        t.add_column(col, justify=just, overflow="fold")
    style = {"ok": "green", "skipped": "yellow", "failed": "bold red"}
    for r in rows:
        note = "; ".join(x for x in (r.get("reason"), r.get("note")) if x)
        t.add_row(escape(r["name"]), r["format"], f"[{style.get(r['status'], '')}]{r['status']}[/]",
                  str(r["batch"]), str(r["threads"]), _fmt(r["p50_ms"], ".3f"), _fmt(r["p95_ms"], ".3f"),
                  _fmt(r["p99_ms"], ".3f"), _fmt(r["throughput_per_s"], ",.1f"), _fmt(r["peak_rss_mb"], ".1f"),
                  _fmt(r["model_rss_mb"], ".1f"), _size(r["size_bytes"]), escape(note))
    return t


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def summary_json(rows: list[dict]) -> dict:
    """{"threads", "batch", "artifacts": {file name: figures}}; a name used twice is keyed by its path."""
    names = [r["name"] for r in rows]
    arts = {}
    for r in rows:
        key = r["name"] if names.count(r["name"]) == 1 else r["path"]
        arts[key] = {"path": r["path"], **{k: r.get(k) for k in FIGURES}}
    first = rows[0] if rows else {}
    return {"threads": first.get("threads"), "batch": first.get("requested_batch", first.get("batch")),
            "artifacts": arts}


def bench_main(paths, threads: int = 1, batch: int = 1, samples: int | None = None, console=None,
               runs: int = 50, min_seconds: float = 1.0) -> int:
    """Print the table, then the summary as ONE plain JSON line (the last line on stdout).
    0: every artifact ran or was skipped with a reason; 1: one failed. BenchError on bad input."""
    from rich.console import Console

    console = console or Console()
    if console.is_terminal:
        with console.status("benchmarking") as status:
            def progress(i, n, p):
                if p is not None:
                    status.update(f"benchmarking {i + 1}/{n}: {p.name}")
            rows = bench_artifacts(paths, threads, batch, samples, runs, min_seconds, progress=progress)
    else:
        rows = bench_artifacts(paths, threads, batch, samples, runs, min_seconds)
    console.print(bench_table(rows))
    console.file.flush()
    sys.stdout.write(json.dumps(summary_json(rows)) + "\n")
    sys.stdout.flush()
    return 1 if any(r["status"] == "failed" for r in rows) else 0


# ------------------------------------------------------------------------------------------------ child side

def _rss_now_kib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_kib() -> float:
    """This process's peak RSS. On Linux VmHWM of /proc/self/status: getrusage's ru_maxrss survives
    fork+exec, so a child started by a big parent would report the parent's peak (seen: pytest at 540 MiB
    made every child "peak" at 540 MiB). Elsewhere ru_maxrss (bytes on macOS, KiB on other Unixes)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else float(peak)


def _needs_quant_ops(path: str) -> bool:
    """Whether a TorchScript / torch.export zip calls the quantized_decomposed ops that edgeser.quant.ops
    registers (through torchao, ~90 MiB and seconds to import): its code / graph entries name them. Float
    graphs then run without torchao in the process. Unreadable as a zip: assume yes, as load_runner does."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if "/data/" in info.filename or info.file_size > 256 * 2**20:
                    continue  # tensor storage
                blob = z.read(info)
                if b"quantized_decomposed" in blob or b"torchao" in blob:
                    return True
    except (OSError, zipfile.BadZipFile):
        return True
    return False


def _onnx_call(path: str, threads: int):
    """Session options as edgeser.runtimes.onnx_runner, without importing torch."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _stream_call(folder: str, threads: int, batch: int, g: dict):
    """One cached stream window (see _plan_stream) as a no-argument call. The cached frames are real frames of
    noise, computed once here (not timed)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1

    def session(name):
        return ort.InferenceSession(str(Path(folder) / name), so, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    new = (rng.standard_normal((batch, g["new_samples"])) * 0.1).astype(np.float32)
    n, hop, frame = g["cached_frames"], g["hop_samples"], g["frame_samples"]
    prime = (rng.standard_normal((batch, max(n - 1, 0) * hop + frame)) * 0.1).astype(np.float32)
    if g["mode"] == "step":
        step = session(STREAM_STEP)
        a, c = (i.name for i in step.get_inputs())
        # step(audio, cached) returns (logits, cached ++ frames(audio)): one dummy frame gives frames(prime)
        cached = step.run(None, {a: prime, c: np.zeros((batch, g["n_mels"], 1), np.float32)})[1][:, :, 1:]
        cached = np.ascontiguousarray(cached)
        return lambda: step.run(None, {a: new, c: cached})[0]
    fe, body = session(STREAM_FRONTEND), session(STREAM_BODY)
    fa, bf = fe.get_inputs()[0].name, body.get_inputs()[0].name
    cached = fe.run(None, {fa: prime})[0] if n else None

    def call():
        frames = fe.run(None, {fa: new})[0]
        return body.run(None, {bf: frames if cached is None else np.concatenate([cached, frames], axis=2)})[0]

    return call


def _measure(cfg: dict) -> dict:
    import gc

    import numpy as np

    fmt, threads, batch, samples = cfg["format"], cfg["threads"], cfg["batch"], cfg["samples"]
    note = []
    if fmt in ("onnx", STREAM_FORMAT):
        import onnxruntime  # noqa: F401  (imported before the baseline)
    else:
        import torch

        if fmt in ("torchscript", "pt2") and _needs_quant_ops(cfg["path"]):
            import edgeser.quant.ops  # noqa: F401  (Q/DQ ops of the int8 graphs; as load_runner does)
        from edgeser.formats import load_runner
        from edgeser.runtimes import torch_runner

        torch.set_num_threads(threads)
        if fmt == "tensorrt":
            if not torch.cuda.is_available():
                return {"status": "skipped", "reason": "TensorRT engines run on a CUDA GPU; torch sees none here"}
            note.append("peak RSS is host memory; GPU memory is not counted")
    x = (np.random.default_rng(0).standard_normal((batch, samples)) * 0.1).astype(np.float32)
    gc.collect()
    base_kib = _rss_now_kib()
    if fmt == STREAM_FORMAT:
        run_window = _stream_call(cfg["path"], threads, batch, cfg["stream"])
        call = lambda a: run_window()  # noqa: E731  (its inputs are the stream's, built above)
    elif fmt == "onnx":
        call = _onnx_call(cfg["path"], threads)
    else:
        if fmt == "torchscript":
            runner = torch_runner(torch.jit.load(cfg["path"], map_location="cpu"))
        elif fmt == "pt2":
            runner = torch_runner(torch.export.load(cfg["path"]).module())
        else:
            runner = load_runner(fmt, Path(cfg["path"]))
        if runner.set_threads:
            runner.set_threads(threads)
        if runner.static_batch and runner.static_batch != batch:
            note.append(f"static batch {runner.static_batch} in the model overrides --batch {batch}")
            batch = runner.static_batch
            x = (np.random.default_rng(0).standard_normal((batch, samples)) * 0.1).astype(np.float32)
        call = lambda a: runner(a, batch_size=batch)  # noqa: E731

    y = None
    for _ in range(cfg["warmup"]):
        y = call(x)
    if y is None:
        y = call(x)
    if len(np.asarray(y)) != batch:
        raise RuntimeError(f"the model returned {np.asarray(y).shape} for input {x.shape}")

    t0 = time.perf_counter()
    ms = np.asarray(time_calls(lambda: call(x), cfg["runs"], 0, min_seconds=cfg["min_seconds"],
                               max_runs=cfg["max_runs"], max_seconds=cfg["max_seconds"]))
    elapsed, n = time.perf_counter() - t0, len(ms)
    peak_kib = _peak_rss_kib()
    if base_kib is None:
        note.append("no /proc: the model's RSS is unknown")
    return {
        "status": "ok", "batch": batch, "samples": samples, "threads": threads,
        "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "calls": n,
        "timed_s": float(elapsed), "throughput_per_s": batch * n / elapsed,
        "peak_rss_mb": peak_kib / 1024,
        "baseline_rss_mb": None if base_kib is None else base_kib / 1024,
        "model_rss_mb": None if base_kib is None else max(0.0, peak_kib - base_kib) / 1024,
        "note": "; ".join(note),
    }


def _child_main() -> None:
    """Entry point of the measuring process: config JSON in argv[1], result JSON written to cfg['out']."""
    cfg = json.loads(sys.argv[1])
    try:
        res = _measure(cfg)
    except Exception as e:  # noqa: BLE001  (reported as this artifact's failure)
        msg = str(e).strip().splitlines()
        res = {"status": "failed", "reason": f"{type(e).__name__}: {msg[0][:400] if msg else ''}".rstrip(": ")}
    Path(cfg["out"]).write_text(json.dumps(res))
