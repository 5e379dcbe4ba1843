"""Every use of Lightning's private internals, in one place, checked when a run starts.

Exact mid-epoch resume, the signal stop and the progress bar need a few attributes that
Lightning does not publish (`SUPPORTED` names the versions they were tested with). A
renamed attribute would otherwise fail silently: assigning `received_sigterm` would create
a new attribute and a signal would never stop the run. `check(trainer)` runs as every fit
starts (`seglab.stop.StopOnSignal.setup`) and stops with one line naming the installed
Lightning version when one of them is missing. Nothing outside this module touches a
`_private` Lightning name. `auto_precision` holds the one private torch query (native
bf16 on the CPU), here so that `seglab.train` run as `__main__` (its functions pickled by
value for the joblib and submitit launchers) does not reference torch's unpicklable
`torch.ops` and `torch.backends.mkldnn` objects.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from seglab.errors import SeglabError

# The Lightning releases the tests run (pyproject.toml pins the same range).
SUPPORTED = ">=2.6,<2.7"

# The private method of TQDMProgressBar that seglab.callbacks.ProgressBar overrides (its
# redraws by time, not by batches).
PROGRESS_BAR_NAMES = ("_should_update",)


def _missing(trainer: L.Trainer) -> list[str]:
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    needed = {
        "trainer._signal_connector.received_sigterm": (
            getattr(trainer, "_signal_connector", None),
            "received_sigterm",
        ),
        "fit_loop.epoch_loop._results": (epoch_loop, "_results"),
        "fit_loop.epoch_loop._batches_that_stepped": (epoch_loop, "_batches_that_stepped"),
        "fit_loop.epoch_loop.batch_progress.current.ready": (
            getattr(getattr(epoch_loop, "batch_progress", None), "current", None),
            "ready",
        ),
        "fit_loop._combined_loader_states_to_load": (fit_loop, "_combined_loader_states_to_load"),
        "fit_loop._combined_loader": (fit_loop, "_combined_loader"),
        "fit_loop._load_combined_loader_states": (fit_loop, "_load_combined_loader_states"),
        "fit_loop._data_fetcher": (fit_loop, "_data_fetcher"),
    }
    needed.update(
        {f"TQDMProgressBar.{name}": (TQDMProgressBar, name) for name in PROGRESS_BAR_NAMES}
    )
    return [name for name, (owner, attr) in needed.items() if not hasattr(owner, attr)]


def check(trainer: L.Trainer) -> None:
    """Stop with one line when this Lightning lacks an internal seglab relies on."""
    if missing := _missing(trainer):
        raise SeglabError(
            f"lightning {L.__version__} is not supported (it has no {', '.join(missing)}); "
            f"install lightning{SUPPORTED}"
        )


def request_stop(trainer: L.Trainer) -> None:
    """Lightning's own stop between batches: it raises SIGTERMException once the current
    step is logged, its schedulers stepped and the step counted as completed."""
    trainer._signal_connector.received_sigterm = True  # noqa: SLF001 (checked by check())


def batches_ready(trainer: L.Trainer) -> int:
    """Batches fetched so far in this training epoch (restored from checkpoints)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def batches_stepped(trainer: L.Trainer) -> int:
    """Optimizer steps the loggers count (their x axis; counts accumulated batches)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)  # noqa: SLF001 (check())


def epoch_metric_sums(trainer: L.Trainer) -> dict[str, Any]:
    """The running sums behind the epoch means of the training metrics (`self.log(...,
    on_epoch=True)`), inside an epoch: Lightning keeps them out of checkpoints, so a run
    resumed mid-epoch would average only the batches after the restart."""
    if batches_ready(trainer) >= trainer.num_training_batches:
        return {}  # at an epoch's end: the next epoch starts from zero
    sums = {}
    for key, metric in trainer.fit_loop.epoch_loop._results.items():  # noqa: SLF001 (check())
        meta = getattr(metric, "meta", None)
        if meta is not None and meta.on_epoch and metric.is_tensor and meta.is_mean_reduction:
            sums[key] = {
                "value": metric.value.detach().cpu(),
                "batch_size": metric.cumulated_batch_size.detach().cpu(),
            }
    return sums


def add_epoch_metric_sums(trainer: L.Trainer, sums: dict[str, Any]) -> None:
    """Adds sums saved by `epoch_metric_sums` to this epoch's running sums."""
    results = trainer.fit_loop.epoch_loop._results  # noqa: SLF001 (checked by check())
    for key, saved in sums.items():
        if (metric := results.get(key)) is not None:
            metric.value = metric.value + saved["value"].to(metric.value)
            metric.cumulated_batch_size = metric.cumulated_batch_size + saved["batch_size"].to(
                metric.cumulated_batch_size
            )


def reposition_train_loader(trainer: L.Trainer) -> None:
    """Hand a restarted run's training loader its saved position, then start its iterator
    again. Lightning applies loader states when it first loads the training data, but a
    schedule sized by `trainer.estimated_stepping_batches` makes it load (and prefetch
    from) the data before the checkpoint is restored, so the states would be dropped."""
    fit_loop = trainer.fit_loop
    states = fit_loop._combined_loader_states_to_load  # noqa: SLF001 (checked by check())
    loader = fit_loop._combined_loader  # noqa: SLF001 (checked by check())
    if not (fit_loop.restarting and states and loader is not None):
        return
    fit_loop._load_combined_loader_states()  # noqa: SLF001 (checked by check())
    if (fetcher := fit_loop._data_fetcher) is not None:  # noqa: SLF001 (checked by check())
        iter(fetcher)


def logging_step(checkpoint: dict[str, Any]) -> int:
    """The step at which a run resumed from `checkpoint` logs its first metrics (loggers'
    x axis: `batches_stepped`), read from the checkpoint's loop state."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    step = int(loop.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0))
    total = loop.get("epoch_loop.batch_progress", {}).get("total", {})
    # Saved at a batch's end, before Lightning counted the batch as stepped.
    if total.get("processed", 0) > total.get("completed", 0):
        step += 1
    return step


def auto_precision(on_cpu: bool) -> tuple[str, str]:
    """What `trainer.precision=auto` runs, and why: bf16 autocast where the device
    computes bf16 natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX,
    where oneDNN runs bf16 convolutions 1.5-2.5x faster than fp32), else full fp32."""
    if on_cpu:
        # torch has no public query for it; its own autocast tests use this one.
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # noqa: SLF001
        if torch.backends.mkldnn.is_available() and native:
            return "bf16-mixed", "this CPU computes bf16 natively"
        return "32-true", "this CPU has no native bf16"
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16-mixed", "this GPU computes bf16 natively"
    return "32-true", "this GPU has no native bf16"
