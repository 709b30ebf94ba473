"""The one timing loop (verify's latency, `edgeser serve`'s, `edgeser bench`'s measuring process). It imports
nothing heavy: the process that measures an ONNX artifact must not carry torch."""
from __future__ import annotations

import math
import time


def time_calls(fn, runs: int, warmup: int = 5, *, min_seconds: float = 0.0, max_runs: int | None = None,
               max_seconds: float = math.inf) -> list[float]:
    """Milliseconds of each timed call of fn(), after `warmup` untimed ones. Timing stops once `runs` calls and
    `min_seconds` are both reached, or at `max_runs` calls, or after `max_seconds` (defaults: exactly `runs`)."""
    for _ in range(warmup):
        fn()
    max_runs = runs if max_runs is None else max_runs
    times, clock = [], time.perf_counter
    t0 = clock()
    while True:
        t = clock()
        fn()
        end = clock()
        times.append((end - t) * 1000)
        elapsed, n = end - t0, len(times)
        if (n >= runs and elapsed >= min_seconds) or n >= max_runs or elapsed >= max_seconds:
            return times
