"""How every benchmark times a run: a clock ticking at the end of each step, the warm-up
steps it leaves out, images/s from the ticks, and the median ratio of back-to-back pairs."""

from __future__ import annotations

import statistics
import time

import lightning as L

WARMUP = 3  # steps excluded from every timing (allocator and kernel warm-up)


class StepClock(L.Callback):
    """`time.perf_counter()` at the end of every step: call `tick()` from a raw loop, or
    pass it to a Trainer as a callback (training and test batches)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def on_train_batch_end(self, *args) -> None:
        self.tick()

    def on_test_batch_end(self, *args) -> None:
        self.tick()


def images_per_second(times: list[float], batch: int) -> float:
    """Throughput between the tick after the `WARMUP` steps and the last one."""
    timed = times[WARMUP:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def paired_ratio(baseline: list[float], variant: list[float]) -> tuple[float, list[float]]:
    """(median, each pair's) variant / baseline, where run i of both sides ran back to back
    under the same machine state (single runs vary by +-7% on a shared 2-core machine)."""
    pairs = [v / b for b, v in zip(baseline, variant, strict=True)]
    return statistics.median(pairs), pairs
