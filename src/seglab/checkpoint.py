"""The run format, written and read in one place.

A training run records itself twice: `run_info.json` in its run directory, and in every
checkpoint, under the key "seglab", the composed config, the task and the same run info
(`RunRecord` writes both). `load_run` is the one reader: evaluate, predict and export
rebuild model, config and data from a checkpoint alone with it.

    run = load_run("outputs/train/runs/<time>/checkpoints/best-epoch003.ckpt")
    logits = run.module.predict_logits(run.datamodule.to_input(image)[None])
"""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from seglab import rundir
from seglab.data.base import SeglabDataModule, Task
from seglab.errors import SeglabError, exit_message, one_line, seglab_cause
from seglab.modules import MODULES, TaskModule
from seglab.secrets import redact

# Where a checkpoint keeps the run record: {"task", "config", "run_info"}.
RECORD_KEY = "seglab"

_PACKAGES = (
    "seglab",
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "segmentation-models-pytorch",
    "timm",
    "numpy",
)


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


def json_value(value: Any) -> float | None:
    """A metric as a JSON number: float, or None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _git_state(path: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git checkout holding `path`, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(seed: int | None) -> dict[str, Any]:
    """What, besides the config, it takes to repeat a run: seed, code and environment."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "seed": seed,
        "command": sys.argv,
        "cwd": str(Path.cwd()),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git": _git_state(Path(__file__).resolve().parent),
    }


def error_line(error: BaseException) -> str:
    """The one line the console shows for `error`: `exit_message` for a `SeglabError`
    (also one wrapped by Hydra's instantiate or re-raised from a DataLoader worker), else
    "Type: message" with a worker's copied traceback cut down to its last line."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__  # Hydra's wrapper names the target; the cause says why
    if (cause := seglab_cause(error)) is not None:
        if getattr(cause, "exit_code", 1) != 1:  # stopped by a signal, pruned
            return f"seglab: {one_line(cause)}"
        return exit_message(cause).replace("\n", " ")
    text = str(error)
    if "Original Traceback" in text:  # torch's copy of a worker's traceback
        text = text.strip().splitlines()[-1]
    return f"{type(error).__name__}: {one_line(text)}"


class RunRecord(L.Callback):
    """Writes `run_info.json` into the run directory (with the run's `status`: running,
    then finished or failed with the error), and stores the composed config, task and run
    info in every checkpoint (under `RECORD_KEY`), so a checkpoint alone can rebuild its
    run (`load_run`).

    Args:
        config: the composed, resolved config as plain containers.
        output_dir: the run directory.
    """

    def __init__(self, config: dict[str, Any], output_dir: str | Path) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.info = run_info(config.get("seed"))
        # How the run stands (status, ended, error): in run_info.json, not in checkpoints.
        self.state: dict[str, str] = {}
        self.previous: dict[str, Any] | None = None  # run_info.json of an earlier start
        self._written = False

    @rank_zero_only
    def start(self) -> None:
        """Record the run as running (before anything is built: a run that fails while
        building data or model is recorded too). A run directory that already holds a
        run (a restart) keeps that run's start time and list of restarts."""
        self.previous = rundir.recorded_run(self.output_dir) or None
        if self.previous:
            self.info["started"] = self.previous.get("started", self.info["started"])
            self.info["restarts"] = list(self.previous.get("restarts", []))
        self.state = {"status": "running"}
        self._write()

    @rank_zero_only
    def restarted(self, checkpoint: Path | None, step: int) -> None:
        """Add this start to the run's `restarts`: when, why the previous one ended (its
        status and error; `running` means it was killed outright), from which checkpoint
        and global step."""
        before = self.previous or {}
        entry = {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "previous_status": before.get("status"),
            "previous_error": before.get("error"),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "step": step,
        }
        self.info.setdefault("restarts", []).append(entry)
        self._write()

    @rank_zero_only
    def finish(
        self,
        error: BaseException | None = None,
        status: str | None = None,
        stop_reason: str | None = None,
    ) -> None:
        """Record how the run ended: `finished`, or `failed` with the error (or another
        `status`, e.g. `pruned` by a sweep), and why and where it stopped (`stop_reason`:
        "trainer.max_epochs=10 reached", "early stopping: ... at epoch 7, batch 50/50")."""
        self.state = {
            "status": status or ("finished" if error is None else "failed"),
            "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if stop_reason is not None:
            self.state["stop_reason"] = stop_reason
        if error is not None:
            self.state["error"] = error_line(error)
        self._write()

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._written:  # used as a plain callback, without start()
            self._write()

    def _write(self) -> None:
        rundir.write_record(self.output_dir, redact({**self.info, **self.state}))
        self._written = True

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RECORD_KEY] = {
            "task": getattr(pl_module, "task", None),
            "config": redact(self.config),
            "run_info": redact(self.info),
        }


