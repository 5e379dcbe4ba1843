"""A signal stops a run where it stands, checkpointed, and the same command continues it.

SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 (a SLURM preemption or time-limit warning, a
spot-instance reclaim, `kill`, Ctrl-C) during fit lets the current optimizer step finish,
writes `checkpoints/last.ckpt` with the position inside the epoch and the random number
generators, logs where it stopped and ends the run with exit status 128 + the signal's
number. Under SLURM the requeue signal also requeues the job.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seglab import lightning_compat
from seglab.errors import SeglabError
from seglab.rundir import LAST_CHECKPOINT

log = logging.getLogger(__name__)


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
        lightning_compat.check(trainer)  # before anything relies on its internals
        self._trainer = trainer

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reinstall()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reinstall()
        lightning_compat.reposition_train_loader(trainer)
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
            lightning_compat.add_epoch_metric_sums(trainer, self._metrics_to_restore)
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
        lightning_compat.request_stop(trainer)

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
            lightning_compat.request_stop(trainer)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": _rng_state()}
        if self._trainer is not None:
            state["epoch_metrics"] = lightning_compat.epoch_metric_sums(self._trainer)
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
        return self.checkpoint_dir / LAST_CHECKPOINT

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
