"""Load an artifact for streaming: the split stream folder (front-end + body, cacheable) or a plain ONNX.

    RUN/artifacts/student_int8_stream/   frontend.onnx + body.onnx + stream.json: frames are cached
    RUN/artifacts/student_int8.onnx      the whole model run on every window: no cache
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgeser.export.stream_export import BODY, CONFIG, FRONTEND, STEP
from edgeser.run_dir import RunDir
from edgeser.runtimes import onnx_session


class StreamError(ValueError):
    """Bad input for `edgeser stream` (artifact, flags, audio); the message names it. Exit code 2."""


def _run_classes(path: Path, n: int) -> list[str]:
    """Class names of the run an ONNX file came from (RUN/artifacts/x.onnx -> RUN/stages/data/metrics.json)."""
    metrics = RunDir.of_artifact(path).metrics("data")
    try:
        classes = json.loads(metrics.read_text())["classes"]
        if len(classes) == n:
            return list(classes)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return [f"class{i}" for i in range(n)]


def onnx_framing(meta: dict, path: Path) -> tuple[int, int, int]:
    """(sample rate, frame samples, hop samples) of a whole-clip ONNX student. The rate and the analysis frame
    come from the artifact's own metadata (edgeser.export.artifact_meta: `sample_rate`, input `frame_samples`);
    the hop, which the metadata does not record, from the run's recipe.json beside RUN/artifacts/, else the
    recipe's default (edgeser.recipe.Student). A foreign ONNX without metadata gets the recipe defaults."""
    from edgeser.recipe import Student

    spec = json.loads(meta.get("input", "{}"))
    student = Student()
    try:
        raw = RunDir.of_artifact(path).read_recipe()
        student = Student.model_validate(raw.get("student") or {})
    except (OSError, ValueError, AttributeError):
        pass
    sr = int(meta.get("sample_rate") or spec.get("sample_rate") or 16000)
    frame = int(spec.get("frame_samples") or int(sr * student.frame_ms / 1000) + 1)  # + 1: pre-emphasis
    return sr, frame, int(sr * student.hop_ms / 1000)


class StreamModel:
    """Wraps the onnxruntime sessions and counts the seconds spent in them (`compute_s`)."""

    def __init__(self, path: Path, threads: int = 1):
        path = Path(path)
        if not path.exists():
            raise StreamError(f"{path}: no such artifact")
        self.path, self.compute_s = path, 0.0
        try:
            if path.is_dir():
                self._load_stream_dir(path, threads)
            elif path.suffix == ".onnx":
                self._load_onnx(path, threads)
            else:
                raise StreamError(f"{path}: not a streamable artifact (expected a stream folder with {CONFIG} "
                                  f"or an .onnx file)")
        except StreamError:
            raise
        except Exception as e:  # onnxruntime raises its own types for unreadable or invalid models
            raise StreamError(f"{path}: cannot load ({type(e).__name__}: {e})") from None

    def _load_stream_dir(self, path, threads):
        for f in (FRONTEND, BODY, CONFIG):
            if not (path / f).is_file():
                raise StreamError(f"{path}: missing {f} (is this an onnx-int8-stream artifact?)")
        cfg = json.loads((path / CONFIG).read_text())
        self.sr, self.frame, self.hop = cfg["sample_rate"], cfg["frame_samples"], cfg["hop_samples"]
        self.classes, self.clip_samples = cfg["classes"], cfg["clip_samples"]
        self.frontend_sess, self.body_sess = onnx_session(path / FRONTEND, threads), onnx_session(path / BODY, threads)
        self.step_sess = onnx_session(path / STEP, threads) if (path / STEP).is_file() else None
        self.whole = None
        self.cacheable = True

    def _load_onnx(self, path, threads):
        self.whole, self.step_sess = onnx_session(path, threads), None
        inp, out = self.whole.get_inputs()[0], self.whole.get_outputs()[0]
        if len(inp.shape) != 2:
            raise StreamError(f"{path}: expected an audio input (batch, samples), got {inp.shape}")
        # a static-length graph takes windows of its own length only; a dynamic one any window (None)
        self.input_name = inp.name
        self.clip_samples = int(inp.shape[1]) if isinstance(inp.shape[1], int) else None
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        meta = self.whole.get_modelmeta().custom_metadata_map
        self.sr, self.frame, self.hop = onnx_framing(meta, path)
        self.classes = json.loads(meta["classes"]) if "classes" in meta else _run_classes(path, int(out.shape[1]))
        self.cacheable = False

    def _timed(self, sess, feed):
        t = time.perf_counter()
        out = sess.run(None, feed)[0]
        self.compute_s += time.perf_counter() - t
        return out

    def n_frames(self, samples: int) -> int:
        return (samples - self.frame) // self.hop + 1

    def frames(self, audio: np.ndarray) -> np.ndarray:
        """(samples,) -> un-normalised log-mel frames (n_mels, T)."""
        return self._timed(self.frontend_sess, {"audio": audio[None].astype(np.float32, copy=False)})[0]

    def body(self, frames: np.ndarray) -> np.ndarray:
        """(n_mels, T) frames of one window -> logits (classes,)."""
        return self._timed(self.body_sess, {"frames": np.ascontiguousarray(frames[None])})[0]

    def step(self, audio: np.ndarray, cached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames of `audio` appended to `cached` (n_mels, T), then the body, in one call -> (logits, frames)."""
        t = time.perf_counter()
        logits, frames = self.step_sess.run(None, {"audio": audio[None].astype(np.float32, copy=False),
                                                   "cached": np.ascontiguousarray(cached[None])})
        self.compute_s += time.perf_counter() - t
        return logits[0], frames[0]

    def window(self, audio: np.ndarray) -> np.ndarray:
        """Uncached: one window's audio through the whole model -> logits (classes,)."""
        x = audio[None].astype(np.float32, copy=False)
        if self.whole is None:
            return self.body(self.frames(audio))
        if self.static_batch and self.static_batch > 1:
            x = np.concatenate([x, np.zeros((self.static_batch - 1, x.shape[1]), np.float32)])
        return self._timed(self.whole, {self.input_name: x})[0]


def run_stream_config(artifact: Path, recipe: Path | None):
    """(stream section, data.clip_seconds) behind a stream: from --recipe if given (validated; InputError), else
    from RUN/recipe.json beside RUN/artifacts/, else (None, None). A saved recipe.json that today's validation
    rejects for an unrelated field (an older run, a gate added since) still gives its stream section and clip
    length: those are all a stream needs, and falling back to defaults would change the window silently."""
    from edgeser.recipe import Stream, load_recipe, validate

    if recipe is not None:
        r = load_recipe(recipe)
        return r.stream, r.data.clip_seconds
    saved = RunDir.of_artifact(artifact).recipe
    try:
        raw = json.loads(saved.read_text())
    except (OSError, ValueError):  # no run folder around the artifact, or not JSON
        return None, None
    if not isinstance(raw, dict):
        return None, None
    try:
        r = validate(json.loads(json.dumps(raw)))  # a copy: validate applies overrides in place
        return r.stream, r.data.clip_seconds
    except ValueError:
        pass
    try:
        stream = Stream.model_validate(raw.get("stream") or {})
    except ValueError:
        stream = None
    try:
        clip = float(raw["data"]["clip_seconds"])
    except (KeyError, TypeError, ValueError):
        clip = None
    return stream, clip if clip and clip > 0 else None
