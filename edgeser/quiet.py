"""Silence third-party chatter (prints, warnings, log lines) so the terminal shows our own progress."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

LOGGERS = ("torch", "torch.onnx", "torch.export", "torch.fx", "torch._dynamo", "torch.utils._pytree",
           "torchao", "coremltools")


@contextlib.contextmanager
def quiet():
    loggers = [logging.getLogger(n) for n in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
