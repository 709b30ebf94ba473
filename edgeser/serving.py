"""In-process dynamic batching (in the spirit of Triton's dynamic batcher) and a closed-loop load test.

`DynamicBatcher` queues single requests from many threads; one worker thread takes the first request,
gathers more until it has as many as it expects (the most requests that were in flight at once over the
last `history` gatherings, at most `max_batch`) or `max_wait_ms` has passed since that first request arrived,
stacks them, calls `run_batch` once and hands each caller its own row. Expecting company only where it has
been seen is what keeps a lone client from paying max_wait_ms on every call, and lets a full house run
as soon as it is all there instead of at the deadline. `max_batch=1` is plain batch-1
serving through the same queue and thread (the baseline). `load_test` drives a batcher with N client
threads, `compare_batching` measures batch-1 serving against dynamic batching for an ONNX model.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Request:
    x: np.ndarray
    future: Future = field(default_factory=Future)
    t_submit: float = field(default_factory=time.perf_counter)


_STOP = object()  # queued by close(): nothing is queued after it


class DynamicBatcher:
    """Queues concurrent requests and runs them in batches, bounded by max_batch and max_wait_ms.

    Requests of different shapes (or dtypes) taken in the same gathering window run as separate
    `run_batch` calls, one per shape. An exception raised by `run_batch` is set on every future of that
    call; the worker keeps serving. `close()` (or leaving the `with` block) stops the worker: the call in
    progress finishes, requests not yet run get a RuntimeError.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int = 32, max_wait_ms: float = 2.0, name: str = "batcher",
                 history: int = 16):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if int(history) < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.run_batch, self.max_batch, self.max_wait_ms, self.name = run_batch, int(max_batch), float(max_wait_ms), name
        # requests submitted and not yet answered; the most of them at once since the last gathering began,
        # and that peak for each of the last `history` gatherings: the company the worker waits for
        self._inflight = self._peak = 0
        self._peaks: deque[int] = deque(maxlen=int(history))
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # orders submit() against close(); guards the counters
        self._closed = False
        self._batches = self._requests = self._errors = 0
        self._sizes: Counter[int] = Counter()
        self._worker = threading.Thread(target=self._serve, name=f"{name}-worker", daemon=True)
        self._worker.start()

    # ---- client side -------------------------------------------------------------------------------
    def submit(self, x: np.ndarray) -> Future:
        """Queue one request (a 1-D or 2-D float array, e.g. (samples,)); the future's result is its row of
        run_batch's output."""
        return self._admit(x, inline=False)[0].future

    def _admit(self, x: np.ndarray, inline: bool) -> tuple[_Request, bool]:
        """Count a request in flight and queue it, unless `inline` and it is alone (nothing in flight, no
        company expected): then it is not queued and the caller runs it. Returns (request, alone)."""
        _check_request(x, self.name)
        req = _Request(x)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: submit() after close()")
            alone = inline and self._inflight == 0 and self._company() <= 1
            self._inflight += 1
            self._peak = max(self._peak, self._inflight)
            if not alone:
                self._queue.put(req)
        return req, alone

    @property
    def expected_batch(self) -> int:
        """How many requests the worker gathers before max_wait_ms runs out: the most that were in flight at
        once over the last `history` gatherings (the current one included), at most max_batch."""
        with self._lock:
            return min(self.max_batch, self._company())

    def _company(self) -> int:
        """(lock held) the most requests in flight at once since the oldest gathering remembered."""
        return max(self._peak, max(self._peaks, default=1))

    def infer(self, x: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """submit(x).result(timeout), except that a lone request (nothing in flight, and no company expected)
        runs at once in the calling thread: handing it to the worker and back costs two thread wake-ups,
        about as much as the 2 s student's call itself here. The timeout does not bound such a call."""
        req, alone = self._admit(x, inline=True)
        if alone:
            self._run([req])  # counted, answered and its errors set exactly as the worker would
        return req.future.result(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting requests and stop the worker (waits up to `timeout` s for the batch in progress)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self) -> dict:
        """Counters since start: run_batch calls, requests served, failed calls, mean/max batch size and a
        histogram {batch size: number of calls}."""
        with self._lock:
            b, r = self._batches, self._requests
            return {"batches": b, "requests": r, "errors": self._errors,
                    "mean_batch_size": r / b if b else 0.0,
                    "max_batch_size": max(self._sizes, default=0),
                    "histogram": dict(sorted(self._sizes.items()))}

    # ---- worker ------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP or self._closed:
                self._fail_pending([] if first is _STOP else [first])
                return
            batch, stop = self._gather(first)
            if stop:
                self._fail_pending(batch)
                return
            groups: dict[tuple, list[_Request]] = {}
            for req in batch:
                groups.setdefault((req.x.shape, req.x.dtype.str), []).append(req)
            for reqs in groups.values():
                self._run(reqs)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """Requests to run with `first`: those already queued (up to max_batch), then more until there are
        `expected_batch` of them or max_wait_ms has passed since first arrived. Requests that queued behind
        a call in progress run as soon as it ends, with what is queued: waiting there for the callers that call
        answered gave full batches (31.1 of 32 at concurrency 32) but left the model idle while they came back
        (73 % of the ceiling against 86 % with half-batches, bench/realtime.py on the demo student).
        Returns (requests, stop) where stop means close() was called meanwhile."""
        with self._lock:
            self._peaks.append(self._peak)
            self._peak = self._inflight
        expect = self.expected_batch
        batch = [first]
        deadline = first.t_submit + self.max_wait_ms / 1000
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if len(batch) >= expect:
                remaining = 0.0  # everyone expected is here: take what is queued, wait no longer
            try:
                req = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if req is _STOP:
                return batch, True
            batch.append(req)
        return batch, False

    def _settled(self, n: int) -> None:
        """n queued requests leave the service: counted out BEFORE their callers are answered, or a caller
        that resubmits at once would be counted in flight twice, and a lone client would look like two."""
        with self._lock:
            self._inflight -= n

    def _run(self, reqs: list[_Request]) -> None:
        n = len(reqs)
        reqs = [r for r in reqs if r.future.set_running_or_notify_cancel()]  # drop requests the caller cancelled
        if n > len(reqs):
            self._settled(n - len(reqs))
        if not reqs:
            return
        try:
            out = np.asarray(self.run_batch(np.stack([r.x for r in reqs])))
            if out.ndim == 0 or len(out) != len(reqs):
                raise ValueError(f"{self.name}: run_batch returned shape {out.shape} for a batch of {len(reqs)}")
        except BaseException as e:  # noqa: BLE001  every caller of this call gets the error
            with self._lock:
                self._errors += 1
                self._inflight -= len(reqs)
            for r in reqs:
                r.future.set_exception(e)
            return
        with self._lock:  # count before answering: a caller that got its result sees it in stats
            self._inflight -= len(reqs)
            self._batches += 1
            self._requests += len(reqs)
            self._sizes[len(reqs)] += 1
        for i, r in enumerate(reqs):
            r.future.set_result(out[i].copy())

    def _fail_pending(self, gathered: list[_Request]) -> None:
        pending = list(gathered)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                pending.append(item)
        self._settled(len(pending))
        for r in pending:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(RuntimeError(f"{self.name} closed before this request ran"))


def _check_request(x, name: str) -> None:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: a request must be a numpy array, got {type(x).__name__}")
    if x.ndim not in (1, 2):
        raise ValueError(f"{name}: a request must be 1-D or 2-D (one example, no batch axis), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: a request must be a float array, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{name}: empty request of shape {x.shape}")


# ---- runtimes ----------------------------------------------------------------------------------------
def onnx_batch_fn(path: str | Path, threads: int = 1) -> RunBatch:
    """A run_batch for an ONNX model on onnxruntime's CPUExecutionProvider (intra-op `threads`, inter-op 1,
    the session options of `edgeser.runtimes.onnx_runner`). A model with a static batch axis is run in
    padded chunks of that size."""
    from edgeser.runtimes import onnx_runner

    # idle onnxruntime threads sleep: spinning ones take the cores from the Python threads that feed them
    runner = onnx_runner(Path(path), threads=threads, spinning=False)

    def run_batch(x: np.ndarray) -> np.ndarray:
        return runner(np.ascontiguousarray(x, dtype=np.float32), batch_size=len(x))

    return run_batch


# ---- measurement -------------------------------------------------------------------------------------
def _percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(np.mean(ms))}


