"""Distributed data-parallel training (edgeser/distributed.py): 2 gloo ranks on loopback.

- fit() under DDP, 2 ranks x batch 8, against one process with batch 16 on the same data and seed: the same
  global batches, so the same weights up to float rounding; each rank's own random stream (rank_seed) inside
  the loss; the collectives (sum, mean, rank 0's parameters and buffers broadcast) and the rank gating;
- `torchrun --nproc_per_node=2` through the CLI on the tiny recipe: rank 0 alone writes (rank 1 runs with an
  audit hook that fails on any write under the run folder), the run is complete and verifies.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeser import distributed as dist
from edgeser.data.dataset import Corpus, Split
from edgeser.recipe import Train

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_EXTRA, N_VAL, SAMPLES, CLASSES = 63, 17, 24, 400, ["a", "b", "c", "d"]
# AdamW steps from float-rounding-level gradient differences stay far below this after 4 epochs (measured
# ~1e-7); a wrong shard, a missed gradient average or a frozen parameter that moved would be ~1e-3 or more
WEIGHT_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyNet(torch.nn.Module):
    """Conv front, linear head; no BatchNorm or dropout, so 2 x 8 rows and 16 rows give the same gradient."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 6, 16, stride=8)
        self.fc = torch.nn.Linear(6, len(CLASSES))

    def features(self, x):
        return torch.relu(self.conv(x.unsqueeze(1))).mean(-1)

    def forward(self, x):
        return self.fc(self.features(x))


