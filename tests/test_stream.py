"""edgeser stream: cached and uncached paths agree, window geometry, smoothing, inputs, and bad input -> exit 2."""
from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.runtimes import onnx_runner, stream_runner
from edgeser.streaming.artifact import StreamError, StreamModel
from edgeser.streaming.sources import pcm_chunks
from edgeser.streaming.streamer import Smoother, StreamSettings, Streamer, stream_array

runner = CliRunner()


@pytest.fixture(scope="module")
def arts(tiny_run):
    run_dir, _ = tiny_run
    return run_dir / "artifacts"


@pytest.fixture(scope="module")
def signal(tiny_corpus):
    """8 s of the tiny corpus's test clips end to end (1 s clips), so the labels change along the stream."""
    return tiny_corpus.splits["test"].x[:8].numpy().reshape(-1)


def window_logits(arts, signal, window: float, hop: float):
    """INT8 and FP32 logits of the stream's windows, each window run as a whole clip (no cache)."""
    run_dir = arts.parent
    w, h = int(window * 16000), int(hop * 16000)
    clips = np.stack([signal[s : s + w] for s in range(0, len(signal) - w + 1, h)])
    return (onnx_runner(run_dir / "artifacts/student_int8.onnx")(clips),
            onnx_runner(run_dir / "artifacts/student_fp32.onnx")(clips))


def quantisation_error(arts, signal, window: float, hop: float) -> float:
    """The largest logit change INT8 itself causes on these windows: |INT8 - FP32| of the same clips."""
    q, f = window_logits(arts, signal, window, hop)
    return float(np.abs(q - f).max())


def assert_cache_matches(a, b, arts, signal, window, hop):
    """Cached and uncached frames differ only in which samples share one levelling call (each call's audio is
    levelled to its peak before the INT8 DFT), so they may land on other int8 steps. Both are INT8
    approximations of the same FP32 windows, each within `bound` (INT8's own error on these windows) of it:
    they differ by at most 2 x bound, and wherever FP32's top-2 margin exceeds 2 x bound neither can flip."""
    q, f = window_logits(arts, signal, window, hop)
    bound = float(np.abs(q - f).max())
    assert a.shape == b.shape == f.shape
    assert np.abs(a - b).max() <= 2 * bound, (np.abs(a - b).max(), bound)
    top2 = np.sort(f, 1)
    sure = top2[:, -1] - top2[:, -2] > 2 * bound
    assert (a.argmax(1)[sure] == b.argmax(1)[sure]).all() and (a.argmax(1)[sure] == f.argmax(1)[sure]).all()


def test_cached_equals_uncached(arts, signal):
    model = StreamModel(arts / "student_int8_stream")
    settings = StreamSettings(window_s=1.0, hop_s=0.25, smoothing="none")  # 75 % overlap
    cached = stream_array(model, signal, settings, cache=True, chunk=700)  # chunks not aligned to frames
    uncached = stream_array(model, signal, settings, cache=False, chunk=1600)
    a, b = np.stack(cached.logits), np.stack(uncached.logits)
    assert a.shape == b.shape and len(a) == (len(signal) - 16000) // 4000 + 1
    assert_cache_matches(a, b, arts, signal, 1.0, 0.25)
    s, u = cached.stats(), uncached.stats()
    assert s["frames_computed"] < 0.35 * u["frames_computed"]  # each frame once instead of ~4 times
    assert s["step_calls"] >= len(a) - 2  # one onnxruntime call per window (step.onnx) after the first
    assert u["frames_computed"] == len(a) * model.n_frames(16000)
    assert 0 < s["rtf"] < 1