def batch_call_latency(run_batch: RunBatch, request: np.ndarray, batch: int, runs: int = 20,
                       warmup: int = 3) -> dict:
    """Latency of one direct run_batch call on `batch` copies of the request (no queue, no thread): the
    model's own throughput ceiling at that batch is batch / p50."""
    from edgeser.timing import time_calls

    x = np.ascontiguousarray(np.stack([request] * batch))
    lat = _percentiles(time_calls(lambda: run_batch(x), runs, warmup))
    return {**lat, "runs": runs, "batch": batch, "ceiling_rps": batch / (lat["p50_ms"] / 1000)}


def single_request_latency(run_batch: RunBatch, request: np.ndarray, runs: int = 50, warmup: int = 5) -> dict:
    """Latency of one request run alone at batch 1, calling run_batch directly (no queue, no thread)."""
    return batch_call_latency(run_batch, request, 1, runs, warmup)


def load_test(batcher: DynamicBatcher, request: np.ndarray, concurrency: int,
              requests_per_client: int | None = None, duration_s: float | None = None,
              warmup: int = 2, timeout_s: float = 30.0) -> dict:
    """`concurrency` client threads, each in a closed loop (submit, wait for the result, repeat).

    Each client first sends `warmup` untimed requests; then all start together and stop after
    `requests_per_client` requests or `duration_s` seconds, whichever comes first (at least one bound is
    required). Every wait has a hard `timeout_s`; a client whose wait times out stops. Latency is submit to
    result per request; throughput is completed requests / wall time of the timed section.
    """
    if requests_per_client is None and duration_s is None:
        raise ValueError("load_test needs requests_per_client or duration_s (or both)")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    max_requests = requests_per_client if requests_per_client is not None else float("inf")
    ready = threading.Barrier(concurrency + 1)  # every client has finished its warm-up
    go = threading.Event()
    t0 = [0.0]  # set by the main thread before `go`
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    ends = [0.0] * concurrency
    failures = [Counter() for _ in range(concurrency)]

    def client(i: int) -> None:
        try:
            for _ in range(warmup):
                batcher.infer(request, timeout=timeout_s)
        except Exception:  # noqa: BLE001  the timed loop counts failures; warm-up only warms
            pass
        ready.wait(timeout_s * (warmup + 1))
        if not go.wait(timeout_s):
            return
        deadline = t0[0] + duration_s if duration_s is not None else float("inf")
        lat = latencies[i]
        while len(lat) + failures[i]["errors"] < max_requests and time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                batcher.infer(request, timeout_s)
            except FutureTimeout:
                failures[i]["timeouts"] += 1
                break
            except Exception:  # noqa: BLE001  a failed request is counted, the client goes on
                failures[i]["errors"] += 1
                continue
            lat.append((time.perf_counter() - t) * 1000)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=client, args=(i,), name=f"load-client-{i}", daemon=True)
               for i in range(concurrency)]
    for th in threads:
        th.start()
    ready.wait(timeout_s * (warmup + 1))
    # warm-up requests are all answered by now, so the counters from here on cover exactly the timed part
    before = batcher.stats
    t0[0] = time.perf_counter()
    go.set()
    bound = (duration_s if duration_s is not None else max_requests * timeout_s) + timeout_s
    join_deadline = t0[0] + bound
    for th in threads:
        th.join(max(0.0, join_deadline - time.perf_counter()))
    if any(th.is_alive() for th in threads):
        raise TimeoutError(f"load_test: clients still running {bound:.1f} s after the start")
    after = batcher.stats
    elapsed = max(ends) - t0[0]
    all_ms = [v for lat in latencies for v in lat]
    batches = after["batches"] - before["batches"]
    served = after["requests"] - before["requests"]
    return {"concurrency": concurrency, "requests": len(all_ms),
            "errors": sum(f["errors"] for f in failures), "timeouts": sum(f["timeouts"] for f in failures),
            "elapsed_s": elapsed, "throughput_rps": len(all_ms) / elapsed if elapsed > 0 else 0.0,
            **_percentiles(all_ms), "mean_batch_size": served / batches if batches else 0.0,
            "max_batch_size": batcher.max_batch, "max_wait_ms": batcher.max_wait_ms}


