"""How every benchmark times a run: a clock ticking at the end of each step, the warm-up
steps it leaves out, images/s from the ticks, runs alternated in back-to-back pairs, and
the median ratio of those pairs."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import lightning as L

WARMUP = 3  # steps excluded from every timing (allocator and kernel warm-up)

T = TypeVar("T")


class StepClock(L.Callback):
    """`time.perf_counter()` at the end of every step: call `tick()` from a raw loop, or
    pass it to a Trainer as a callback (training and test batches).

    Args:
        path: where to write `{"first_batch": ..., "times": [...]}` (JSON) when fitting
            ends. A clock that `seglab.train.train` builds from a `callbacks` entry of the
            config is not handed back to its caller; the file is. `first_batch` is the
            clock at the start of the first training batch (the end of the run's set-up).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.times: list[float] = []
        self.first_batch: float | None = None

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def on_train_batch_start(self, *args) -> None:
        if self.first_batch is None:
            self.first_batch = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.tick()

    def on_test_batch_end(self, *args) -> None:
        self.tick()

    def on_fit_end(self, *args) -> None:
        if self.path is not None:
            record = {"first_batch": self.first_batch, "times": self.times}
            Path(self.path).write_text(json.dumps(record))


def images_per_second(times: list[float], batch: int) -> float:
    """Throughput between the tick after the `WARMUP` steps and the last one."""
    timed = times[WARMUP:]
    if len(timed) < 2:
        raise ValueError(f"{len(times)} steps timed; images/s needs at least {WARMUP + 2}")
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def alternate(
    rounds: int, baseline: Callable[[], T], variant: Callable[[], T]
) -> tuple[list[T], list[T]]:
    """`rounds` back-to-back runs of both, the order swapped every round: whichever runs
    second in a pair tends to gain from a warm allocator and caches on this kind of
    machine. Returns (baseline results, variant results), run i of both from round i."""
    baselines: list[T] = []
    variants: list[T] = []
    for round_ in range(rounds):
        if round_ % 2 == 0:
            baselines.append(baseline())
            variants.append(variant())
        else:
            variants.append(variant())
            baselines.append(baseline())
    return baselines, variants


def paired_ratio(baseline: list[float], variant: list[float]) -> tuple[float, list[float]]:
    """(median, each pair's) variant / baseline, where run i of both sides ran back to back
    under the same machine state (single runs vary by +-7% on a shared 2-core machine)."""
    pairs = [v / b for b, v in zip(baseline, variant, strict=True)]
    return statistics.median(pairs), pairs
