"""Progress of a run without a terminal: one plain line every ``log_every`` steps instead of a refreshing bar."""

from __future__ import annotations

import logging
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

LOG = logging.getLogger("iiae.progress")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class PlainProgress(Callback):
    """Logs ``step N/total, loss, steps/s, ETA`` (logger ``iiae.progress``, INFO) every ``every`` steps and at the
    last step: what a redirected log (``iiae train > log.txt``) should hold, where Lightning's bar would write a
    carriage-return segment per step."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)
        self._started, self._first_step = 0.0, 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._started, self._first_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if step % self.every and step != total:
            return
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        rate = (step - self._first_step) / elapsed
        terms = getattr(pl_module, "last_terms", {})
        loss = f" loss {float(terms['loss']):.4g}" if "loss" in terms else ""
        eta = f", ETA {_duration((total - step) / rate)}" if rate > 0 and total > step else ""
        LOG.info("iiae: step %d/%d%s, %.2f steps/s%s", step, total, loss, rate, eta)
