"""Every seed offset in one table. Each random stream of a run is recipe.seed + its offset, so the streams are
distinct (a shuffle does not repeat an augmentation's draws) and each stays the same whether or not the stages
before it ran in this process (`--resume` skips them)."""
from __future__ import annotations

# torch / numpy / python global generators at the start of each stage (1000 apart: room for a stage's loops)
STAGE = {"data": 0, "teacher": 1000, "distill": 2000, "prune": 3000, "qat": 4000, "export": 5000,
         "verify": 6000, "report": 7000}

# training loops: batch order, crops and augmentation of each (train.fit's seed)
TEACHER_FIT = 0
DISTILL_FIT = 1
PRUNE_FIT = 2
QAT_FIT = 3
PRUNE_STEP = 10  # + the step number: the fine-tune between steps of prune.target macs / latency
KD_VIEWS = 100  # the augmented views of the KD set (kd.kd_set) and their augmentation
