"""One run of the sweeper: open (or resume, or join) the study, run trials until it has
`n_trials`, write the results.

Trials run through `optuna.Study.optimize`: its `n_jobs` threads each launch one trial's
job and ask for the next as soon as it ends, so no trial waits for a batch; it sends the
heartbeats of running trials, fails stale ones (their process died) before each new
trial, and records a trial that raises as FAIL and goes on.

Counting to `n_trials` works across workers and restarts: a trial counts unless it is
the retry of a stale one (the retry takes the place of the trial it repeats) or a
surplus one. Several workers may ask at the same moment when one trial is left; the one
whose trial lands past `n_trials` records it as FAIL ("surplus") without running it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url

from seglab.errors import SeglabError, one_line
from seglab.secrets import redact_file
from seglab.sweeps import (
    TRIAL_KEY,
    Pruned,
    build_pruner,
    driver_url,
    open_storage,
    shown_url,
    trial_link,
)

from ._results import (
    ERROR_ATTR,
    NO_HEARTBEAT,
    RUN_DIR_ATTR,
    SURPLUS_ATTR,
    WORKER_ATTR,
    mark_run_failed,
    retry_of,
    write_results,
    write_trials,
)
from ._search_space import SearchSpace, describe, override_value, parse_search_space, suggest

log = logging.getLogger(__name__)

DB_NAME = "optuna.db"
# Study user attribute holding the search space, checked when a study is resumed.
SPACE_ATTR = "search_space"
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class TrialFailed(Exception):
    """A trial's job failed; the message is the reason recorded on the trial."""


def retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue `trial` to run once more, unless it is a retry already (what the storage
    does for a trial whose heartbeat stopped)."""
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, copy.deepcopy(trial))


class SweeperStorage(optuna.storages.RDBStorage):
    """The sweeper's storage: a trial whose job this process is running is alive, and
    never taken for stale when its heartbeats come late (a database held by other
    writers, a loaded machine). Failed as stale while its job went on, the trial lost
    the result its job then returned (optuna: "Trial#0 has already finished") and ran
    a second time as its retry. Other processes' trials are judged by their heartbeats
    as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alive: set[int] = set()  # trial ids; a finished trial is never stale anyway

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return [i for i in super()._get_stale_trial_ids(study_id) if i not in self.alive]

    def get_heartbeat_stale_trial_callback(self) -> Any:
        retry = super().get_heartbeat_stale_trial_callback()

        def failed_stale(study: optuna.Study, trial: FrozenTrial) -> None:
            # Its process died: its run_info.json still says running.
            mark_run_failed(trial.user_attrs.get(RUN_DIR_ATTR), NO_HEARTBEAT)
            if retry is not None:
                retry(study, trial)

        return failed_stale


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards `n_trials`: neither retries nor surplus."""
    return [t for t in trials if retry_of(t) is None and not t.user_attrs.get(SURPLUS_ATTR)]


class Sweep:
    """Args: the sweeper's options (conf/hydra/sweeper/seglab_optuna.yaml), the sweep's
    config, Hydra's context and the launcher that runs the trials' jobs."""

    def __init__(
        self,
        options: Mapping[str, Any],
        config: DictConfig,
        hydra_context: HydraContext,
        launcher: Any,
    ) -> None:
        self.options = options
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = launcher
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.n_trials = int(options["n_trials"])
        self.space: SearchSpace = {}
        self.fixed: list[str] = []
        self.storage: optuna.storages.RDBStorage | None = None

    def run(self, arguments: list[str]) -> None:
        # Heartbeats and stale-trial retries are optuna's "experimental" features; used
        # on purpose, their warning on every call says nothing.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        self.space, self.fixed = parse_search_space(self.options["params"], arguments)
        if not self.space:
            raise SeglabError(
                "the sweep has nothing to search: give hydra.sweeper.params (see "
                "conf/hparams_search/) or a sweep on the command line, e.g. "
                "'optimizer.lr=tag(log, interval(0.0001, 0.01))'"
            )
        build_pruner(self.options["pruner"])  # a bad pruner fails here, not in every trial
        self._check_launcher()
        self._check_overrides_compose()
        url = self._storage_url()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        if not (self.sweep_dir / "multirun.yaml").exists():  # a resumed sweep keeps the first
            OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
            # The storage URL given on the command line is in the sweep's overrides.
            redact_file(self.sweep_dir / "multirun.yaml")

        study = self._open_study(url)
        self._announce(study, url)
        if self.options["resume"]:
            self._fail_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        if trials:  # resumed or joined: draw other points than the first run did
            study.sampler.reseed_rng()
        to_run = self._remaining(study)
        log.info(
            "%d of n_trials=%d trials counted, %d to run (%d at a time)",
            len(counted(trials)),
            self.n_trials,
            to_run,
            self.options["n_jobs"],
        )
        if to_run > 0:
            study.optimize(
                self._objective(url),
                n_trials=to_run,
                n_jobs=int(self.options["n_jobs"]),
                catch=(Exception,),
                callbacks=[self._stop_when_done],
            )
        write_results(study, self.sweep_dir, shown_url(url))

    def _announce(self, study: optuna.Study, url: str) -> None:
        log.info("Study '%s' in %s", study.study_name, shown_url(url))
        where = (
            f"STORAGE={shown_url(url)}" if self.options["storage"] else f"SWEEP={self.sweep_dir}"
        )
        log.info(
            "Follow it live: optuna-dashboard %s   (or: make dashboard %s)",
            shown_url(driver_url(url)),
            where,
        )

    def _check_launcher(self) -> None:
        if int(self.options["n_jobs"]) > 1 and isinstance(self.launcher, BasicLauncher):
            raise SeglabError(
                f"hydra.sweeper.n_jobs={self.options['n_jobs']} runs trials side by side, each "
                "in a process of its own, which Hydra's basic launcher does not do: add "
                "hydra/launcher=joblib (this machine) or hydra/launcher=submitit_slurm"
            )

    def _check_overrides_compose(self) -> None:
        """Compose one trial's config (the first value of every parameter), so that an
        unknown key fails once, before any trial starts."""
        sample = [
            f"{key}={override_value(_first_value(distribution))}"
            for key, distribution in self.space.items()
        ]
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, [*self.fixed, *sample])
        except Exception as err:
            raise SeglabError(f"the trials' overrides do not compose: {one_line(err)}") from None

    def _storage_url(self) -> str:
        url = self.options["storage"] or f"sqlite:///{self.sweep_dir / DB_NAME}"
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            if self.options["resume"] and not path.exists():
                raise SeglabError(
                    f"hydra.sweeper.resume=true but there is no study to resume: {path} does "
                    "not exist; give the killed sweep's directory as hydra.sweep.dir"
                )
            # Jobs may run elsewhere (chdir, submitit): an absolute path.
            url = f"sqlite:///{path.resolve()}"
        return url

    def _open_study(self, url: str) -> optuna.Study:
        name = self.options["study_name"]
        storage = self.storage = self._connect(url)
        if self.options["resume"] and name not in {s.study_name for s in storage.get_all_studies()}:
            raise SeglabError(
                f"hydra.sweeper.resume=true but {shown_url(url)} holds no study named '{name}'; "
                "give the study's hydra.sweeper.study_name (and hydra.sweeper.storage)"
            )
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                direction=self.options["direction"],
                sampler=self._sampler(),
                load_if_exists=True,
            )
        except ValueError as err:
            raise SeglabError(f"cannot create the study '{name}': {one_line(err)}") from None
        direction = study.direction.name.lower()
        if direction != self.options["direction"]:
            raise SeglabError(
                f"study '{name}' in {shown_url(url)} is to {direction}, not to "
                f"{self.options['direction']} (hydra.sweeper.direction)"
            )
        self._check_search_space(study, url)
        return study

    def _connect(self, url: str) -> optuna.storages.RDBStorage:
        """The study's database. Workers starting together on an empty database create
        its tables and stamp its schema version at the same moment, and one of them may
        lose that race (PostgreSQL: duplicate key; SQLite: UNIQUE constraint failed on
        alembic_version, also against a reader opening the file): it tries again."""
        for attempt in range(3):
            try:
                return open_storage(
                    url,
                    heartbeat_interval=int(self.options["heartbeat_interval"]),
                    grace_period=int(self.options["grace_period"]),
                    retry_stale_trials=True,
                    storage_class=SweeperStorage,
                )
            except SeglabError as err:
                if attempt == 2 or not any(
                    word in str(err)
                    for word in ("already exists", "duplicate key", "UNIQUE constraint", "locked")
                ):
                    raise
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def _sampler(self) -> optuna.samplers.BaseSampler:
        spec = self.options["sampler"] or {"_target_": "optuna.samplers.TPESampler"}
        try:
            sampler = instantiate(spec)
        except Exception as err:
            raise SeglabError(f"hydra.sweeper.sampler cannot be built: {one_line(err)}") from None
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise SeglabError(
                f"hydra.sweeper.sampler builds a {type(sampler).__name__}, not an optuna sampler"
            )
        return sampler

    def _check_search_space(self, study: optuna.Study, url: str) -> None:
        """Record the search space in a new study; refuse to continue a study that was
        searched over another one."""
        current = {key: distribution_to_json(d) for key, d in self.space.items()}
        stored = study.user_attrs.get(SPACE_ATTR)
        if stored is None:
            study.set_user_attr(SPACE_ATTR, current)
            return
        before = {key: json_to_distribution(d) for key, d in stored.items()}
        changes = []
        for key in sorted(before.keys() | self.space.keys()):
            if key not in self.space:
                changes.append(f"{key} is gone (was {describe(before[key])})")
            elif key not in before:
                changes.append(f"{key} is new ({describe(self.space[key])})")
            elif before[key] != self.space[key]:
                changes.append(
                    f"{key} was {describe(before[key])}, now {describe(self.space[key])}"
                )
        if changes:
            raise SeglabError(
                f"study '{study.study_name}' in {shown_url(url)} searched another space: "
                f"{'; '.join(changes)}; continue it with the same parameters, or start "
                "another study (hydra.sweep.dir or hydra.sweeper.study_name)"
            )

    def _fail_dead_trials(self, study: optuna.Study) -> None:
        """Fail the running trials whose process died, which queues each of them again,
        once; a trial of a worker still at work keeps its heartbeat and goes on.

        A trial killed between being asked for and its first heartbeat has none, and
        optuna never takes such a trial for stale: every running trial gets a heartbeat
        here, so that the dead ones are all stale after grace_period.
        """
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        assert self.storage is not None
        study_id = self.storage.get_study_id_from_name(study.study_name)
        for trial in running:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            self.storage.record_heartbeat(trial_id)
        grace = int(self.options["grace_period"])
        log.info(
            "Waiting %d s (grace_period) for the heartbeats of running trials %s",
            grace,
            [t.number for t in running],
        )
        deadline = time.monotonic() + grace + 2
        while True:
            optuna.storages.fail_stale_trials(study)
            still = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not still or time.monotonic() > deadline:
                break
            time.sleep(1)
        dead = sorted({t.number for t in running} - {t.number for t in still})
        log.info("Trials whose process died, failed and queued again: %s", dead)
        write_trials(study.get_trials(deepcopy=False), self.sweep_dir / "trials.csv")

    def _remaining(self, study: optuna.Study) -> int:
        """Trials still to run here: new ones up to n_trials, and the queued retries."""
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        return max(self.n_trials - len(counted(trials)), 0) + waiting

    def _stop_when_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # trials.csv as the study stands now, not only when the sweep ends.
        write_trials(study.get_trials(deepcopy=False), self.sweep_dir / "trials.csv")
        if self._remaining(study) == 0:
            study.stop()

    def _objective(self, url: str):
        """The function optuna calls in a thread for each trial: run the trial's job."""
        # A PostgreSQL password travels to the jobs in PGPASSWORD (inherited by launcher
        # workers, exported to SLURM jobs), not in the overrides every run saves.
        link_url = _without_password(url)
        subdir_is_number = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get(
            "subdir"
        ) in ("${hydra.job.num}", None)

        def objective(trial: Trial) -> float:
            study = trial.study
            if isinstance(self.storage, SweeperStorage):
                self.storage.alive.add(trial._trial_id)  # noqa: SLF001 (optuna has no public id)
            trials = study.get_trials(deepcopy=False)
            frozen = next(t for t in trials if t.number == trial.number)
            if retry_of(frozen) is None:
                earlier = [t for t in counted(trials) if t.number < trial.number]
                if len(earlier) >= self.n_trials:
                    trial.set_user_attr(SURPLUS_ATTR, True)
                    reason = f"not run: the study had its n_trials={self.n_trials} already"
                    trial.set_user_attr(ERROR_ATTR, reason)
                    raise TrialFailed(reason)
            trial.set_user_attr(WORKER_ATTR, WORKER)
            params = {key: suggest(trial, key, d) for key, d in self.space.items()}
            link = trial_link(link_url, study.study_name, trial.number, self.options["pruner"])
            overrides = [
                *self.fixed,
                *(f"{key}={override_value(value)}" for key, value in params.items()),
                f"+{TRIAL_KEY}={override_value(link)}",
            ]
            if subdir_is_number:
                trial.set_user_attr(RUN_DIR_ATTR, str(self.sweep_dir / str(trial.number)))
            try:
                [result] = self.launcher.launch([overrides], initial_job_idx=trial.number)
            except KeyboardInterrupt:
                trial.set_user_attr(ERROR_ATTR, "interrupted")
                raise
            except Exception as err:  # the launcher lost the job: its process was killed
                # Like a trial whose heartbeat stopped, it runs once more.
                retry_stale(study, study.get_trials(deepcopy=False)[trial.number])
                reason = f"its job was lost: {type(err).__name__}: {one_line(err)}"
                mark_run_failed(trial.user_attrs.get(RUN_DIR_ATTR), reason)
                _fail(trial, reason)
            return _value(trial, result, self.config.get("optimized_metric"))

        return objective


