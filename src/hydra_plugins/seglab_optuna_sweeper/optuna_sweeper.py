"""The Hydra sweeper plugin: `python -m seglab.train -m hparams_search=shapes_optuna`.

One optuna study per sweep, stored by default in `<sweep dir>/optuna.db` (SQLite), or
in the database `storage` names (PostgreSQL for many workers). Each trial is one job of
the configured launcher (in-process, joblib, submitit); with `n_jobs` > 1 a trial is
asked for whenever one ends, so no trial waits for a batch. Every argument below is a
key of conf/hydra/sweeper/seglab_optuna.yaml, where each is explained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from seglab.errors import SeglabError, exit_message


def _require_optuna() -> None:
    """optuna and plotly are the `sweeps` extra, not a core dependency (issue 20)."""
    try:
        import optuna  # noqa: F401, PLC0415 (the sweeps extra: a clear error without it)
    except ImportError:
        # One line, like seglab's commands; Hydra would print a traceback.
        raise SystemExit(
            "seglab: error: hydra/sweeper=seglab_optuna needs optuna, which is not "
            "installed: pip install 'seglab[sweeps]'"
        ) from None


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        storage: str | None = None,
        study_name: str = "seglab",
        direction: str = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        resume: bool = False,
        sampler: Mapping[str, Any] | None = None,
        pruner: str | Mapping[str, Any] = "none",
        heartbeat_interval: int = 30,
        grace_period: int = 90,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        _require_optuna()

        def plain(node: Any) -> Any:
            return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

        self.options = {
            "storage": storage,
            "study_name": study_name,
            "direction": direction,
            "n_trials": n_trials,
            "n_jobs": n_jobs,
            "resume": resume,
            "sampler": plain(sampler),
            "pruner": plain(pruner),
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "params": plain(params) or {},
        }
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from ._trial_job import TrialJob, entry_command  # noqa: PLC0415 (Hydra imports every plugin at start-up: Lightning only to sweep)

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config,
            hydra_context=hydra_context,
            task_function=TrialJob(task_function, entry_command()),
        )

    def sweep(self, arguments: list[str]) -> None:
        from ._sweep import Sweep  # noqa: PLC0415 (Hydra imports every plugin at start-up: Lightning only to sweep)

        assert self.config is not None and self.hydra_context is not None
        try:
            Sweep(self.options, self.config, self.hydra_context, self.launcher).run(arguments)
        except SeglabError as err:
            # One line, like seglab's commands; Hydra would print a traceback.
            raise SystemExit(exit_message(err)) from None
