"""Distributed data-parallel training under torchrun (one process per rank; gloo on CPU, NCCL for CUDA tensors).

    torchrun --nproc_per_node=N -m edgeser compress --recipe R.yaml --out RUN

Nothing here does anything in a single process: with WORLD_SIZE unset or 1, `init()` starts no process group,
every helper is the identity (or runs its function directly), and `fit()` trains exactly as before.

Under torchrun (WORLD_SIZE > 1):
- the teacher, distill, prune fine-tune and QAT loops train with DistributedDataParallel. Each rank takes a
  disjoint, interleaved share of every global batch of the epoch's permutation (`shard`: DistributedSampler's
  `indices[rank::world_size]` split); the per-rank batch is the recipe's `batch_size`, so the global batch is
  world_size x batch_size, and the global batches are exactly those a single process with that batch size would
  draw (same generator, same seed): DDP's gradient average equals that run's big-batch gradient up to float
  rounding (BatchNorm still normalises with per-rank batch statistics, as in any DDP run);
- validation runs on rank 0 and its metrics are broadcast, so the best epoch and the LR schedule are the same
  on every rank; the epoch loss is the mean over all ranks' rows;
- only rank 0 writes (stage metrics, models, caches, artifacts, reports, manifest); the other ranks wait at a
  barrier and read what it wrote. Multi-node runs therefore need the run folder (and the corpus) on a file
  system every node sees at the same path;
- export, verify and report run on rank 0 only; the other ranks stop after the last training stage's barrier.
"""
from __future__ import annotations

import atexit
import datetime
import gc
import os
from typing import Callable

import torch
import torch.distributed as dist

# rank r > 0 draws its augmentation / dropout randomness from seed + r * RANK_SEED_STRIDE
RANK_SEED_STRIDE = 7919


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def default_backend() -> str:
    """EDGESER_DIST_BACKEND, else gloo for CPU tensors plus NCCL for CUDA tensors where CUDA and NCCL exist.

    The training loops keep the model on the CPU (fit() moves nothing to a GPU), so their gradients travel over
    gloo; a CUDA tensor handed to a collective would go over NCCL."""
    if os.environ.get("EDGESER_DIST_BACKEND"):
        return os.environ["EDGESER_DIST_BACKEND"]
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT) when WORLD_SIZE > 1. Idempotent; returns whether training is distributed. The group is
    destroyed at exit. Collective timeout: EDGESER_DIST_TIMEOUT_MIN minutes (default 120: rank 0 alone computes
    the teacher-logit cache and the latency probes while the others wait)."""
    if is_enabled():
        return True
    if _env_world_size() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        minutes = float(os.environ.get("EDGESER_DIST_TIMEOUT_MIN", "120"))
        backend = backend or default_backend()
        if "nccl" in backend and torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group(backend=backend, init_method="env://",
                                timeout=datetime.timedelta(minutes=minutes))
        atexit.register(cleanup)
    return is_enabled()


def cleanup() -> None:
    """Destroy the process group (registered at exit by init). DDP wrappers still waiting for the garbage
    collector go first: a reducer destroyed after its process group aborts the process."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_enabled() else 0


def is_main() -> bool:
    """Rank 0 (always true in a single process): the one rank that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def _reduce(x, op):
    if not is_enabled():
        return x
    t = x.detach().clone() if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return t if isinstance(x, torch.Tensor) else t.item()


def all_reduce_sum(x):
    """Sum of a float or tensor over ranks (the value itself in one process)."""
    return _reduce(x, dist.ReduceOp.SUM)


def all_reduce_mean(x):
    """Mean of a float or tensor over ranks (the value itself in one process)."""
    s = _reduce(x, dist.ReduceOp.SUM)
    return s / world_size() if is_enabled() else s


def broadcast_object(obj, src: int = 0):
    """Rank src's (picklable) object on every rank."""
    if not is_enabled():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class MainRankError(RuntimeError):
    """Raised on the other ranks when the function rank 0 ran for them (on_main) failed there."""


def on_main(fn: Callable):
    """fn() computed on rank 0 only and its result broadcast to every rank (fn() itself in one process), e.g. a
    validation pass, a latency probe, a corpus written to disk. Doubles as a barrier. An exception on rank 0 is
    re-raised there and reported to the other ranks as MainRankError, so none of them hangs."""
    if not is_enabled():
        return fn()
    out, err = None, None
    if is_main():
        try:
            out = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others were told
            err = e
    box = broadcast_object(("error", f"{type(err).__name__}: {err}") if err is not None else ("ok", out))
    if err is not None:
        raise err
    if box[0] == "error":
        raise MainRankError(f"rank 0 failed: {box[1]}")
    return box[1]


@torch.no_grad()
def sync_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank src's parameters and buffers (BatchNorm statistics, quantiser scales) to every rank."""
    if not is_enabled():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def rank_seed(seed: int) -> int:
    """A per-rank seed for randomness that should differ between ranks (augmentation, dropout, noise picks): the
    seed itself on rank 0 and in one process."""
    return seed + RANK_SEED_STRIDE * rank()


