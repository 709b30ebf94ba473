"""DynamicBatcher, load_test and the ONNX run_batch: tiny deterministic functions and one tiny ONNX model."""
from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from edgeser.serving import (DynamicBatcher, batch_call_latency, compare_batching, load_test, onnx_batch_fn,
                             single_request_latency)

W = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)


def matmul(x: np.ndarray) -> np.ndarray:
    return x @ W


def slow_matmul(x: np.ndarray) -> np.ndarray:
    time.sleep(0.002)
    return x @ W


def requests(n: int, dim: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_each_future_gets_its_own_row_under_concurrency():
    xs = requests(256)
    with DynamicBatcher(matmul, max_batch=16, max_wait_ms=5) as b, ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(b.submit, xs))
        results = [f.result(5) for f in futures]
        stats = b.stats
    for x, y in zip(xs, results):
        assert y.shape == (4,)
        assert np.allclose(y, matmul(x[None])[0], atol=1e-6)
    assert stats["requests"] == len(xs)
    assert stats["batches"] < len(xs)  # some requests shared a call


def test_different_shapes_are_never_stacked_together():
    seen: list[tuple] = []

    def double(x):
        seen.append(x.shape)
        return x * 2

    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(s).astype(np.float32) for s in [(16,), (8,), (2, 16), (16,), (8,), (2, 16)] * 10]
    with DynamicBatcher(double, max_batch=32, max_wait_ms=20) as b:
        futures = [b.submit(x) for x in xs]
        results = [f.result(5) for f in futures]
    for x, y in zip(xs, results):
        assert y.shape == x.shape and np.allclose(y, 2 * x)
    assert {s[1:] for s in seen} == {(16,), (8,), (2, 16)}
    assert sum(s[0] for s in seen) == len(xs)
    assert len(seen) < len(xs)  # same-shape requests still batched


def test_batches_form_under_concurrency_and_respect_max_batch():
    xs = requests(16 * 15, seed=3)
    with DynamicBatcher(slow_matmul, max_batch=8, max_wait_ms=2) as b:
        def client(rows):
            return [b.infer(x, timeout=5) for x in rows]

        with ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(client, np.split(xs, 16)))
        stats = b.stats
    assert np.allclose(np.concatenate([np.stack(o) for o in outs]), matmul(xs), atol=1e-6)
    assert stats["mean_batch_size"] > 1
    assert 1 < stats["max_batch_size"] <= 8
    assert max(stats["histogram"]) <= 8
    assert sum(stats["histogram"].values()) == stats["batches"]
    assert sum(k * v for k, v in stats["histogram"].items()) == stats["requests"] == len(xs)


def _burst(b: DynamicBatcher, n: int) -> None:
    """n requests in flight at once (then answered): the batcher has seen company of n."""
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda x: b.infer(x, timeout=5), requests(n, seed=11)))


def test_max_wait_bounds_a_lone_request_once_company_has_been_seen():
    x = requests(1)[0]
    with DynamicBatcher(slow_matmul, max_batch=32, max_wait_ms=50) as b:
        _burst(b, 8)
        assert b.expected_batch > 1
        t = time.perf_counter()
        y = b.infer(x, timeout=5)
        waited = time.perf_counter() - t
    assert np.allclose(y, matmul(x[None])[0])
    assert 0.045 <= waited < 0.05 + 0.25  # waits for the company it expects up to max_wait, not longer


def test_a_lone_client_never_waits_for_company():
    """Closed loop, one client: only one request is ever in flight, so none waits max_wait_ms (50 ms)."""
    x = requests(1)[0]
    with DynamicBatcher(matmul, max_batch=32, max_wait_ms=50) as b:
        times = []
        for _ in range(20):
            t = time.perf_counter()
            b.infer(x, timeout=5)
            times.append(time.perf_counter() - t)
        assert b.expected_batch == 1
    assert max(times) < 0.025


def test_a_caller_that_resubmits_the_moment_it_is_answered_counts_once():
    """A request is counted out of flight before its caller is answered: a client that resubmits from inside
    its answer (a done callback runs before set_result returns) is still one client, not two."""
    x = requests(1)[0]
    with DynamicBatcher(matmul, max_batch=32, max_wait_ms=50) as b:
        done = threading.Event()
        left = [10]

        def again(_f):
            left[0] -= 1
            if left[0] > 0:
                b.submit(x).add_done_callback(again)
            else:
                done.set()

        b.submit(x).add_done_callback(again)
        assert done.wait(5)
        assert b.expected_batch == 1


def test_a_lone_request_runs_in_the_calling_thread_and_a_crowd_in_the_worker():
    where = []

    def fn(x):
        where.append((threading.current_thread().name, len(x)))
        return x @ W

    x = requests(1)[0]
    with DynamicBatcher(fn, max_batch=32, max_wait_ms=20) as b:
        b.infer(x, timeout=5)
        assert where == [(threading.current_thread().name, 1)]
        assert b.stats["batches"] == 1 and b.stats["requests"] == 1
        where.clear()
        futures = [b.submit(x) for x in requests(6)]  # submit() always queues
        [f.result(5) for f in futures]
    assert where and all(name == "batcher-worker" for name, _ in where)


