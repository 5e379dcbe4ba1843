"""The in-run side of an optuna sweep: a training run that is a trial of seglab's optuna
sweeper (`hydra_plugins/seglab_optuna_sweeper`) reports its validation metric to the
study every epoch and stops when the study's pruner prunes it.

The sweeper links each trial's run to its study by adding one callback entry to the run's
config, `callbacks.optuna_trial` (`trial_link`: a `ReportToTrial` with the database URL,
the study's name, the trial's number and the pruner); the run reaches the study through
that database, so a trial on another machine (a SLURM job)
or in several processes (DDP) reports like a local one. Under DDP only rank 0 talks to
the study; it broadcasts the pruner's decision, and every rank stops at the same epoch.

A pruned run writes `pruned.json` in its run directory and ends with `Pruned`, which the
sweeper records as the trial's PRUNED state.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seglab import rundir
from seglab.errors import SeglabError, one_line

if TYPE_CHECKING:
    import optuna  # noqa: PLC0415 (optuna and SQLAlchemy: the sweeps extra)

log = logging.getLogger(__name__)

# The callback entry through which the sweeper links a run to its trial.
TRIAL_KEY = "callbacks.optuna_trial"
# Written into a pruned trial's run directory: trial number, epoch, metric and value.
# Pruners by the names `hydra.sweeper.pruner` takes; a `_target_` node gives arguments.
PRUNERS = {
    "none": "optuna.pruners.NopPruner",
    "median": "optuna.pruners.MedianPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
}


class Pruned(SeglabError):
    """The study's pruner stopped this trial's run; the sweeper records it as PRUNED. Run
    on its own (a DDP trial), the command says so and exits 0: nothing failed."""

    exit_code = 0


def shown_url(url: str) -> str:
    """`url` fit to print: its password replaced by ***."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415 (optuna and SQLAlchemy: the sweeps extra)
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415 (optuna and SQLAlchemy: the sweeps extra)

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def driver_url(url: str) -> str:
    """`url` as SQLAlchemy opens it: a plain postgresql:// URL through psycopg 3, the driver
    seglab installs (SQLAlchemy's default for it is psycopg2)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    retry_stale_trials: bool = False,
    create_tables: bool = True,
    storage_class: type[optuna.storages.RDBStorage] | None = None,
) -> optuna.storages.RDBStorage:
    """Connect to the optuna database at `url`.

    Args:
        heartbeat_interval: seconds between the heartbeats of each running trial (only the
            sweeper sends them); None: no heartbeats.
        grace_period: a running trial without a heartbeat for this long is failed.
        retry_stale_trials: such a failed trial is queued again, once.
        create_tables: create optuna's tables when the database has none.
        storage_class: an RDBStorage subclass to open it with (the sweeper's own).

    Raises:
        SeglabError: the database cannot be reached or opened (one line: the URL, its
            password hidden, and the reason).
    """
    import optuna  # noqa: PLC0415 (optuna and SQLAlchemy: the sweeps extra)
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415 (optuna and SQLAlchemy: the sweeps extra)

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Trials of one sweep write to one SQLite file from several processes.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    retry = (
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        if retry_stale_trials
        else None
    )
    try:
        storage = (storage_class or optuna.storages.RDBStorage)(
            driver_url(url),
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=retry,
            skip_table_creation=not create_tables,
        )
    except ImportError as err:
        raise SeglabError(
            f"the optuna storage {shown_url(url)} needs a database driver that is not "
            f"installed ({one_line(err.__cause__ or err)}); for PostgreSQL: "
            "pip install 'seglab[postgres]'"
        ) from None
    except ArgumentError as err:
        raise SeglabError(
            f"the optuna storage {shown_url(url)} is not a database URL ({one_line(err)}); "
            "e.g. sqlite:///path/optuna.db or postgresql://user:password@host/database"
        ) from None
    except Exception as err:  # the driver's own error: refused, unknown host, bad password
        reason = one_line(getattr(err, "orig", None) or err)
        raise SeglabError(f"cannot open the optuna storage {shown_url(url)}: {reason}") from None
    if url.startswith("sqlite"):
        _lock_sqlite_on_begin(storage.engine)
    return storage


def _lock_sqlite_on_begin(engine: Any) -> None:
    """Every transaction on the SQLite file takes its write lock as it begins (BEGIN
    IMMEDIATE). Optuna hands a queued trial (a retry) to the first worker that asks by
    reading its state, then writing RUNNING; SQLite has no SELECT ... FOR UPDATE, so two
    workers reading at once would both get it, and run it twice."""
    from sqlalchemy import event  # noqa: PLC0415 (optuna and SQLAlchemy: the sweeps extra)

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite's own BEGIN would come first

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections opened before the listeners


def build_pruner(spec: str | Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner `hydra.sweeper.pruner` names: one of `PRUNERS`, or a `_target_` node
    (`{_target_: optuna.pruners.MedianPruner, n_startup_trials: 2}`)."""
    if spec is None:
        spec = "none"
    if isinstance(spec, str):
        if spec not in PRUNERS:
            raise SeglabError(
                f"hydra.sweeper.pruner={spec} is not a pruner; choose one of "
                f"{sorted(PRUNERS)}, or give a node with _target_: optuna.pruners.<Pruner>"
            )
        spec = {"_target_": PRUNERS[spec]}
    try:
        return instantiate(dict(spec))
    except Exception as err:
        raise SeglabError(f"hydra.sweeper.pruner cannot be built: {one_line(err)}") from None


def load_trial(
    url: str, study_name: str, number: int, pruner: str | Mapping[str, Any] | None
) -> optuna.trial.Trial:
    """Trial `number` of the study `study_name` in `url`, judged by `pruner`."""
    import optuna  # noqa: PLC0415 (optuna and SQLAlchemy: the sweeps extra)

    storage = open_storage(url, create_tables=False)
    try:
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            # The trial's parameters are in its overrides already; nothing is sampled here.
            sampler=optuna.samplers.RandomSampler(),
            pruner=build_pruner(pruner),
        )
        study_id = storage.get_study_id_from_name(study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    except KeyError:
        raise SeglabError(
            f"{shown_url(url)} holds no trial {number} of a study '{study_name}' "
            f"({TRIAL_KEY} links a run to its trial; only the sweeper sets it)"
        ) from None
    return optuna.trial.Trial(study, trial_id)


class ReportToTrial(L.Callback):
    """Reports `monitor` after every validation epoch to the optuna trial this run is, and
    stops the run (every rank, at the end of that epoch) once the study's pruner prunes it.

    Rank 0 alone opens the study; the decision reaches the other ranks by broadcast.
    `raise_if_pruned` ends a pruned run after `fit`.

    Args:
        storage: the study's database URL.
        study: the study's name.
        number: the trial's number in the study.
        pruner: a name of `PRUNERS` or a `_target_` node.
        monitor: the logged metric the study optimises (`optimized_metric`).
        output_dir: the run directory, where a pruned run writes `pruned.json`.
    """

    def __init__(
        self,
        storage: str,
        study: str,
        number: int,
        pruner: str | Mapping[str, Any] | None,
        monitor: str,
        output_dir: str | Path,
    ) -> None:
        self.storage = storage
        self.study = study
        self.number = int(number)
        self.pruner = OmegaConf.to_container(pruner) if OmegaConf.is_config(pruner) else pruner
        self.monitor = monitor
        self.output_dir = Path(output_dir)
        self.pruned_at: dict[str, Any] | None = None
        self._trial: optuna.trial.Trial | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self._trial is None:
            self._trial = load_trial(self.storage, self.study, self.number, self.pruner)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        value = None
        prune = False
        if trainer.is_global_zero:
            assert self._trial is not None
            metric = trainer.callback_metrics.get(self.monitor)
            if metric is not None:
                value = float(metric)
                self._trial.report(value, step=epoch)
                prune = self._trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune)
        if prune:
            trainer.should_stop = True
            self.pruned_at = {
                "trial": self.number,
                "epoch": epoch,
                "metric": self.monitor,
                "value": None if value is None or math.isnan(value) else value,
            }


