"""Register torch.ops.quantized_decomposed (from torchao) without its import-time chatter."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch


def _register():
    quiet_loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree", "torch")]
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import torchao.quantization.pt2e  # noqa: F401
    finally:
        for lg, lv in zip(quiet_loggers, levels):
            lg.setLevel(lv)


_register()
QD = torch.ops.quantized_decomposed
