"""Runs that survive being stopped: a signal checkpoints the run where it stands, and the
same command continues it.

- `StopOnSignal`: SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 (a SLURM preemption or time-limit
  warning, a spot-instance reclaim, `kill`, Ctrl-C) during fit lets the current optimizer
  step finish, writes `checkpoints/last.ckpt` with the position inside the epoch and the
  random number generators, logs where it stopped and ends the run with exit status
  128 + the signal's number. Under SLURM the requeue signal also requeues the job.
- `AtomicCheckpointIO`: every checkpoint is written to a temporary file beside its
  destination and renamed over it, so `last.ckpt` is never half written (a SIGKILL or a
  full disk while saving leaves the previous one).
- `resolve_resume`: `ckpt_path=auto` resumes from the run directory's last.ckpt when there
  is one, after checking that it was written by the same configuration.
- `TimeBudgetSchedule`: with `trainer.max_time` and no epoch or step limit, a schedule that
  spans the run (one-cycle, cosine, poly) follows the fraction of the time budget spent,
  so it ends when the budget does.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from seglab.errors import SeglabError

log = logging.getLogger(__name__)

# Parts of the config a resumed run must share with the run that wrote its checkpoint.
# Trainer limits (more epochs), loggers, callbacks and paths may change between restarts.
RESUME_KEYS = ("data", "model", "loss", "optimizer", "scheduler", "module", "seed")
# Data options that change how fast data is read, not which data: free to change.
_FREE_DATA_KEYS = ("num_workers", "pin_memory", "persistent_workers", "cache", "cache_dir")


class Stopped(SeglabError):
    """The run was stopped by a signal after checkpointing; the command ends with
    128 + the signal's number, as a process killed by it would."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def signal_number(name: str | int) -> int:
    """`"SIGTERM"`, `"TERM"` or 15 as a signal number; a one-line error for others."""
    if isinstance(name, int):
        return int(signal.Signals(name))
    text = str(name).upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise SeglabError(
            f"signals: unknown signal {name!r}; use names like SIGTERM, SIGINT, SIGUSR1"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic for local paths: the checkpoint goes to a
    hidden temporary file in the destination's directory, is flushed to disk, and is
    renamed over the destination (Lightning's own writer stages the file in the system
    temporary directory and, when that is another file system, copies it over the
    destination, which a kill during the copy leaves truncated)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):  # object stores: Lightning's fsspec writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return None


