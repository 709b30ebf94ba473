"""Sliding-window emotion recognition over a PCM stream, with a front-end feature cache.

capture -> (pre-emphasis, framing, windowing, DFT, mel: the artifact's front-end) -> inference -> smoothing.

Window w covers samples [w * hop, w * hop + window). With the cache, each log-mel frame (50 ms, every 25 ms) is
computed once, when its samples arrive, and every window that overlaps it reuses it; only the per-window
normalisation and the CNN body run per window. Without it, every window recomputes its frames from audio.
Frames are a valid convolution (no padding), so a window's cached frames are exactly the frames of its audio.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgeser.recipe import Stream
from edgeser.streaming.artifact import StreamError, StreamModel

_DEFAULT = Stream()  # the recipe's stream defaults, written once there


@dataclass
class StreamSettings:
    """The settings one stream runs with (resolve_settings): defaults are the recipe's stream section's."""
    window_s: float
    hop_s: float
    smoothing: str = _DEFAULT.smoothing  # ema | median | none
    ema_alpha: float = _DEFAULT.ema_alpha  # weight of the newest window
    median_windows: int = _DEFAULT.median_windows


def resolve_settings(model: StreamModel, recipe=None, window: float | None = None, hop: float | None = None,
                     smoothing: str | None = None) -> StreamSettings:
    """Flags first, then the recipe's `stream` section (--recipe, else the run's recipe.json beside
    RUN/artifacts/), then the artifact's own clip length. The window defaults to stream.window_s, else the
    training clip length; a dynamic-length ONNX outside a run folder has neither: StreamError asks for --window."""
    from edgeser.streaming.artifact import run_stream_config

    cfg, clip_s = run_stream_config(model.path, recipe)
    if window is None:
        window = (cfg.window_s if cfg else None) or clip_s or (model.clip_samples / model.sr if model.clip_samples
                                                                 else None)
    if window is None:
        raise StreamError(f"window: {model.path} takes any length and no recipe says which (it is not in a "
                          f"RUN/artifacts folder with RUN/recipe.json); give --window SECONDS or --recipe")
    cfg = cfg or _DEFAULT
    return StreamSettings(window_s=window, hop_s=cfg.hop_s if hop is None else hop, smoothing=smoothing or cfg.smoothing,
                          ema_alpha=cfg.ema_alpha, median_windows=cfg.median_windows)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


class Smoother:
    """EMA or running median of class probabilities over windows."""

    def __init__(self, kind: str, alpha: float, k: int):
        if kind not in ("ema", "median", "none"):
            raise StreamError(f"smoothing: {kind!r} is not one of ema, median, none")
        self.kind, self.alpha, self.state, self.recent = kind, alpha, None, deque(maxlen=max(1, k))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        if self.kind == "ema":
            self.state = p if self.state is None else self.alpha * p + (1 - self.alpha) * self.state
            return self.state
        if self.kind == "median":
            self.recent.append(p)
            m = np.median(np.stack(self.recent), axis=0)
            return m / m.sum()
        return p


class Streamer:
    def __init__(self, model: StreamModel, settings: StreamSettings, cache: bool = True):
        if cache and not model.cacheable:
            raise StreamError(f"{model.path}: a plain ONNX cannot share frames between windows; use the "
                              f"onnx-int8-stream artifact (a folder) or --no-cache")
        sr = model.sr
        self.model, self.cache, self.sr = model, cache, sr
        self.window = int(round(settings.window_s * sr))
        self.step = int(round(settings.hop_s * sr))
        if settings.hop_s <= 0 or settings.window_s <= 0:
            raise StreamError(f"window ({settings.window_s}) and hop ({settings.hop_s}) must be > 0 seconds")
        if self.window < model.frame:
            raise StreamError(f"window: {settings.window_s} s is shorter than one {model.frame}-sample frame")
        if not model.cacheable and model.clip_samples and self.window != model.clip_samples:
            raise StreamError(f"window: {model.path} takes {model.clip_samples / sr:g} s clips, not "
                              f"{settings.window_s:g} s (the stream artifact takes any window)")
        if cache and self.step % model.hop:
            raise StreamError(f"hop: {settings.hop_s} s is not a multiple of the {1000 * model.hop / sr:g} ms "
                              f"frame hop, so windows could not share frames")
        self.win_frames = model.n_frames(self.window)
        self.step_frames = self.step // model.hop
        self.smoother = Smoother(settings.smoothing, settings.ema_alpha, settings.median_windows)
        self.audio = np.zeros(0, np.float32)
        self.audio_start = 0  # absolute sample index of self.audio[0]
        self.incoming: list[np.ndarray] = []  # pushed pieces not yet joined to self.audio
        self.received = 0
        self.frames = None  # (n_mels, T) cached frames
        self.frames_start = 0  # absolute frame index of self.frames[:, 0]
        self.next_window = 0
        self.frames_computed = 0
        self.step_calls = 0  # windows served by the one-call step graph
        self.process_s = 0.0  # all of push(): bookkeeping, model calls, smoothing
        self.model_s = 0.0  # inside onnxruntime only
        self.logits: list[np.ndarray] = []

    # --- stream in -----------------------------------------------------------------------------------------------
    def push(self, pcm: np.ndarray) -> list[dict]:
        """Append samples (float32 in [-1, 1], 16 kHz mono); returns the events of every window now complete."""
        t, m = time.perf_counter(), self.model.compute_s
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(pcm)):
            raise StreamError(f"audio: NaN or Inf samples near {self.received / self.sr:.2f} s")
        self.incoming.append(pcm)  # joined once per window, not per piece: less copying on a live source
        self.received += len(pcm)
        events = []
        if self.next_window * self.step + self.window <= self.received:
            self.audio = np.concatenate([self.audio, *self.incoming])
            self.incoming.clear()
        while self.next_window * self.step + self.window <= self.received:
            events.append(self._emit(self._window_logits(self.next_window)))
            self.next_window += 1
        self._trim()
        self.process_s += time.perf_counter() - t
        self.model_s += self.model.compute_s - m
        return events

    def flush(self) -> list[dict]:
        """End of stream: a stream shorter than one window gets one zero-padded window (marked partial)."""
        if self.next_window or not self.received:
            return []
        pad = self.next_window * self.step + self.window - self.received
        events = self.push(np.zeros(pad, np.float32))
        for e in events:
            e["partial"] = True
        self.received -= pad
        return events

    # --- windows ----------------------------------------------------------------------------------------------------
    def _window_logits(self, w: int) -> np.ndarray:
        start = w * self.step
        if not self.cache:
            a = start - self.audio_start
            return self.model.window(self.audio[a : a + self.window])
        first, end = w * self.step_frames, w * self.step_frames + self.win_frames
        have = self.frames_start + (0 if self.frames is None else self.frames.shape[1])
        if self.model.step_sess is not None and first < have < end:  # the usual case: one call per window
            a = have * self.model.hop - self.audio_start
            audio = self.audio[a : a + (end - have - 1) * self.model.hop + self.model.frame]
            logits, frames = self.model.step(audio, self.frames[:, first - self.frames_start : have - self.frames_start])
            self.frames, self.frames_start = frames, first
            self.frames_computed += end - have
            self.step_calls += 1
            return logits
        self._compute_frames(end)
        f = first - self.frames_start
        return self.model.body(self.frames[:, f : f + self.win_frames])

    def _compute_frames(self, upto: int) -> None:
        """Compute every frame whose samples have arrived, at least up to frame index `upto` (exclusive)."""
        have = self.frames_start + (0 if self.frames is None else self.frames.shape[1])
        n = self.model.n_frames(self.received - have * self.model.hop)
        if have >= upto or n <= 0:
            return
        a = have * self.model.hop - self.audio_start
        new = self.model.frames(self.audio[a : a + (n - 1) * self.model.hop + self.model.frame])
        self.frames = new if self.frames is None else np.concatenate([self.frames, new], axis=1)
        self.frames_computed += new.shape[1]

    def _trim(self) -> None:
        """Drop audio and frames that no future window needs."""
        start = self.next_window * self.step
        if self.cache:
            have = self.frames_start + (0 if self.frames is None else self.frames.shape[1])
            start = min(start, have * self.model.hop)  # samples of frames not computed yet
            keep_from = self.next_window * self.step_frames
            if self.frames is not None and keep_from > self.frames_start:
                self.frames = self.frames[:, keep_from - self.frames_start :]
                self.frames_start = keep_from
        start = min(start, self.audio_start + len(self.audio))  # pieces not joined yet stay where they are
        if start > self.audio_start:
            self.audio = self.audio[start - self.audio_start :]
            self.audio_start = start

    def _emit(self, logits: np.ndarray) -> dict:
        self.logits.append(logits)
        p = softmax(logits.astype(np.float64))
        s = self.smoother(p)
        w = len(self.logits) - 1
        classes = self.model.classes
        start = w * self.step / self.sr
        return {"t": round(start + self.window / self.sr, 3), "start": round(start, 3),
                "label": classes[int(np.argmax(s))], "raw_label": classes[int(np.argmax(p))],
                "probs": {c: round(float(v), 4) for c, v in zip(classes, s)}}

    # --- figures ----------------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        n = len(self.logits)
        audio_s = self.received / self.sr
        uncached_frames = n * self.model.n_frames(self.window)
        computed = self.frames_computed if self.cache else uncached_frames
        return {"windows": n, "audio_s": audio_s, "process_s": self.process_s, "model_s": self.model_s,
                "rtf": self.process_s / audio_s if audio_s else None, "cache": self.cache, "step_calls": self.step_calls,
                "frames_computed": computed, "frames_uncached": uncached_frames,
                "frontend_saving": 1 - computed / uncached_frames if uncached_frames else 0.0}


def stream_array(model: StreamModel, audio: np.ndarray, settings: StreamSettings, cache: bool = True,
                 chunk: int = 1600, on_event=None) -> Streamer:
    """Feed a whole signal in `chunk`-sample pieces, as a live source would (100 ms at 16 kHz by default)."""
    s = Streamer(model, settings, cache)
    for i in range(0, len(audio), chunk):
        for e in s.push(audio[i : i + chunk]):
            if on_event:
                on_event(e)
    for e in s.flush():
        if on_event:
            on_event(e)
    return s