def test_expected_company_is_forgotten_after_history_gatherings():
    x = requests(1)[0]
    with DynamicBatcher(slow_matmul, max_batch=32, max_wait_ms=20, history=4) as b:
        _burst(b, 8)
        assert b.expected_batch >= 2
        for _ in range(6):  # lone calls: each gathering's peak is 1
            b.infer(x, timeout=5)
        assert b.expected_batch == 1
        t = time.perf_counter()
        b.infer(x, timeout=5)
        assert time.perf_counter() - t < 0.015


def test_a_full_house_runs_before_the_deadline():
    """8 closed-loop clients against max_batch 32 and max_wait 200 ms: once 8 have been seen in flight, a
    gathering that has all 8 runs at once instead of waiting 200 ms for 24 that never come."""
    x = requests(1)[0]
    with DynamicBatcher(slow_matmul, max_batch=32, max_wait_ms=200) as b:
        r = load_test(b, x, concurrency=8, requests_per_client=10, duration_s=20, warmup=2)
    assert r["requests"] == 80 and r["errors"] == 0
    assert r["p50_ms"] < 100  # about one 2 ms call; the fixed wait would make it >= 200
    assert r["mean_batch_size"] > 4


def test_a_full_batch_runs_without_waiting_for_max_wait():
    xs = requests(4, seed=4)
    with DynamicBatcher(matmul, max_batch=4, max_wait_ms=5000) as b:
        t = time.perf_counter()
        results = [f.result(5) for f in [b.submit(x) for x in xs]]
        waited = time.perf_counter() - t
        stats = b.stats
    assert waited < 1.0
    assert stats["histogram"] == {4: 1}
    assert np.allclose(np.stack(results), matmul(xs), atol=1e-6)


def test_run_batch_exception_reaches_every_future_and_worker_survives():
    def picky(x):
        if (x[:, 0] < 0).any():
            raise ArithmeticError("negative first feature")
        return x @ W

    good = np.abs(requests(3, seed=5))
    bad = good.copy()
    bad[1, 0] = -1.0
    with DynamicBatcher(picky, max_batch=3, max_wait_ms=5000) as b:
        futures = [b.submit(x) for x in bad]  # fills one batch of 3
        for f in futures:
            with pytest.raises(ArithmeticError, match="negative first feature"):
                f.result(5)
        after = [b.submit(x) for x in good]
        assert np.allclose(np.stack([f.result(5) for f in after]), good @ W, atol=1e-6)
        stats = b.stats
    assert stats["errors"] == 1 and stats["batches"] == 1 and stats["requests"] == 3


def test_run_batch_returning_the_wrong_number_of_rows_is_an_error():
    with DynamicBatcher(lambda x: x[:1], max_batch=2, max_wait_ms=5000) as b:
        futures = [b.submit(x) for x in requests(2)]
        for f in futures:
            with pytest.raises(ValueError, match="returned shape"):
                f.result(5)


@pytest.mark.parametrize("bad, why", [
    ([0.1, 0.2], "numpy array"),
    (3.0, "numpy array"),
    (np.zeros((2, 3, 4), np.float32), "1-D or 2-D"),
    (np.ones((), np.float32), "1-D or 2-D"),
    (np.arange(8), "float"),
    (np.array(["a", "b"]), "float"),
    (np.zeros(0, np.float32), "empty"),
])
def test_bad_request_raises_value_error(bad, why):
    with DynamicBatcher(matmul) as b:
        with pytest.raises(ValueError, match=why):
            b.submit(bad)
        assert b.stats["requests"] == 0


def test_submit_after_close_raises_and_pending_requests_fail():
    started, release = threading.Event(), threading.Event()

    def blocking(x):
        started.set()
        assert release.wait(5)
        return x @ W

    xs = requests(2, seed=6)
    b = DynamicBatcher(blocking, max_batch=1)
    running = b.submit(xs[0])
    assert started.wait(5)
    pending = b.submit(xs[1])  # queued behind the running call
    closer = threading.Thread(target=b.close)
    closer.start()
    for _ in range(500):
        if b.closed:
            break
        time.sleep(0.001)
    release.set()
    closer.join(5)
    assert not closer.is_alive()
    assert np.allclose(running.result(5), xs[0] @ W, atol=1e-6)  # the call in progress finishes
    with pytest.raises(RuntimeError, match="closed"):
        pending.result(5)
    with pytest.raises(RuntimeError, match="after close"):
        b.submit(xs[0])


def test_context_manager_closes():
    with DynamicBatcher(matmul) as b:
        assert b.infer(requests(1)[0], timeout=5).shape == (4,)
    assert b.closed
    with pytest.raises(RuntimeError):
        b.submit(requests(1)[0])