def _rng_state() -> dict[str, Any]:
    """Every random number generator a training step may draw from, as plain values a
    weights-only checkpoint load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def slurm_job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The id `scontrol requeue` takes for this SLURM job (array task included), or None
    outside a batch job."""
    if array_job := environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{array_job}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> bool:
    """`scontrol requeue <job_id>`: SLURM puts the job back in the queue, to run the same
    batch script again (which continues the run with `ckpt_path=auto`)."""
    if not re.fullmatch(r"[0-9_]+", job_id):
        log.warning("Not requeuing: %r is not a SLURM job id", job_id)
        return False
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode:
        log.warning("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
        return False
    log.info("Requeued SLURM job %s", job_id)
    return True


class StopOnSignal(L.Callback):
    """Stops a run cleanly on a signal: the optimizer step in progress finishes, the run is
    checkpointed to `last.ckpt` with its position inside the epoch, and `Stopped` ends it.

    The handlers are installed by `install()` before anything is built (a signal while the
    data is read stops the run before its first step) and stay until `uninstall()`. A
    handler only records the signal: the checkpoint is written by the training loop between
    steps, so a second signal while saving cannot interrupt the write. Under DDP every
    process gets the signal (the launching process forwards it to the processes Lightning
    started from it) and the ranks agree after each step, so all stop at the same one.

    After saving, the signal's previous Python handler (a job scheduler's, such as
    submitit's requeue on its timeout signal) runs; otherwise, in a SLURM batch job, the
    `requeue_signal` requeues the job with `scontrol requeue`.

    Args:
        signals: the signals that stop the run.
        requeue_signal: in a SLURM job, the signal that also requeues it (`sbatch
            --signal=USR1@120` sends it two minutes before the time limit); None: never.
        checkpoint_dir: where `last.ckpt` goes when the trainer has no ModelCheckpoint.
    """

    def __init__(
        self,
        signals: Iterable[str | int] = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"),
        requeue_signal: str | int | None = "SIGUSR1",
        checkpoint_dir: str | Path = "checkpoints",
    ) -> None:
        self.signals = [signal_number(s) for s in signals]
        self.requeue_signal = None if requeue_signal is None else signal_number(requeue_signal)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._metrics_to_restore: dict[str, Any] | None = None
        self._where: str | None = None  # where the run stopped
        self._saved: Path | None = None  # the checkpoint it saved there

    # ---- signal handlers ----------------------------------------------------------------

    def install(self) -> None:
        """Handle `signals` from now on (main thread only, as Python allows)."""
        for signum in self.signals:
            previous = signal.getsignal(signum)
            if previous != self._handle:
                self._previous.setdefault(signum, previous)
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        trainer = self._trainer
        launcher = trainer.strategy.launcher if trainer is not None else None
        if first and launcher is not None and hasattr(launcher, "procs"):
            launcher.kill(signum)  # the DDP processes Lightning started from this one

    def _reinstall(self) -> None:
        # Lightning puts its own SIGTERM handler first when a stage starts (it would end
        # the run at the next batch with exit status 0 and no checkpoint): ours again.
        for signum in self.signals:
            if signal.getsignal(signum) != self._handle:
                signal.signal(signum, self._handle)

    # ---- Lightning hooks -----------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reinstall()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reinstall()
        _position_train_loader(trainer)
        if self._should_stop(trainer):  # stopped while the data or model was built
            raise self._stopped("before the first training step; nothing to save")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._rng_to_restore is not None:  # the first step after a restart
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._metrics_to_restore is not None:  # the first step after a restart
            _add_epoch_metric_sums(trainer, self._metrics_to_restore)
            self._metrics_to_restore = None
        if batch_idx + 1 >= trainer.num_training_batches or not self._should_stop(trainer):
            return  # an epoch's last batch: its validation runs, then `on_train_epoch_end`
        self._where = (
            f"epoch {trainer.current_epoch}, batch {batch_idx + 1}/"
            f"{trainer.num_training_batches} (step {trainer.global_step})"
        )
        # Lightning's own stop between batches: it raises SIGTERMException once this step
        # is logged, its schedulers stepped and it counts as completed; `on_exception`
        # checkpoints that state (a checkpoint written here would replay the step's
        # logging and scheduler step after the restart).
        trainer._signal_connector.received_sigterm = True

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and self._where is not None:
            self._save(trainer, self._where)

    def stop_if_signalled(self, trainer: L.Trainer, where: str) -> None:
        """Between stages (fit done, test next): stop without saving (the fit's last
        checkpoint is where a restart continues)."""
        if self._should_stop(trainer):
            raise self._stopped(f"{where}; nothing new to save")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._where is None and self._should_stop(trainer):
            # Stopped at the epoch's end: Lightning raises once the epoch is complete (its
            # metrics logged, the ModelCheckpoint's save done, after this hook).
            self._where = f"the end of epoch {trainer.current_epoch} (step {trainer.global_step})"
            trainer._signal_connector.received_sigterm = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": _rng_state()}
        if self._trainer is not None:
            state["epoch_metrics"] = _epoch_metric_sums(self._trainer)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")
        self._metrics_to_restore = state_dict.get("epoch_metrics") or None

    # ---- stopping ------------------------------------------------------------------------

    def _should_stop(self, trainer: L.Trainer) -> bool:
        stop = self.received is not None
        if trainer.world_size > 1:  # any rank signalled: all stop at this step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
        return self.checkpoint_dir / "last.ckpt"

    def _save(self, trainer: L.Trainer, where: str) -> None:
        path = self.checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            # The ModelCheckpoint's own last.ckpt from now on (not one to version around).
            callback.last_model_path = str(path)
        trainer.save_checkpoint(path)
        self._where = where
        self._saved = path
        self._after_save(self.received if self.received is not None else signal.SIGTERM)

    def _stopped(self, where: str) -> Stopped:
        signum = self.received if self.received is not None else signal.SIGTERM
        return Stopped(f"stopped by {signal.Signals(signum).name} {where}", signum)

    def error(self) -> Stopped:
        """The `Stopped` that ends the run: where it stopped and what was saved."""
        if self._saved is None:
            return self._stopped("while validating; nothing saved")
        return self._stopped(
            f"at {self._where}; saved {self._saved}. Run the same command with "
            "ckpt_path=auto (and the same run directory) to continue"
        )

    @rank_zero_only
    def _after_save(self, signum: int) -> None:
        previous = self._previous.get(signum)
        if (
            callable(previous) and previous is not signal.default_int_handler
        ):  # e.g. submitit requeues its job on its timeout signal
            previous(signum, None)
        elif signum == self.requeue_signal and (job_id := slurm_job_id()) is not None:
            requeue_slurm_job(job_id)


def _epoch_metric_sums(trainer: L.Trainer) -> dict[str, Any]:
    """The running sums behind the epoch means of the training metrics (`self.log(...,
    on_epoch=True)`), inside an epoch: Lightning keeps them out of checkpoints, so a run
    resumed mid-epoch would average only the batches after the restart."""
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.current.ready >= trainer.num_training_batches:
        return {}  # at an epoch's end: the next epoch starts from zero
    sums = {}
    for key, metric in loop._results.items():
        meta = getattr(metric, "meta", None)
        if meta is not None and meta.on_epoch and metric.is_tensor and meta.is_mean_reduction:
            sums[key] = {
                "value": metric.value.detach().cpu(),
                "batch_size": metric.cumulated_batch_size.detach().cpu(),
            }
    return sums


def _add_epoch_metric_sums(trainer: L.Trainer, sums: dict[str, Any]) -> None:
    results = trainer.fit_loop.epoch_loop._results
    for key, saved in sums.items():
        if (metric := results.get(key)) is not None:
            metric.value = metric.value + saved["value"].to(metric.value)
            metric.cumulated_batch_size = metric.cumulated_batch_size + saved["batch_size"].to(
                metric.cumulated_batch_size
            )


def _position_train_loader(trainer: L.Trainer) -> None:
    """Hand a restarted run's training loader its saved position, then start its iterator
    again. Lightning applies loader states when it first loads the training data, but a
    schedule sized by `trainer.estimated_stepping_batches` makes it load (and prefetch
    from) the data before the checkpoint is restored, so the states would be dropped."""
    fit_loop = trainer.fit_loop
    states = fit_loop._combined_loader_states_to_load
    if not (fit_loop.restarting and states and fit_loop._combined_loader is not None):
        return
    fit_loop._load_combined_loader_states()
    if fit_loop._data_fetcher is not None:
        iter(fit_loop._data_fetcher)


# ---- time budgets ---------------------------------------------------------------------------


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


# ---- ckpt_path=auto ---------------------------------------------------------------------


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The settings in `RESUME_KEYS` where `current` differs from the `stored` config a
    checkpoint was written with, as "key: stored -> current". Data loading speed options
    and classes the current config leaves to be found on disk are not differences."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for key in RESUME_KEYS:
        before.update(_flatten(stored.get(key), key))
        after.update(_flatten(current.get(key), key))
    differences = []
    for key in sorted(set(before) | set(after)):
        parts = key.split(".")
        if parts[0] == "data" and len(parts) > 1 and parts[1] in _FREE_DATA_KEYS:
            continue
        if key in ("data.class_names", "data.num_classes") and after.get(key) is None:
            continue  # found on disk, as the stored run did
        if key.startswith("data.class_names.") and "data.class_names" in after:
            continue
        old, new = before.get(key, "<unset>"), after.get(key, "<unset>")
        if old != new:
            differences.append(f"{key}: {old} -> {new}")
    return differences


def _readable(path: Path) -> dict[str, Any] | None:
    from seglab.checkpoint import read_checkpoint

    try:
        return read_checkpoint(path)
    except SeglabError:
        return None


def resolve_resume(
    ckpt_path: Any, output_dir: Path, config: Mapping[str, Any], fallback: bool = False
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint a run starts from, read and checked before anything is built.

    `ckpt_path` is "auto" (this run directory's last.ckpt when there is one, else a fresh
    start), "last" (that file, which must exist), or a path. A checkpoint that cannot be
    read is a one-line error naming it; with `fallback`, "auto" then takes the newest
    readable checkpoint of the directory instead. "auto" also refuses a checkpoint written
    with another configuration (`config_differences`), naming what differs.

    Returns:
        the checkpoint's path and its contents, or (None, None) for a fresh start.
    """
    from seglab.checkpoint import read_checkpoint

    if ckpt_path is None:
        return None, None
    directory = output_dir / "checkpoints"
    if ckpt_path in ("auto", "last"):
        path = directory / "last.ckpt"
        if not path.exists():
            if ckpt_path == "auto":
                return None, None
            raise SeglabError(
                f"ckpt_path=last but {path} does not exist; ckpt_path=auto starts afresh "
                "when there is nothing to resume"
            )
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise SeglabError(
                f"ckpt_path={ckpt_path} does not exist; give a checkpoint a run wrote "
                "(<run dir>/checkpoints/last.ckpt), or ckpt_path=auto with that run's "
                "directory (hydra.run.dir or run_name)"
            )
    try:
        checkpoint = read_checkpoint(path)
    except SeglabError as err:
        if ckpt_path != "auto" or not fallback:
            hint = (
                "; ckpt_fallback=true resumes from the newest readable checkpoint of "
                f"{directory} instead"
                if ckpt_path == "auto"
                else ""
            )
            raise SeglabError(f"cannot resume: {err}{hint}") from err
        candidates = sorted(
            (p for p in directory.glob("*.ckpt") if p != path),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for candidate in candidates:
            if (checkpoint := _readable(candidate)) is not None:
                log.warning("%s cannot be read (%s); resuming from %s", path, err, candidate)
                path = candidate
                break
        else:
            raise SeglabError(
                f"cannot resume: {err}; and {directory} holds no other readable checkpoint"
            ) from err
    if ckpt_path == "auto":
        stored = checkpoint["seglab"]["config"]
        if differences := config_differences(stored, config):
            shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
            raise SeglabError(
                f"ckpt_path=auto: {path} was written with another configuration ({shown}); "
                "run with the same settings to continue it, or give this run its own "
                "directory (run_name=... or hydra.run.dir=...)"
            )
    return path, checkpoint


def logging_step(checkpoint: Mapping[str, Any]) -> int:
    """The step at which a run resumed from `checkpoint` logs its first metrics (loggers'
    x axis: optimizer steps, Lightning's `_batches_that_stepped`)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    step = int(loop.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0))
    total = loop.get("epoch_loop.batch_progress", {}).get("total", {})
    # Saved at a batch's end, before Lightning counted the batch as stepped.
    if total.get("processed", 0) > total.get("completed", 0):
        step += 1
    return step