@pytest.mark.parametrize("window, hop, chunk", [(1.0, 1.25, 300), (1.0, 0.5, 16000 * 8), (0.5, 0.025, 123)])
def test_cached_equals_uncached_any_geometry(arts, signal, window, hop, chunk):
    """Gaps between windows (hop > window), one push of everything, tiny pushes and a 25 ms hop."""
    model = StreamModel(arts / "student_int8_stream")
    settings = StreamSettings(window_s=window, hop_s=hop, smoothing="none")
    a = np.stack(stream_array(model, signal, settings, cache=True, chunk=chunk).logits)
    b = np.stack(stream_array(model, signal, settings, cache=False, chunk=chunk).logits)
    assert len(a) == (len(signal) - int(window * 16000)) // int(hop * 16000) + 1
    assert_cache_matches(a, b, arts, signal, window, hop)


@pytest.mark.parametrize("db", [-40, -20, 6])
def test_stream_is_level_invariant(arts, signal, db):
    """The same stream played 40 dB quieter or 6 dB louder (scaled to peak 0.5 first, so +6 dB does not clip):
    the same decisions in every window."""
    model = StreamModel(arts / "student_int8_stream")
    settings = StreamSettings(window_s=1.0, hop_s=0.25, smoothing="none")
    x = (signal * (0.5 / np.abs(signal).max())).astype(np.float32)
    base = np.stack(stream_array(model, x, settings, cache=True, chunk=700).logits)
    other = np.stack(stream_array(model, (x * 10 ** (db / 20)).astype(np.float32), settings, cache=True,
                                  chunk=700).logits)
    assert (base.argmax(1) == other.argmax(1)).all()
    # levelling x*g / (peak*g) rounds differently in float from x / peak now and then, which can move a
    # sample across an int8 step: bounded by what quantisation itself does
    assert np.abs(base - other).max() <= quantisation_error(arts, x, 1.0, 0.25)


def test_stream_artifact_is_the_int8_model(arts, signal):
    clips = signal[: 4 * 16000].reshape(4, 16000)
    whole = onnx_runner(arts / "student_int8.onnx")(clips)
    split = stream_runner(arts / "student_int8_stream")(clips)
    assert np.abs(whole - split).max() < 0.05 and (whole.argmax(1) == split.argmax(1)).all()


def test_plain_onnx_streams_uncached_only(arts, signal, tmp_path):
    model = StreamModel(arts / "student_int8.onnx")
    with pytest.raises(StreamError, match="--no-cache"):
        Streamer(model, StreamSettings(1.0, 0.5), cache=True)
    assert model.classes == json.loads((arts.parent / "stages/data/metrics.json").read_text())["classes"]
    s = stream_array(model, signal[:48000], StreamSettings(1.0, 0.5), cache=False)
    assert len(s.logits) == 5
    # any length: a 2 s window on the 1 s-trained graph is the graph run on those 2 s
    s2 = stream_array(model, signal[:48000], StreamSettings(2.0, 0.5), cache=False)
    want = onnx_runner(arts / "student_int8.onnx")(np.stack([signal[i : i + 32000] for i in (0, 8000, 16000)]))
    assert np.abs(np.stack(s2.logits) - want).max() < 1e-5
    # a static-length graph (QNN HTP's layout) takes windows of its own length only
    from edgeser.export.onnx_export import export_onnx
    from edgeser.quant.calibrate import load_qat

    export_onnx(load_qat(arts.parent / "stages/qat/model.pt")[0].to_export(), 16000, tmp_path / "static.onnx",
                static_batch=1)
    with pytest.raises(StreamError, match="window"):
        Streamer(StreamModel(tmp_path / "static.onnx"), StreamSettings(2.0, 0.5), cache=False)


def test_events_timeline_and_partial_window(arts):
    model = StreamModel(arts / "student_int8_stream")
    rng = np.random.default_rng(0)
    events = []
    s = stream_array(model, (0.1 * rng.standard_normal(40000)).astype(np.float32), StreamSettings(1.0, 0.5),
                     on_event=events.append)
    assert [e["start"] for e in events] == [0.0, 0.5, 1.0, 1.5]
    assert [e["t"] for e in events] == [1.0, 1.5, 2.0, 2.5]
    for e in events:
        assert set(e["probs"]) == set(model.classes) and abs(sum(e["probs"].values()) - 1) < 1e-3
        assert e["label"] == max(e["probs"], key=e["probs"].get)
    short = []
    stream_array(model, np.zeros(5000, np.float32) + 0.01, StreamSettings(1.0, 0.5), on_event=short.append)
    assert len(short) == 1 and short[0]["partial"] and np.isfinite(list(short[0]["probs"].values())).all()
    assert s.stats()["windows"] == 4