def _problem():
    """A tiny corpus (train rows not a multiple of 16: an uneven last global batch; 17 extra rows: a last
    batch of one row, fewer than the ranks), the model, and a hint-like regressor outside the model."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.randint(0, len(CLASSES), (n,), generator=g)
        t = torch.arange(SAMPLES) / 16000
        x = torch.sin(2 * torch.pi * (300 + 200 * y[:, None]) * t) + 0.3 * torch.randn(n, SAMPLES, generator=g)
        return Split(x.float(), y, ["s"] * n)

    corpus = Corpus(CLASSES, {"train": split(N_TRAIN), "val": split(N_VAL), "test": split(4)})
    extra = split(N_EXTRA)
    torch.manual_seed(0)
    return corpus, extra, TinyNet(), torch.nn.Linear(6, 3)


def _fit(batch_size: int):
    from edgeser.train import fit

    corpus, extra, model, reg = _problem()
    draws = []

    def loss_fn(m, x, y, idx):  # calls more than forward(), and trains a parameter outside the model
        draws.append(float(torch.rand(())))  # what dropout would draw: recorded, kept out of the loss
        h = m.features(x)
        return F.cross_entropy(m.fc(h), y) + 0.01 * reg(h).pow(2).mean()

    def on_epoch(epoch):  # progressive unfreezing: the conv is frozen in epoch 1
        model.conv.requires_grad_(epoch > 1)

    conv0 = model.conv.weight.detach().clone()
    seen = {}

    def watch(epoch):
        on_epoch(epoch)
        if epoch == 2:
            seen["conv_after_frozen_epoch"] = model.conv.weight.detach().clone()

    cfg = Train(epochs=4, lr=1e-2, batch_size=batch_size, weight_decay=1e-2)
    info = fit(model, corpus, cfg, loss_fn, seed=3, params=list(model.parameters()) + list(reg.parameters()),
               on_epoch=watch, extra=extra)
    return {"info": info, "state": model.state_dict(), "reg": reg.state_dict(), "conv0": conv0, "draws": draws, **seen}


def _fit_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert dist.init() and dist.world_size() == 2 and dist.rank() == rank
    result = _fit(batch_size=8)
    bn = torch.nn.BatchNorm1d(3)  # rank 0's parameters AND buffers (BatchNorm statistics, quantiser scales)
    with torch.no_grad():
        bn.weight.fill_(rank + 1)
        bn.running_mean.fill_(rank + 1)
    dist.sync_module(bn)
    result["collectives"] = {"rank_seed": dist.rank_seed(3), "sum": dist.all_reduce_sum(float(rank + 1)),
                             "mean": dist.all_reduce_mean(float(rank + 1)), "on_main": dist.on_main(dist.rank),
                             "is_main": dist.is_main(), "bn_weight": bn.weight.tolist(),
                             "bn_mean": bn.running_mean.tolist(), "skip_export": dist.skip_stage(True),
                             "skip_qat": dist.skip_stage(False)}
    dist.barrier()
    torch.save(result, Path(out) / f"rank{rank}.pt")  # the test's own output, not a run folder


def test_shard_is_distributed_sampler_split():
    """Each rank's rows of a global batch are DistributedSampler's (shuffle=False) interleaved split; together
    they are the batch, and the loss weights make the rank average the mean over the batch."""
    from torch.utils.data import DistributedSampler

    batch = torch.randperm(100)[:14]
    for world in (2, 3, 4):
        shards = [dist.shard(batch, r, world) for r in range(world)]
        for r, (idx, rows, _) in enumerate(shards):
            sampler = list(DistributedSampler(range(len(batch)), num_replicas=world, rank=r, shuffle=False))
            assert idx.tolist() == batch[sampler[:rows]].tolist()
        assert sorted(torch.cat([s[0] for s in shards]).tolist()) == sorted(batch.tolist())
        assert sum(w for _, _, w in shards) / world == pytest.approx(1.0)  # (1/W) sum w_r * mean_r = mean
    idx, rows, w = dist.shard(batch[:1], 1, 2)  # fewer rows than ranks: a stand-in row with weight 0
    assert (idx.tolist(), rows, w) == (batch[:1].tolist(), 0, 0.0)
    assert dist.shard(batch) == (batch, 14, 1.0)  # one process: the batch itself


def test_single_process_helpers_are_no_ops():
    assert not dist.init() and not dist.is_enabled()  # WORLD_SIZE unset
    assert (dist.rank(), dist.world_size(), dist.is_main(), dist.rank_seed(5)) == (0, 1, True, 5)
    assert dist.all_reduce_sum(2.5) == 2.5 and dist.all_reduce_mean(2.5) == 2.5
    assert dist.broadcast_object({"a": 1}) == {"a": 1} and dist.on_main(lambda: 7) == 7
    dist.barrier()
    step = dist.wrap(torch.nn.Linear(2, 2), lambda m, x, y, idx: m(x).sum())
    assert not isinstance(step, torch.nn.Module) and step(torch.ones(1, 2), None, None).shape == ()


@pytest.mark.timeout(180)
def test_ddp_fit_matches_one_process_with_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fit_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    ref = _fit(batch_size=16)
    # every rank ends with the same model, history and best epoch
    assert r0["info"] == r1["info"]
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # and it is the one-process big-batch model, up to float rounding
    diffs = {k: (r0["state"][k] - ref["state"][k]).abs().max().item() for k in ref["state"]}
    diffs |= {f"reg.{k}": (r0["reg"][k] - ref["reg"][k]).abs().max().item() for k in ref["reg"]}
    print("max |w_ddp - w_ref|:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) < WEIGHT_ATOL, diffs
    assert r0["info"]["best_epoch"] == ref["info"]["best_epoch"]
    for h, hr in zip(r0["info"]["history"], ref["info"]["history"], strict=True):
        assert h["val_ua"] == hr["val_ua"] and h["lr"] == hr["lr"]
        assert h["loss"] == pytest.approx(hr["loss"], rel=1e-5)
    # the conv, frozen in epoch 1, did not move in it (grad None: AdamW skipped it, no weight decay either)
    assert torch.equal(r0["conv_after_frozen_epoch"], r0["conv0"])
    assert not torch.equal(r0["state"]["conv.weight"], r0["conv0"])
    # each rank draws the loss's randomness (dropout, augmentation) from its own seed: the seed itself on rank 0,
    # seed + 7919 on rank 1 (distributed.rank_seed); equal streams would apply the same noise to every shard
    steps = len(r0["draws"])
    assert steps == 4 * (4 + 2) and len(r1["draws"]) == steps  # 4 epochs x (63 rows / 16 + 17 extra / 16)
    for r, res in ((0, r0), (1, r1)):
        g = torch.Generator().manual_seed(3 + dist.RANK_SEED_STRIDE * r)
        assert res["draws"] == [float(torch.rand((), generator=g)) for _ in range(steps)], r
    assert r0["draws"] != r1["draws"]
    # the collectives and the rank gating the stages rely on
    c0, c1 = r0["collectives"], r1["collectives"]
    assert (c0["rank_seed"], c1["rank_seed"]) == (3, 3 + dist.RANK_SEED_STRIDE)
    assert c0["sum"] == c1["sum"] == 3.0 and c0["mean"] == c1["mean"] == 1.5 and c0["on_main"] == c1["on_main"] == 0
    assert (c0["is_main"], c1["is_main"]) == (True, False)
    assert (c0["skip_export"], c1["skip_export"], c0["skip_qat"], c1["skip_qat"]) == (False, True, False, False)
    assert c1["bn_weight"] == c0["bn_weight"] == [1.0] * 3 and c1["bn_mean"] == c0["bn_mean"] == [1.0] * 3


# --- torchrun end to end --------------------------------------------------------------------------------------

ENTRY = '''
import os, sys
run_dir = os.path.realpath(sys.argv.pop(1))
writes = []
if os.environ.get("RANK", "0") != "0":
    def hook(event, args):  # any write, rename, delete or mkdir under the run folder by this rank
        path = None
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1] or "r", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                path = args[0]
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree",
                       "os.truncate", "os.symlink", "os.link"):
            path = args[0]
        if path is not None and os.path.realpath(os.fsdecode(path)).startswith(run_dir):
            writes.append((event, os.fsdecode(path)))
    sys.addaudithook(hook)
from edgeser.cli import main
try:
    main()
finally:
    if writes:
        print(f"RANK {os.environ['RANK']} WROTE: {writes}", file=sys.stderr, flush=True)
        os._exit(3)
'''


@pytest.mark.timeout(240)
def test_torchrun_compress_rank0_writes_everything(tmp_path, tiny_recipe_path):
    """`torchrun --nproc_per_node=2` on the tiny recipe through the CLI: exit 0, one report, a complete run
    folder that `edgeser verify` accepts, and nothing written by rank 1."""
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(entry), str(run_dir), "compress", "--recipe",
           str(tiny_recipe_path), "--out", str(run_dir), "--no-progress",
           "--set", "export.formats=[onnx-int8]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=220)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert "WROTE" not in out
    assert out.count("report: ") == 1 and out.count("qat done in") == 1  # rank 1 printed nothing
    files = sorted(str(f.relative_to(run_dir)) for f in run_dir.rglob("*") if f.is_file())
    assert not [f for f in files if Path(f).name.startswith(".")], files  # no temp files left behind
    for f in ("recipe.json", "manifest.json", "report.json", "report.md", "artifacts/student_int8.onnx",
              "stages/distill/teacher_logits.pt", *[f"stages/{s}/model.pt" for s in ("teacher", "distill", "prune", "qat")],
              *[f"stages/{s}/metrics.json" for s in ("data", "teacher", "distill", "prune", "qat", "export", "verify")]):
        assert f in files, (f, files)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] and [a["name"] for a in report["artifacts"]] == ["onnx-int8"]
    distill = json.loads((run_dir / "stages/distill/metrics.json").read_text())
    assert len(distill["train"]["history"]) == 2  # every epoch once, not once per rank
    v = subprocess.run([sys.executable, "-m", "edgeser", "verify", str(run_dir)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout[-3000:] + v.stderr[-3000:]


def test_write_audit_catches_a_writing_rank(tmp_path):
    """The check above is not vacuous: a process that calls itself rank 1 but writes (here, alone, it is its
    own rank 0 and writes a corpus) is caught and exits 3."""
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    out = tmp_path / "synth"
    p = subprocess.run([sys.executable, str(entry), str(out), "data", "synth", "--out", str(out),
                        "--clips-per-class", "2", "--speakers", "2", "--seconds", "0.5"],
                       env={**os.environ, "RANK": "1", "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 3 and "RANK 1 WROTE" in p.stderr and "manifest.csv" in p.stderr, p.stderr[-2000:]