def test_load_test_counts_requests_and_reports_sane_latency():
    x = requests(1)[0]
    with DynamicBatcher(slow_matmul, max_batch=8, max_wait_ms=1) as b:
        r = load_test(b, x, concurrency=4, requests_per_client=25, duration_s=10, warmup=2)
        stats = b.stats
    assert r["requests"] == 100 and r["errors"] == 0 and r["timeouts"] == 0
    assert r["concurrency"] == 4
    assert stats["requests"] == 100 + 4 * 2  # timed + warm-up
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["p50_ms"] >= 2.0  # every request includes one 2 ms run_batch call
    assert r["throughput_rps"] == pytest.approx(r["requests"] / r["elapsed_s"])
    assert 1.0 <= r["mean_batch_size"] <= 4  # at most 4 requests are ever in flight


def test_load_test_stops_at_its_time_bound():
    x = requests(1)[0]
    with DynamicBatcher(slow_matmul, max_batch=8, max_wait_ms=1) as b:
        t = time.perf_counter()
        r = load_test(b, x, concurrency=3, requests_per_client=10**6, duration_s=0.3, warmup=1)
        took = time.perf_counter() - t
    assert 0 < r["requests"] < 3 * 10**6
    assert 0.3 <= r["elapsed_s"] < 1.0 and took < 2.0
    with pytest.raises(ValueError, match="requests_per_client or duration_s"):
        load_test(b, x, concurrency=1)


def test_load_test_counts_failed_requests():
    def failing(x):
        raise OSError("device lost")

    with DynamicBatcher(failing, max_batch=4, max_wait_ms=1) as b:
        r = load_test(b, requests(1)[0], concurrency=2, requests_per_client=5, duration_s=5, warmup=1)
    assert r["errors"] == 10 and r["requests"] == 0 and r["throughput_rps"] == 0


def test_single_request_latency_times_batch_one_calls():
    shapes = []

    def fn(x):
        shapes.append(x.shape)
        time.sleep(0.001)
        return x @ W

    r = single_request_latency(fn, requests(1)[0], runs=10, warmup=2)
    assert r["runs"] == 10 and set(shapes) == {(1, 16)} and len(shapes) == 12
    assert 1.0 <= r["p50_ms"] <= r["p95_ms"]


# ---- a real ONNX model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 64),), str(path), dynamo=True, external_data=False,
                          opset_version=18, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    return model, path


def test_onnx_batched_serving_matches_the_model(tiny_onnx):
    model, path = tiny_onnx
    run_batch = onnx_batch_fn(path, threads=1)
    xs = requests(64, dim=64, seed=7)
    with torch.no_grad():
        expected = model(torch.from_numpy(xs)).numpy()
    with DynamicBatcher(run_batch, max_batch=16, max_wait_ms=5) as b, ThreadPoolExecutor(8) as pool:
        results = [f.result(5) for f in pool.map(b.submit, xs)]
        stats = b.stats
    assert np.allclose(np.stack(results), expected, atol=1e-5)
    alone = np.concatenate([run_batch(x[None]) for x in xs])
    assert np.allclose(np.stack(results), alone, atol=1e-5)
    assert stats["batches"] < len(xs)


def test_compare_batching_on_a_tiny_onnx(tiny_onnx):
    _, path = tiny_onnx
    out = compare_batching(path, concurrencies=(1, 4), threads=(1,), max_wait_ms=(1.0,), duration_s=0.2,
                           warmup=1, single_runs=5, request=requests(1, dim=64)[0])
    assert set(out["single"]) == {1} and out["single"][1]["p50_ms"] > 0
    assert [(r["mode"], r["concurrency"]) for r in out["rows"]] == \
        [("batch1", 1), ("dynamic", 1), ("batch1", 4), ("dynamic", 4)]
    for r in out["rows"]:
        assert r["requests"] > 0 and r["errors"] == 0 and r["throughput_rps"] > 0
        assert r["mean_batch_size"] >= 1
    base = out["rows"][2]
    assert base["mean_batch_size"] == 1.0
    dyn = out["rows"][3]
    assert dyn["speedup"] == pytest.approx(dyn["throughput_rps"] / base["throughput_rps"])
    assert dyn["mean_batch_size"] <= 4
    ceil = out["ceiling"][1]
    assert ceil["batch"] == 32 and ceil["ceiling_rps"] == pytest.approx(32 / (ceil["p50_ms"] / 1000))
    assert dyn["efficiency"] == pytest.approx(dyn["throughput_rps"] / ceil["ceiling_rps"])
    assert dyn["p99_bound_ms"] == pytest.approx(1.0 + 2 * ceil["p50_ms"])
    assert dyn["p99_within_bound"] == (dyn["p99_ms"] <= dyn["p99_bound_ms"])


def test_batch_call_latency_calls_run_batch_at_the_batch_size():
    shapes = []

    def fn(x):
        shapes.append(x.shape)
        return x @ W

    r = batch_call_latency(fn, requests(1)[0], 8, runs=5, warmup=1)
    assert set(shapes) == {(8, 16)} and len(shapes) == 6
    assert r["batch"] == 8 and r["ceiling_rps"] == pytest.approx(8000 / r["p50_ms"])