def test_silence_gives_finite_probabilities(arts):
    model = StreamModel(arts / "student_int8_stream")
    s = stream_array(model, np.zeros(32000, np.float32), StreamSettings(1.0, 0.5))
    assert np.isfinite(np.stack(s.logits)).all()


def test_bad_settings_and_audio(arts):
    model = StreamModel(arts / "student_int8_stream")
    with pytest.raises(StreamError, match="hop"):
        Streamer(model, StreamSettings(1.0, 0.51))
    with pytest.raises(StreamError, match="window"):
        Streamer(model, StreamSettings(0.02, 0.5))
    with pytest.raises(StreamError, match="smoothing"):
        Streamer(model, StreamSettings(1.0, 0.5, smoothing="mode"))
    with pytest.raises(StreamError, match="NaN"):
        Streamer(model, StreamSettings(1.0, 0.5)).push(np.array([0.0, np.nan], np.float32))
    with pytest.raises(StreamError, match="no such artifact"):
        StreamModel(arts / "nope")
    with pytest.raises(StreamError, match="not a streamable"):
        StreamModel(arts / "student_int8.pt2")


def test_smoothers():
    ema = Smoother("ema", 0.5, 1)
    ema(np.array([1.0, 0.0]))
    assert np.allclose(ema(np.array([0.0, 1.0])), [0.5, 0.5])
    med = Smoother("median", 0.5, 3)
    for p in ([1.0, 0.0], [1.0, 0.0], [0.0, 1.0]):
        out = med(np.array(p))
    assert np.allclose(out, [1.0, 0.0])  # one outlier window does not flip the label


def test_pcm_chunks_keeps_split_samples():
    x = (np.arange(-500, 500) * 30).astype("<i2")
    raw = x.tobytes()

    class Dribble(io.RawIOBase):  # delivers odd byte counts, like a pipe
        def __init__(self):
            self.pos = 0

        def read(self, n):
            out = raw[self.pos : self.pos + min(n, 333)]
            self.pos += len(out)
            return out

    got = np.concatenate(list(pcm_chunks(Dribble(), 160, "s16le")))
    assert np.allclose(got, x / 32768.0)
    with pytest.raises(StreamError, match="--format"):
        list(pcm_chunks(io.BytesIO(raw), 160, "mp3"))