def _default_request(path: Path, seed: int) -> np.ndarray:
    import onnxruntime as ort

    shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) for d in shape):
        raise ValueError(f"{path}: input shape {shape} is not static past the batch axis; pass request=")
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def compare_batching(onnx_path: str | Path, concurrencies: tuple[int, ...] = (1, 8, 32),
                     threads: tuple[int, ...] = (1, 2), max_wait_ms: tuple[float, ...] = (1.0, 2.0, 5.0),
                     max_batch: int = 32, duration_s: float = 3.0, warmup: int = 2, single_runs: int = 50,
                     request: np.ndarray | None = None, seed: int = 0) -> dict:
    """Batch-1 serving (max_batch=1) against dynamic batching (max_batch, each max_wait_ms) for an ONNX model,
    per onnxruntime intra-op thread count and client concurrency, plus the single-request latency without
    the service and the direct call at batch max_batch (the model's throughput ceiling). Each load test runs
    `duration_s` seconds.

    Returns {"single": {threads: latency dict}, "ceiling": {threads: batch_call_latency dict}, "rows": [...]};
    a row is load_test's dict plus "threads", "mode" ("batch1" or "dynamic"), and for dynamic rows:
      speedup              throughput over the batch-1 row of the same threads and concurrency;
      p95_over_single_p50  p95 over the single-request p50 of the same threads;
      efficiency           throughput over the ceiling (max_batch / the direct batch-max_batch call's p50);
      p99_bound_ms         max_wait_ms + 2 x that call's p50: a request waits at most for the call in progress,
                           its own gathering and its own call, and p99_within_bound says whether p99 kept to it;
      overhead             p50 over the single-request p50, minus 1: what the service adds to a call.
    """
    path = Path(onnx_path)
    x = request if request is not None else _default_request(path, seed)
    single: dict[int, dict] = {}
    ceiling: dict[int, dict] = {}
    rows: list[dict] = []
    for t in threads:
        run_batch = onnx_batch_fn(path, threads=t)
        single[t] = single_request_latency(run_batch, x, runs=single_runs)
        ceiling[t] = batch_call_latency(run_batch, x, max_batch)
        for c in concurrencies:
            with DynamicBatcher(run_batch, max_batch=1, max_wait_ms=0.0, name="batch1") as b:
                base = {"threads": t, "mode": "batch1", **load_test(b, x, c, duration_s=duration_s, warmup=warmup)}
            rows.append(base)
            for w in max_wait_ms:
                with DynamicBatcher(run_batch, max_batch=max_batch, max_wait_ms=w, name="dynamic") as b:
                    r = load_test(b, x, c, duration_s=duration_s, warmup=warmup)
                speedup = r["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else float("nan")
                bound = w + 2 * ceiling[t]["p50_ms"]
                rows.append({"threads": t, "mode": "dynamic", **r, "speedup": speedup,
                             "p95_over_single_p50": r["p95_ms"] / single[t]["p50_ms"],
                             "efficiency": r["throughput_rps"] / ceiling[t]["ceiling_rps"],
                             "p99_bound_ms": bound, "p99_within_bound": bool(r["p99_ms"] <= bound),
                             "overhead": r["p50_ms"] / single[t]["p50_ms"] - 1})
    return {"model": str(path), "request_shape": list(x.shape), "duration_s": duration_s,
            "single": single, "ceiling": ceiling, "rows": rows}
