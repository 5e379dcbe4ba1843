"""What the launcher runs for a trial: the task itself, or, for a trial whose trainer
starts its own DDP ranks, the task as a single run in a process of its own.

Lightning starts the ranks 1.. of a DDP run by running the process's command line again.
In a sweep that command line is the sweep's (rank 1 would start a sweep of its own, with
other parameters) or a launcher worker's, and the process keeps DDP's environment and
process group for the next trial. So such a trial runs as

    python -m seglab.train <the trial's overrides> hydra.mode=RUN hydra.run.dir=<its dir>

and every rank, started from that command, has the trial's parameters. Rank 0 reports to
the study as any trial does; the job reads the outcome from the run directory.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import TaskFunction
from omegaconf import DictConfig

from seglab.errors import SeglabError
from seglab.sweeps import Pruned, read_pruned_note, run_value, spawns_ranks

from ._search_space import override_value

log = logging.getLogger(__name__)

# Hydra overrides of the sweep that a single run must not get.
_SWEEP_ONLY = ("hydra.sweep", "hydra/sweeper", "hydra.launcher", "hydra/launcher", "hydra.mode")


def entry_command() -> list[str]:
    """The command that started this process, without its arguments (as Lightning
    rebuilds it for DDP ranks)."""
    import __main__  # noqa: PLC0415 (the program running now, not at import)

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:
        return [sys.executable, "-m", spec.name]
    return [sys.executable, os.path.abspath(sys.argv[0])]


class TrialJob:
    """The task function the sweeper hands to the launcher.

    Args:
        task_function: the application's task (seglab.train's).
        command: the application's command, to run a DDP trial as its own single run.
    """

    def __init__(self, task_function: TaskFunction, command: list[str]) -> None:
        self.task_function = task_function
        self.command = command

    def __call__(self, cfg: DictConfig) -> Any:
        if not spawns_ranks(cfg):
            return self.task_function(cfg)
        return self._run_own_process(cfg)

    def _run_own_process(self, cfg: DictConfig) -> Any:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        hydra_overrides = [
            o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(_SWEEP_ONLY)
        ]
        command = [
            *self.command,
            *hydra_cfg.overrides.task,
            *hydra_overrides,
            "hydra.mode=RUN",
            f"hydra.run.dir={override_value(str(run_dir))}",
        ]
        log.info("DDP trial, run as its own command: %s", " ".join(command))
        process = subprocess.Popen(
            command, cwd=hydra_cfg.runtime.cwd, stderr=subprocess.PIPE, text=True
        )
        tail: collections.deque[str] = collections.deque(maxlen=100)
        assert process.stderr is not None
        for line in process.stderr:  # shown as it comes, the end kept for the error
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
        code = process.wait()

        pruned = read_pruned_note(run_dir)
        if pruned is not None:
            raise Pruned(pruned)
        if code == 0:
            return run_value(run_dir, cfg.optimized_metric)
        prefix = "seglab: error: "
        errors = [line[len(prefix) :] for line in tail if line.startswith(prefix)]
        if errors:
            raise SeglabError(errors[-1])
        last = tail[-1] if tail else "no output"
        raise RuntimeError(f"the trial's run exited with code {code}: {last}")