def test_cli_wav_and_stdin(arts, signal, tmp_path):
    wav = tmp_path / "s.wav"
    sf.write(wav, signal[:48000], 16000)
    r = runner.invoke(app, ["stream", str(arts / "student_int8_stream"), "--wav", str(wav)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 5 and lines[0]["t"] == 1.0  # the run's recipe: 1 s window, 0.5 s hop
    pcm = sf.read(wav, dtype="int16")[0].astype("<i2").tobytes()  # the very samples the WAV holds
    r2 = runner.invoke(app, ["stream", str(arts / "student_int8_stream"), "--stdin"], input=pcm)
    assert r2.exit_code == 0, r2.output
    lines2 = [json.loads(x) for x in r2.stdout.splitlines() if x.startswith("{")]
    assert [e["raw_label"] for e in lines2] == [e["raw_label"] for e in lines]


@pytest.mark.parametrize("args, needle", [
    ([], "exactly one input"),
    (["--wav", "missing.wav"], "missing.wav"),
    (["--wav", "x.wav", "--stdin"], "exactly one input"),
    (["--stdin", "--hop", "0.31"], "hop"),
    (["--stdin", "--format", "mp3"], "--format"),
    pytest.param(["--mic"], "sounddevice", marks=pytest.mark.skipif(
        importlib.util.find_spec("sounddevice") is not None, reason="sounddevice is installed here")),
])
def test_cli_bad_input_exits_2(arts, args, needle):
    r = runner.invoke(app, ["stream", str(arts / "student_int8_stream"), *args], input=b"")
    assert r.exit_code == 2 and needle in r.output, r.output


def test_cli_plain_onnx_streams_without_cache_and_says_so(arts, signal, tmp_path):
    """A plain .onnx needs no --no-cache: it streams every window whole, with one note on stderr, and decides as
    the cached stream folder does on the same audio (within INT8's own error, as assert_cache_matches)."""
    wav = tmp_path / "s.wav"
    sf.write(wav, signal, 16000, subtype="FLOAT")  # the very samples `signal` holds
    out = {}
    for name in ("student_int8.onnx", "student_int8_stream"):
        r = runner.invoke(app, ["stream", str(arts / name), "--wav", str(wav), "--smooth", "none"])
        assert r.exit_code == 0, r.output
        out[name] = r
    plain, cached = out["student_int8.onnx"], out["student_int8_stream"]
    notes = [ln for ln in plain.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "plain ONNX" in notes[0] and "without the cache" in notes[0], plain.stderr
    assert "cache off" in plain.stderr and "cache on" in cached.stderr
    assert "note:" not in cached.stderr
    ev = {k: [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")] for k, r in out.items()}
    assert len(ev["student_int8.onnx"]) == len(ev["student_int8_stream"]) == 15  # 8 s, 1 s windows every 0.5 s
    assert [e["start"] for e in ev["student_int8.onnx"]] == [e["start"] for e in ev["student_int8_stream"]]
    # the logits behind those lines: the same stream through the library, then INT8's tolerance
    a = np.stack(stream_array(StreamModel(arts / "student_int8_stream"), signal, StreamSettings(1.0, 0.5, "none"),
                              cache=True).logits)
    b = np.stack(stream_array(StreamModel(arts / "student_int8.onnx"), signal, StreamSettings(1.0, 0.5, "none"),
                              cache=False).logits)
    assert_cache_matches(a, b, arts, signal, 1.0, 0.5)
    classes = StreamModel(arts / "student_int8.onnx").classes
    assert [e["raw_label"] for e in ev["student_int8.onnx"]] == [classes[i] for i in b.argmax(1)]
    assert [e["raw_label"] for e in ev["student_int8_stream"]] == [classes[i] for i in a.argmax(1)]
    # --no-cache asked for it: no note
    r = runner.invoke(app, ["stream", str(arts / "student_int8.onnx"), "--wav", str(wav), "--no-cache"])
    assert r.exit_code == 0 and "note:" not in r.stderr, r.output


def test_plain_onnx_window_from_an_older_recipe_or_flag(arts, tiny_run, tmp_path):
    """The window of a dynamic-length ONNX comes from the run's recipe.json, even one that today's validation
    rejects for an unrelated field; outside a run folder --window is needed (exit 2 naming it)."""
    from edgeser.streaming.streamer import resolve_settings

    run = tmp_path / "old_run"
    (run / "artifacts").mkdir(parents=True)
    onnx = run / "artifacts" / "student_int8.onnx"
    onnx.write_bytes((arts / "student_int8.onnx").read_bytes())
    raw = json.loads((tiny_run[0] / "recipe.json").read_text())
    raw["stream"] = {**raw.get("stream", {}), "window_s": 0.75, "hop_s": 0.25}
    raw["verify"]["no_such_gate"] = 1  # what a newer edgeser rejects
    (run / "recipe.json").write_text(json.dumps(raw))
    s = resolve_settings(StreamModel(onnx))
    assert (s.window_s, s.hop_s) == (0.75, 0.25)
    (run / "recipe.json").unlink()
    with pytest.raises(StreamError, match="--window"):
        resolve_settings(StreamModel(onnx))
    r = runner.invoke(app, ["stream", str(onnx), "--stdin"], input=b"")
    assert r.exit_code == 2 and "--window" in r.output, r.output
    assert resolve_settings(StreamModel(onnx), window=1.0).window_s == 1.0