@dataclass
class Run:
    """A trained run as its checkpoint stores it.

    Attributes:
        path: the checkpoint.
        module: the `SegmentationModule` or `ClassificationModule` with the trained
            weights, in eval mode, without an inference wrapper (set `module.inference`
            for sliding-window or test-time-augmented logits).
        cfg: the composed training config, read-only.
        info: `run_info` of the training run (seed, command, versions, git commit).
    """

    path: Path
    module: TaskModule
    cfg: DictConfig
    info: dict[str, Any]

    @property
    def task(self) -> Task:
        return self.module.task

    @property
    def class_names(self) -> list[str]:
        return self.module.class_names

    @cached_property
    def datamodule(self) -> SeglabDataModule:
        """The training datamodule, built from the stored data config on first use.

        Building it reads no data (datamodules list their files in `setup()`), so it
        serves class names, palette, input size and normalisation where the training
        data is gone.
        """
        return instantiate(self.cfg.data)

    @property
    def mean(self) -> list[float]:
        """Per-channel mean (0-255 scale) the model's inputs were normalised with."""
        return [float(v) for v in self.datamodule.mean]

    @property
    def std(self) -> list[float]:
        """Per-channel std (0-255 scale) the model's inputs were normalised with."""
        return [float(v) for v in self.datamodule.std]


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `seglab.train`, loaded weights-only (safe for untrusted
    files); a one-line `SeglabError` for a missing, truncated or foreign file."""
    if not path.is_file():
        raise SeglabError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not one
        # Not torch's text: it advises weights_only=False, unsafe for an untrusted file.
        raise SeglabError(
            f"{path} is not a seglab checkpoint: torch cannot load it "
            f"({type(err).__name__}); give a .ckpt file written by seglab.train "
            "(checkpoints/best-*.ckpt or last.ckpt of its run directory)"
        ) from err
    if not isinstance(checkpoint, dict) or RECORD_KEY not in checkpoint:
        raise SeglabError(f"{path} is not a seglab checkpoint (it has no {RECORD_KEY!r} record)")
    return checkpoint


def load_run(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Run:
    """The run a checkpoint written by `seglab.train` records, rebuilt from it alone:
    neither the data nor the original config files are needed.

    Raises:
        SeglabError: the file is missing, unreadable or not a seglab checkpoint.
    """
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path, map_location)
    record = checkpoint[RECORD_KEY]
    cfg = OmegaConf.create(record["config"])
    OmegaConf.set_readonly(cfg, True)
    module = MODULES[record["task"]](
        instantiate(cfg.model),
        instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **checkpoint["hyper_parameters"],
    )
    module.load_state_dict(checkpoint["state_dict"])
    # Fitted by `seglab.evaluate calibrate=true` (seglab.calibration); 1.0 otherwise.
    module.temperature = float(record.get("temperature", 1.0))
    return Run(path, module.eval(), cfg, record["run_info"])


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> TaskModule:
    """The trained module of a checkpoint, in eval mode: `load_run(path).module`."""
    return load_run(path, map_location).module