def shard(batch: torch.Tensor, rank_: int | None = None, world: int | None = None) -> tuple[torch.Tensor, int, float]:
    """This rank's rows of a global batch: (indices, rows that count, loss weight).

    Rows rank, rank + W, rank + 2W, ...: DistributedSampler's interleaved split (`indices[rank::num_replicas]`,
    shuffle=False) applied to each global batch, so the shards are disjoint and together are the batch. With
    equal shards the weight is 1. A global batch whose size m is not a multiple of W (the epoch's last) gives
    uneven shards; weighting each rank's mean loss by rows * W / m makes DDP's average of the rank gradients the
    gradient of the mean over the m rows, as in a single process. Where m < W a rank would get no row: it runs
    the batch's first row with weight 0 and counts 0 rows (an empty batch would give a NaN loss).
    In one process: (batch, len(batch), 1.0)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    m = len(batch)
    if w == 1:
        return batch, m, 1.0
    mine = batch[r::w]
    if len(mine) == 0:
        return batch[:1], 0, 0.0
    return mine, len(mine), len(mine) * w / m


class _LossModule(torch.nn.Module):
    """The whole loss computation as one module's forward, for DDP.

    The stages' losses call more than forward() (SoundNet8.embed and .head, Student.forward_features) and
    train parameters outside the model (the hint regressors of feature distillation): DDP(model) would not
    see them, and gradients computed outside DDP.forward are silently not synchronised. Wrapping the loss keeps
    every parameter the optimiser trains under DDP. Dropout draws from this rank's own generator (rank_seed),
    the global generator is left as it was."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, extra_params: list, seed: int):
        super().__init__()
        self.model = model
        self.extra = torch.nn.ParameterList(extra_params)
        self.loss_fn = loss_fn
        self.rng = torch.Generator().manual_seed(rank_seed(seed)).get_state()

    def forward(self, x, y, idx):
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng)
            loss = self.loss_fn(self.model, x, y, idx)
            self.rng = torch.get_rng_state()
        return loss


class _DDPStep:
    """loss_fn(model, x, y, idx) through DistributedDataParallel over a _LossModule, rebuilt whenever the set of
    parameters that need a gradient changes (the teacher's progressive unfreezing): DDP registers exactly the
    parameters that need a gradient when it is built, so a frozen block is not waited for, and a block unfrozen
    later is synchronised from its first step on."""

    def __init__(self, model, loss_fn, params, seed: int, ddp_kwargs: dict):
        own = {id(p) for p in model.parameters()}
        extra = [p for p in (params or []) if id(p) not in own]
        self.module = _LossModule(model, loss_fn, extra, seed)
        self.params = list(self.module.parameters())
        # parameters outside the model (hint regressors) see no row in a batch of SMOTE rows: that needs DDP's
        # search for unused parameters; a model whose trainable parameters all reach the loss does not
        self.kwargs = {"find_unused_parameters": bool(extra)} | ddp_kwargs
        if any(p.is_cuda for p in self.params):
            self.kwargs.setdefault("device_ids", [torch.cuda.current_device()])
        self.ddp, self.flags = None, None

    def __call__(self, x, y, idx):
        flags = tuple(p.requires_grad for p in self.params)
        if self.ddp is None or flags != self.flags:
            if self.ddp is not None:  # the old reducer goes before the new one is built
                self.ddp = None
                gc.collect()
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.module, **self.kwargs)
            self.flags = flags
        return self.ddp(x, y, idx)


def wrap(model: torch.nn.Module, loss_fn: Callable, params=None, seed: int = 0, **ddp_kwargs) -> Callable:
    """A callable (x, y, idx) -> loss: loss_fn(model, x, y, idx), under DistributedDataParallel when distributed
    (`ddp_kwargs` go to DDP). `params`, the optimiser's list, may hold parameters outside `model` (the hint
    regressors): they join the DDP module. A parameter frozen in a step gets no gradient on any rank and keeps
    grad None, so AdamW skips it exactly as in one process. In one process: functools.partial(loss_fn, model)."""
    if not is_enabled():
        import functools

        return functools.partial(loss_fn, model)
    return _DDPStep(model, loss_fn, params, seed, ddp_kwargs)


def skip_stage(main_only: bool) -> bool:
    """True on ranks other than 0 for a stage only rank 0 runs (stage_spec.Stage.main_only)."""
    return main_only and not is_main()


def stage_done(main_only: bool) -> None:
    """The barrier that ends every stage all ranks run (rank 0's files are complete after it)."""
    if not main_only:
        barrier()


class _ReadOnlyCheckpoint:
    """An epoch checkpoint as ranks other than 0 see it: they resume from rank 0's file, they never write it."""

    def __init__(self, checkpoint):
        self._checkpoint = checkpoint

    def load(self):
        return self._checkpoint.load()

    def save(self, state) -> None:
        pass

    def clear(self) -> None:
        pass


def main_writes(checkpoint):
    """`checkpoint` on rank 0 (and in one process); on the other ranks a read-only view of it."""
    return checkpoint if checkpoint is None or is_main() else _ReadOnlyCheckpoint(checkpoint)


class _MainOnlyCache:
    """A resume.StageCache under torchrun: rank 0 decides (lookup) and writes (mark, clear), every rank gets
    its answer, so all ranks skip or run the same stages."""

    def __init__(self, cache, main_only: set[str]):
        self._cache, self._main_only = cache, main_only

    def lookup(self, stage: str, key: str):
        if stage in self._main_only:  # only rank 0 gets there
            return self._cache.lookup(stage, key)
        return on_main(lambda: self._cache.lookup(stage, key))

    def mark(self, stage: str, key: str, outputs, extra: dict | None = None):
        if stage in self._main_only:
            return self._cache.mark(stage, key, outputs, extra)
        return on_main(lambda: self._cache.mark(stage, key, outputs, extra))

    def clear(self, stage: str) -> None:
        if is_main():
            self._cache.clear(stage)

    def __getattr__(self, name):
        return getattr(self._cache, name)


def main_only_cache(cache, main_only: set[str]):
    """`cache` itself in one process; under torchrun a view whose decisions and writes are rank 0's.
    main_only: the stages only rank 0 runs (it alone looks them up and marks them)."""
    return _MainOnlyCache(cache, main_only) if is_enabled() else cache
