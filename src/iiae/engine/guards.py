"""Lightning callbacks that stop a run cleanly instead of letting it crash or silently diverge.

- :class:`NonFiniteGuard`: a NaN or infinite loss term or gradient stops training before the optimiser
  applies it, naming the step and the term; with ``train.skip_nonfinite_steps = n`` the first n such steps
  are skipped instead (no update, batch-norm statistics restored). Under DDP the processes decide together:
  a NaN in one of them skips the step (or stops the run) in all.
- :class:`GracefulStop`: SIGTERM or Ctrl-C lets the current step finish, has it checkpointed (by
  :class:`iiae.engine.checkpointing.RunCheckpoint`), then stops with :class:`RunInterrupted`; a second Ctrl-C stops
  at once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from iiae.errors import NonFiniteError, RunInterrupted

LOG = logging.getLogger("iiae.engine")


def _kind(value: torch.Tensor) -> str:
    return "NaN" if bool(torch.isnan(value).any()) else "infinite"


class NonFiniteGuard(Callback):
    """Checks every loss term (``pl_module.last_terms``) and every gradient before each optimiser step."""

    def __init__(self, skip_limit: int = 0, checkpoint_dir: str | None = "checkpoints") -> None:
        """``checkpoint_dir``: where the run keeps its checkpoints (named in the error), None when it keeps none."""
        self.skip_limit, self.skipped, self.checkpoint_dir = skip_limit, 0, checkpoint_dir
        self._buffers: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = int(state_dict["skipped"])

    @staticmethod
    def find_problem(pl_module: torch.nn.Module) -> str | None:
        """What is not finite, or None: a loss term first (the total last), then a gradient."""
        terms: dict[str, torch.Tensor] = getattr(pl_module, "last_terms", {})
        checked = [(f"loss term {name}", terms[name]) for name in sorted(terms, key=lambda name: name == "loss")]
        checked += [(f"gradient of {name}", p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not checked:
            return None
        device = checked[-1][1].device  # some terms (kl_annealing) live on the CPU, the gradients on the GPU
        if bool(torch.stack([torch.isfinite(value).all().to(device) for _, value in checked]).all()):
            return None  # the usual case: one device synchronisation per step
        what, value = next((what, value) for what, value in checked if not bool(torch.isfinite(value).all()))
        return f"{what} is {_kind(value)}"

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.skip_limit > self.skipped:  # a skipped step must not leave its batch-norm statistics behind
            self._buffers = {name: buffer.detach().clone() for name, buffer in pl_module.named_buffers()}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        problem = self.find_problem(pl_module)
        if trainer.world_size > 1:  # DDP: every process skips (or stops) together, or their weights would part
            if not trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
                return
            problem = problem or "a loss term or gradient of another process is NaN or infinite"
        if problem is None:
            return
        step = trainer.global_step
        if self.skipped < self.skip_limit:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are not updated
            with torch.no_grad():
                for name, buffer in pl_module.named_buffers():
                    buffer.copy_(self._buffers[name])
            LOG.warning("iiae: warning: step %d: %s; step skipped (%d of train.skip_nonfinite_steps = %d)",
                        step, problem, self.skipped, self.skip_limit)  # fmt: skip
            return
        advice = (
            f"all {self.skip_limit} skips allowed by train.skip_nonfinite_steps are used"
            if self.skip_limit
            else "set train.skip_nonfinite_steps to skip such steps"
        )
        if self.checkpoint_dir is None:
            kept = "this run keeps no checkpoints"
        elif any(Path(self.checkpoint_dir).glob("*.ckpt")):
            kept = f"the newest checkpoint in {self.checkpoint_dir} holds the last good state"
        else:
            kept = "no checkpoint was written yet: --resume starts the run again from step 0"
        raise NonFiniteError(
            f"step {step} (numbered as in logs/metrics.csv): {problem}; training stopped before the update "
            f"({kept}; {advice})"
        )


class GracefulStop(Callback):
    """SIGTERM / Ctrl-C during training: finish the step, checkpoint it, then raise :class:`RunInterrupted`.

    ``stopping`` is decided at the end of each step (where :class:`iiae.engine.checkpointing.RunCheckpoint` looks at
    it); the error is raised at the start of the next step, after the checkpoint is written, or after
    ``trainer.fit`` returns if the signal came during the last step (see :meth:`raise_if_stopped`).
    """

    def __init__(self, resume_hint: str = "") -> None:
        self.signal: int | None = None
        self.stopping = False
        self.resume_hint = resume_hint
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signal = signum
        print(
            f"\niiae: {signal.Signals(signum).name} received: finishing the current step, then writing a checkpoint"
            + (" (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""),
            file=sys.stderr,
        )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in (signal.SIGINT, signal.SIGTERM):  # replaces Lightning's SIGTERM handler while training
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.stopping = self.signal is not None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.stopping:
            raise self.error(trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore_handlers()

    def error(self, step: int) -> RunInterrupted:
        assert self.signal is not None
        name = signal.Signals(self.signal).name
        hint = f"; continue with: {self.resume_hint}" if self.resume_hint else ""
        return RunInterrupted(f"stopped by {name} after {step} steps, checkpoint written{hint}", 128 + self.signal)

    def raise_if_stopped(self, step: int) -> None:
        """After ``trainer.fit``: a signal that came during the last step still stops the run."""
        if self.signal is not None:
            raise self.error(step)
