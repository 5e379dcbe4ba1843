"""Time budgets: `trainer.max_time` parsed once, and a run-length schedule (one-cycle,
cosine, poly) that follows the fraction of the budget spent, so it ends when the budget
does (with no epoch or step limit)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from seglab.errors import SeglabError


def parse_max_time(value: Any) -> timedelta | None:
    """`trainer.max_time` as Lightning reads it ("DD:HH:MM:SS", a dict of timedelta
    arguments, a timedelta), or None when unset; a one-line error for anything else."""
    if value is None:
        return None
    budget = None
    if isinstance(value, timedelta):
        budget = value
    elif isinstance(value, Mapping):
        try:
            budget = timedelta(**value)
        except TypeError as err:
            raise SeglabError(f"trainer.max_time={dict(value)}: {err}") from None
    elif len(parts := str(value).split(":")) == 4 and all(p.isdigit() for p in parts):
        days, hours, minutes, seconds = map(int, parts)
        budget = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if budget is None or budget <= timedelta(0):
        raise SeglabError(
            f"trainer.max_time={value!r} is not a positive duration; write DD:HH:MM:SS "
            "(trainer.max_time=00:12:00:00 for twelve hours)"
        )
    return budget


class TimeBudgetSchedule(LRScheduler):
    """A run-length schedule (one-cycle, cosine, poly) stretched over a time budget.

    The wrapped schedule is built for `resolution` steps; at every optimizer step it is
    advanced to the fraction of the budget spent so far (Lightning's `Timer`, which
    carries the time already spent across restarts), so the learning rate reaches the
    schedule's final value when the budget runs out, however the step time varies
    (validation, other jobs on the machine, a slower node after a requeue).

    Args:
        optimizer: the optimizer.
        build: makes the wrapped schedule for the optimizer and a length in steps.
        elapsed: seconds of the budget spent; `budget`: the whole budget, in seconds.
        resolution: steps of the wrapped schedule (the learning rate's granularity).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        build: Callable[[Optimizer, int], LRScheduler],
        elapsed: Callable[[], float],
        budget: float,
        resolution: int = 10_000,
    ) -> None:
        self.inner = build(optimizer, resolution)
        self.elapsed = elapsed
        self.budget = budget
        self.resolution = resolution
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # the inner schedule sets the rates itself
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        if not hasattr(self, "inner"):  # LRScheduler.__init__'s initial step
            return super().step()
        fraction = min(1.0, max(0.0, self.elapsed() / self.budget))
        # The wrapped schedules accept exactly `resolution` steps.
        target = min(self.resolution - 1, round(fraction * self.resolution))
        while self.inner.last_epoch < target:
            self.inner.step()
        self.last_epoch += 1
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "inner": self.inner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = state_dict["last_epoch"]
        self.inner.load_state_dict(state_dict["inner"])
        self._last_lr = self.inner.get_last_lr()


def timer_of(trainer: L.Trainer) -> Timer | None:
    """Lightning's Timer callback, present when `trainer.max_time` is set."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


class BudgetCheck(L.Callback):
    """Refuses a time budget that one training step already spends (Lightning would stop
    after that step, and the run would test an untrained model)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        timer = timer_of(trainer)
        if timer is None or trainer.global_step != 1 or timer.time_remaining("train") > 0:
            return
        spent = timer.time_elapsed("train")
        raise SeglabError(
            f"trainer.max_time ({timedelta(seconds=round(spent + timer.time_remaining('train')))}) "
            f"is shorter than one training step ({spent:.1f} s); give the run more time"
        )