def trial_link(
    storage: str, study: str, number: int, pruner: str | Mapping[str, Any] | None
) -> dict[str, Any]:
    """The callback entry (`TRIAL_KEY`) that makes a run trial `number` of `study`: a
    `ReportToTrial` monitoring the run's `optimized_metric`."""
    return {
        "_target_": f"{ReportToTrial.__module__}.{ReportToTrial.__qualname__}",
        "_recursive_": False,  # the pruner node is built by build_pruner, in the run
        "storage": storage,
        "study": study,
        "number": number,
        "pruner": pruner,
        "monitor": "${optimized_metric}",
        "output_dir": "${paths.output_dir}",
    }


def raise_if_pruned(trainer: L.Trainer) -> None:
    """End a pruned trial's run after `fit`, on every rank (nothing is tested): rank 0
    writes `pruned.json` into the run directory, then every rank raises `Pruned`."""
    for callback in trainer.callbacks:
        if isinstance(callback, ReportToTrial) and callback.pruned_at is not None:
            if trainer.is_global_zero:
                path = rundir.write_pruned(callback.output_dir, callback.pruned_at)
                log.info("%s; see %s", _pruned_message(callback.pruned_at), path)
            raise Pruned(_pruned_message(callback.pruned_at))


def read_pruned_note(run_dir: str | Path) -> str | None:
    """The message of the pruned trial whose run directory is `run_dir`; None if the run
    was not pruned."""
    note = rundir.read_pruned(run_dir)
    return None if note is None else _pruned_message(note)


def run_value(run_dir: str | Path, metric: str) -> float | None:
    """What a finished run returns to a sweep, `best/<metric>`, read from the
    metrics.json that `seglab.train` wrote into `run_dir`."""
    summary = rundir.read_metrics(run_dir)
    if summary is None:
        raise SeglabError(
            f"the trial's run ended without writing {Path(run_dir) / rundir.METRICS_FILE}"
        )
    return summary["metrics"].get(f"best/{metric}")


def _pruned_message(note: Mapping[str, Any]) -> str:
    """What `Pruned` says, from the note in `pruned.json`."""
    value = "" if note.get("value") is None else f": {note['metric']} {note['value']:.4g}"
    return f"optuna trial {note.get('trial')} pruned at epoch {note.get('epoch')}{value}"


def spawns_ranks(cfg: DictConfig) -> bool:
    """Whether Lightning will start this run's other DDP ranks itself, by running the
    process's command line again (more than one device or node, and no SLURM or torchrun
    that started every rank already)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        return False
    if "LOCAL_RANK" in os.environ:  # one of the ranks already
        return False
    trainer = cfg.get("trainer") or {}
    if int(trainer.get("num_nodes", 1) or 1) > 1:
        return True
    devices = trainer.get("devices", 1)
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices) > 1
    if isinstance(devices, str) and not devices.lstrip("-").isdigit():
        # "auto": every visible GPU where the accelerator may be one.
        if trainer.get("accelerator", "auto") in ("cpu", "mps"):
            return False
        return torch.cuda.device_count() > 1
    count = int(devices)
    if count == -1:
        return trainer.get("accelerator", "auto") != "cpu" and torch.cuda.device_count() > 1
    return count > 1