def _value(trial: Trial, result: JobReturn, metric: str | None) -> float:
    """The value a trial's job returned; a pruned job raises optuna's TrialPruned, a
    failed one records its error on the trial and raises."""
    if result.hydra_cfg is not None:
        trial.set_user_attr(RUN_DIR_ATTR, str(result.hydra_cfg.hydra.runtime.output_dir))
    if result.status != JobStatus.COMPLETED:
        # The job's exception (Hydra's return_value would raise it).
        error = result._return_value  # noqa: SLF001 (Hydra has no public reader of it)
        if isinstance(error, Pruned | optuna.TrialPruned):
            raise optuna.TrialPruned(str(error))
        _fail(trial, f"{type(error).__name__}: {one_line(error)}")
    value = result.return_value
    if value is None or not math.isfinite(float(value)):
        _fail(trial, f"the run returned {value} for best/{metric}")
    return float(value)


def _fail(trial: Trial, reason: str) -> NoReturn:
    """Record why `trial` failed and fail it; its job's traceback is in its run
    directory's train.log, so optuna's log shows the reason alone."""
    trial.set_user_attr(ERROR_ATTR, reason)
    raise TrialFailed(reason) from None


def _first_value(distribution: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low


def _without_password(url: str) -> str:
    parsed = make_url(url)
    if parsed.password is None or not parsed.drivername.startswith("postgres"):
        return url
    os.environ["PGPASSWORD"] = str(parsed.password)  # libpq reads it when the URL has none
    # (URL.set leaves a field alone when given None.)
    return parsed._replace(password=None).render_as_string(hide_password=False)
