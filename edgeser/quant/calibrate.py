"""Calibrating and loading the quantised student (used by QAT, the prune latency probe, export and verify)."""
from __future__ import annotations

from pathlib import Path

import torch

from edgeser.models.io import build_student, read_model_file
from edgeser.quant.qstudent import QuantStudent


@torch.no_grad()
def calibrate(q: QuantStudent, x: torch.Tensor, batches: int, batch_size: int) -> None:
    """Set every activation scale from max-abs statistics (first batch initialises, later ones average)."""
    q.eval()
    q.set_observe(True)
    for m in q.act_quants():
        m.initialised.fill_(False)
    for i in range(min(batches, (len(x) + batch_size - 1) // batch_size)):
        chunk = x[i * batch_size : (i + 1) * batch_size]
        q.train()  # observers update in train mode (EMA); no dropout/BN in the quantised model
        q(chunk)
    q.eval()


def load_qat(path: Path) -> tuple[QuantStudent, dict]:
    """A QAT model file (stages/qat/model.pt): the quantised student and its float student's config."""
    cfg, state = read_model_file(path)
    q = QuantStudent(build_student(cfg))
    q.load_state_dict(state)
    return q.eval(), cfg
