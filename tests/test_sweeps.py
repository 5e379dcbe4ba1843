"""Optuna sweeps through seglab's sweeper: search space, study storage (SQLite, and a real
PostgreSQL server for many workers), pruning from inside the run, resume after a kill,
DDP trials, results and the dashboard.

The command-line tests run `python -m seglab.train -m ...` with tests/ on PYTHONPATH, so
that trials can load the small callbacks below by `_target_`.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.seglab_optuna_sweeper._search_space import (
    override_value,
    parse_search_space,
)
from seglab.errors import SeglabError
from seglab.sweeps import (
    PRUNERS,
    TRIAL_KEY,
    Pruned,
    build_pruner,
    open_storage,
    spawns_ranks,
    trial_link,
)
from seglab.train import train

TESTS = Path(__file__).parent
REPO = TESTS.parent
# A trial in seconds: 16 tiny images, 4 steps an epoch, no logger; TINY, the cheapest,
# trains the plain CNN.
TINY_DATA = [
    "data.num_train=16",
    "data.num_val=8",
    "data.num_test=8",
    "data.image_size=32",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "logger=none",
]
TINY = ["experiment=shapes_cnn", *TINY_DATA]
SWEEP = ["hydra/sweeper=seglab_optuna", "optimizer.lr=tag(log,interval(0.0001,0.01))"]


class SlowFit(L.Callback):
    """Sleeps `seconds` after training in the trials numbered in `trials` (all if None),
    to see which trial waits for which."""

    def __init__(self, trial: int, seconds: float, trials: list[int] | None = None) -> None:
        self.slow = trials is None or trial in trials
        self.seconds = seconds

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.slow:
            time.sleep(self.seconds)


class LateHeartbeats(L.Callback):
    """At the end of training, dates back by an hour the heartbeats of the other
    running trials of the study in `database`: what a database held by other writers,
    or a loaded machine, does to them."""

    def __init__(self, database: str, trial: int, trials: list[int]) -> None:
        self.database, self.trial, self.late = database, trial, trial in trials

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.late:
            return
        with sqlite3.connect(self.database, timeout=60) as connection:
            connection.execute(
                "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') "
                "WHERE trial_id IN (SELECT trial_id FROM trials WHERE state = 'RUNNING' "
                "AND number != ?)",
                (self.trial,),
            )


class RecordParams(L.Callback):
    """Writes the trial and parameters each DDP rank trains with into
    <output_dir>/rank<r>.json."""

    def __init__(self, output_dir: str, trial: int, lr: float, max_epochs: int) -> None:
        self.output_dir = Path(output_dir)
        self.params = {"trial": trial, "optimizer.lr": lr, "trainer.max_epochs": max_epochs}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.output_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.params))


class CopyTrialsCsv(L.Callback):
    """Copies the sweep's trials.csv, as it is when this trial starts, into the trial's
    run directory as trials_at_start.csv."""

    def __init__(self, sweep_dir: str, output_dir: str) -> None:
        self.sweep_dir, self.output_dir = Path(sweep_dir), Path(output_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = self.sweep_dir / "trials.csv"
        if source.is_file():
            shutil.copy(source, self.output_dir / "trials_at_start.csv")


def slow(seconds: float, trials: list[int] | None = None) -> list[str]:
    """Overrides adding `SlowFit` to every trial (it reads its own number)."""
    chosen = [] if trials is None else [f"+callbacks.slow.trials={trials}".replace(" ", "")]
    return [
        f"+callbacks.slow._target_={__name__}.SlowFit",
        "+callbacks.slow.trial=${hydra:job.num}",
        f"+callbacks.slow.seconds={seconds}",
        *chosen,
    ]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _cli(*args: str, cwd: Path, ok: bool = True, timeout: int = 600):
    result = subprocess.run(
        [sys.executable, "-m", "seglab.train", "-m", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if ok:
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


def _study(sweep_dir: Path, name: str = "seglab") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def _states(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials()}


def _plant_finished_trial(sweep_dir: Path, curve: dict[int, float]) -> None:
    """A study in the sweep directory holding one finished trial whose validation curve
    beats any real tiny run: the next trial is a bad curve next to it."""
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(
        storage=f"sqlite:///{sweep_dir / 'optuna.db'}", study_name="seglab", direction="maximize"
    )
    study.add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=1.0, intermediate_values=curve)
    )


# --- the search space --------------------------------------------------------------


def test_sweep_syntax_becomes_optuna_distributions():
    space, fixed = parse_search_space(
        {
            "optimizer.lr": "tag(log, interval(0.0003, 0.01))",
            "optimizer.weight_decay": "interval(0.0, 0.001)",
            "trainer.max_epochs": "int(interval(2, 8))",
            "data.batch_size": "range(8, 33, 8)",
            "loss": "choice(ce, ce_dice)",
            "trainer.max_steps": "100",
        },
        ["model=cnn,fcn", "optimizer.weight_decay=0.0001", "seed=3"],
    )
    assert space == {
        "optimizer.lr": FloatDistribution(0.0003, 0.01, log=True),
        "trainer.max_epochs": IntDistribution(2, 8),
        "data.batch_size": IntDistribution(8, 32, step=8),
        "loss": CategoricalDistribution(["ce", "ce_dice"]),
        "model": CategoricalDistribution(["cnn", "fcn"]),
    }
    # A value on the command line fixes a searched key; plain entries pass through.
    assert fixed == ["trainer.max_steps=100", "optimizer.weight_decay=0.0001", "seed=3"]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("tag(log, interval(0, 1))", "low > 0"),
        ("interval(0.5, 0.1)", "low <= high"),
        ("interval(0.1", "cannot parse"),
        ("glob(*)", "glob"),
        ("choice([1,2],[3])", "string, number or boolean"),
    ],
)
def test_a_search_space_entry_optuna_cannot_use_is_one_line_naming_its_key(entry, reason):
    with pytest.raises(SeglabError, match=f"search space entry optimizer.lr: .*{reason}") as err:
        parse_search_space({"optimizer.lr": entry}, [])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["a\\b", "it's", "ends\\", "1", "sqlite:////x y/o.db", 1e-05])
def test_trial_values_survive_hydras_override_parser(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    [override] = OverridesParser.create().parse_overrides([f"k={override_value(value)}"])
    assert override.value() == value


# --- storage, pruner, DDP detection -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_storage_is_one_line_with_the_password_hidden():
    url = f"postgresql://seglab:hunter2@127.0.0.1:{_free_port()}/optuna"
    with pytest.raises(SeglabError) as err:
        open_storage(url)
    message = str(err.value)
    assert message.startswith("cannot open the optuna storage postgresql://seglab:***@127.0.0.1")
    assert "hunter2" not in message and "\n" not in message
    assert "refused" in message.lower()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_two_threads_never_take_the_same_queued_trial_from_sqlite(tmp_path):
    """Retries wait in the study; with SQLite's plain transactions two askers at once
    both took the same one (about one time in five here) and ran it twice."""
    distribution = FloatDistribution(0, 1)
    for attempt in range(10):
        storage = open_storage(f"sqlite:///{tmp_path / f'{attempt}.db'}", heartbeat_interval=1)
        study = optuna.create_study(storage=storage)
        for x in (0.1, 0.2):
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING, params={"x": x}, distributions={"x": distribution}
                )
            )
        ran: list[int] = []

        def objective(trial: optuna.Trial, ran: list[int] = ran) -> float:
            ran.append(trial.number)
            time.sleep(0.1)
            return trial.suggest_float("x", 0, 1)

        study.optimize(objective, n_trials=2, n_jobs=2)
        assert sorted(ran) == [0, 1], attempt
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def test_a_worker_losing_the_race_to_set_up_a_new_database_tries_again(tmp_path, monkeypatch):
    from hydra_plugins.seglab_optuna_sweeper import _sweep

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    calls: list[str] = []

    def open_once_lost(url: str, **kwargs) -> optuna.storages.RDBStorage:
        calls.append(url)
        if len(calls) == 1:  # what SQLite said when another process stamped it first
            raise SeglabError(
                f"cannot open the optuna storage {url}: UNIQUE constraint failed: "
                "alembic_version.version_num"
            )
        return open_storage(url, **kwargs)

    monkeypatch.setattr(_sweep, "open_storage", open_once_lost)
    monkeypatch.setattr(_sweep.time, "sleep", lambda seconds: None)
    sweep = _sweep.Sweep.__new__(_sweep.Sweep)
    sweep.options = {"heartbeat_interval": 30, "grace_period": 90}
    storage = sweep._connect(url)
    assert isinstance(storage, _sweep.SweeperStorage) and calls == [url, url]


def test_pruners_by_name():
    assert type(build_pruner("median")).__name__ == "MedianPruner"
    assert type(build_pruner("hyperband")).__name__ == "HyperbandPruner"
    assert type(build_pruner("successive_halving")).__name__ == "SuccessiveHalvingPruner"
    assert type(build_pruner("none")).__name__ == "NopPruner"
    node = build_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2})
    assert node._n_startup_trials == 2
    with pytest.raises(SeglabError, match="hydra.sweeper.pruner=medain is not a pruner"):
        build_pruner("medain")
    assert set(PRUNERS) == {"none", "median", "hyperband", "successive_halving"}


def test_a_trial_starts_its_own_process_only_where_lightning_spawns_ranks(make_cfg, monkeypatch):
    for name in ("SLURM_NTASKS", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not spawns_ranks(make_cfg(tiny=False))
    assert spawns_ranks(make_cfg("trainer=ddp_cpu", tiny=False))
    assert not spawns_ranks(make_cfg("trainer=ddp_cpu", "trainer.devices=1", tiny=False))
    monkeypatch.setenv("SLURM_NTASKS", "2")  # SLURM started every rank already
    assert not spawns_ranks(make_cfg("trainer=ddp_cpu", tiny=False))


# --- pruning from inside the run ---------------------------------------------------


def test_a_trial_reports_every_epoch_and_a_bad_curve_is_pruned_before_its_last_epoch(
    make_cfg, tmp_path
):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.add_trial(  # a finished trial no tiny run can match
        optuna.trial.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0})
    )
    run = [*TINY, "callbacks=none"]  # 2 epochs

    study.ask()  # trial 1, as the sweeper asks for it: reported to, not pruned
    link = override_value(trial_link(url, "s", 1, "none"))
    cfg = make_cfg(*run, f"+{TRIAL_KEY}={link}")
    train(cfg)
    assert sorted(study.trials[1].intermediate_values) == [0, 1]

    study.ask()  # trial 2, judged by the median of the finished trials at each epoch
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}
    link = override_value(trial_link(url, "s", 2, pruner))
    cfg = make_cfg(*run, f"+{TRIAL_KEY}={link}", output_dir=tmp_path / "t2")
    with pytest.raises(Pruned, match="optuna trial 2 pruned at epoch 0: val/acc"):
        train(cfg)
    assert list(study.trials[2].intermediate_values) == [0]
    note = json.loads((tmp_path / "t2" / "pruned.json").read_text())
    assert note["trial"] == 2 and note["epoch"] == 0 and note["metric"] == "val/acc"
    assert not (tmp_path / "t2" / "metrics.json").exists()  # ended before testing


# --- whole sweeps on the command line ----------------------------------------------


@pytest.mark.slow
def test_sqlite_sweep_of_four_trials_on_two_joblib_workers_that_wait_for_none(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = _cli(
        *SWEEP,
        *TINY,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        *slow(10, trials=[0]),
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert f"optuna-dashboard sqlite:///{sweep_dir / 'optuna.db'}" in result.stderr + result.stdout

    trials = _study(sweep_dir).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    # Trial 2 took the worker trial 1 left, while trial 0 was still running: no batch.
    assert trials[2].datetime_start < trials[0].datetime_complete

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = max(trials, key=lambda t: t.value)
    assert results["best_value"] == pytest.approx(best.value)
    assert results["best_params"] == best.params and set(best.params) == {"optimizer.lr"}
    assert results["trials"] == {"COMPLETE": 4}
    with (sweep_dir / "trials.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    for row, trial in zip(rows, trials, strict=True):
        assert row["state"] == "COMPLETE"
        assert float(row["optimizer.lr"]) == trial.params["optimizer.lr"]
        assert Path(row["run_dir"]) == sweep_dir / row["number"]
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["metrics"]
        assert float(row["value"]) == pytest.approx(metrics["best/val/acc"])
        assert float(row["duration_s"]) > 0
    for plot in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (sweep_dir / "plots" / f"{plot}.html").stat().st_size > 1000


@pytest.mark.slow
def test_a_running_trial_whose_heartbeats_come_late_is_not_failed_by_its_own_sweeper(tmp_path):
    # Trial 0 trains on while trial 1 ends and dates its heartbeat back past
    # grace_period; trial 2's start looks for stale trials. Taken for stale, trial 0
    # could not be told its result when its job ended, and optuna ended the sweep.
    sweep_dir = tmp_path / "sweep"
    _cli(
        *SWEEP,
        *TINY,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.grace_period=5",
        *slow(12, trials=[0]),
        f"+callbacks.late._target_={__name__}.LateHeartbeats",
        f"+callbacks.late.database={sweep_dir / 'optuna.db'}",
        "+callbacks.late.trial=${hydra:job.num}",
        "+callbacks.late.trials=[1]",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert _states(_study(sweep_dir)) == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}


@pytest.mark.slow
def test_trials_csv_holds_each_trial_as_soon_as_it_ends(tmp_path):
    """Not only at the end of the sweep: a sweep killed in its third trial keeps the
    first two in trials.csv."""
    sweep_dir = tmp_path / "sweep"
    _cli(
        *SWEEP,
        *TINY,
        "trainer.max_epochs=1",
        "hydra.sweeper.n_trials=3",
        f"+callbacks.copy_csv._target_={__name__}.CopyTrialsCsv",
        "+callbacks.copy_csv.sweep_dir=${hydra:sweep.dir}",
        "+callbacks.copy_csv.output_dir=${hydra:runtime.output_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert not (sweep_dir / "0" / "trials_at_start.csv").exists()  # none yet
    study = _study(sweep_dir)
    for number in (1, 2):
        with (sweep_dir / str(number) / "trials_at_start.csv").open() as file:
            rows = list(csv.DictReader(file))
        assert [(r["number"], r["state"]) for r in rows] == [
            (str(n), "COMPLETE") for n in range(number)
        ]
        # Each row holds the value the trial's run returned to the study.
        values = [study.trials[n].value for n in range(number)]
        assert [float(r["value"]) for r in rows] == pytest.approx(values, rel=1e-9)


@pytest.mark.slow
def test_failed_and_pruned_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    """Beside a finished trial with a perfect curve, a grid of two: lr 1e30 diverges (the
    NaN stop, in epoch 0) and fails with its reason; lr 0.001 reports a worse epoch 0 and
    is pruned, 2 epochs before its last."""
    sweep_dir = tmp_path / "sweep"
    _plant_finished_trial(sweep_dir, {0: 1.0, 1: 1.0, 2: 1.0})
    _cli(
        *TINY,
        "trainer.max_epochs=3",
        "hydra/sweeper=seglab_optuna",
        "optimizer.lr=choice(1e30,0.001)",
        "~hydra.sweeper.sampler",
        "+hydra.sweeper.sampler={_target_:optuna.samplers.GridSampler,"
        "search_space:{optimizer.lr:[1e30,0.001]},seed:0}",
        "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1}",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    trials = {t.params.get("optimizer.lr"): t for t in _study(sweep_dir).get_trials()}
    diverged, pruned = trials[1e30], trials[0.001]
    assert diverged.state == TrialState.FAIL
    assert re.search(r"training loss is (nan|inf) at epoch 0", diverged.user_attrs["error"])
    assert pruned.state == TrialState.PRUNED
    assert list(pruned.intermediate_values) == [0]
    run_dir = Path(pruned.user_attrs["run_dir"])
    assert json.loads((run_dir / "pruned.json").read_text())["epoch"] == 0
    assert json.loads((run_dir / "run_info.json").read_text())["status"] == "pruned"
    diverged_info = json.loads((Path(diverged.user_attrs["run_dir"]) / "run_info.json").read_text())
    assert diverged_info["status"] == "failed" and "training loss is" in diverged_info["error"]
    with (sweep_dir / "trials.csv").open() as file:
        rows = {r["number"]: r for r in csv.DictReader(file)}
    assert "training loss is" in rows[str(diverged.number)]["error"]
    assert rows[str(pruned.number)]["state"] == "PRUNED"


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_losing_or_overwriting_a_trial(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [
        *SWEEP,
        *TINY,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
        *slow(2),
        f"hydra.sweep.dir={sweep_dir}",
    ]
    with (tmp_path / "killed.log").open("w") as log:
        sweeper = subprocess.Popen(
            [sys.executable, "-m", "seglab.train", "-m", *args],
            cwd=tmp_path,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its job workers share its process group
        )
        try:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline and sweeper.poll() is None:
                # Read the study once the sweeper has set it up: opening a new
                # database stamps its schema, which a reader would race it for.
                if "Study 'seglab' in" in (tmp_path / "killed.log").read_text():
                    try:
                        states = _states(_study(sweep_dir))
                    except (KeyError, optuna.exceptions.StorageInternalError):
                        states = {}
                    if list(states.values()).count("COMPLETE") >= 2:
                        break
                time.sleep(0.3)
            log.flush()
            ended = sweeper.poll()
            assert ended is None, (
                f"the sweep ended (exit {ended}) before it could be killed:\n"
                + (tmp_path / "killed.log").read_text()[-4000:]
            )
            os.kill(sweeper.pid, signal.SIGKILL)
            sweeper.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):  # none left in the group
                os.killpg(sweeper.pid, signal.SIGKILL)  # the orphaned workers die with it

    before = {t.number: t for t in _study(sweep_dir).get_trials()}
    finished = {n: t for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert len(finished) == 2, _states(_study(sweep_dir))
    files = {
        p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for n in finished
        for p in (sweep_dir / str(n)).rglob("*")
        if p.is_file()
    }

    _cli(*args, "hydra.sweeper.resume=true", cwd=tmp_path)

    after = _study(sweep_dir).get_trials()
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    for number, trial in finished.items():  # kept as they were
        assert after[number].state == TrialState.COMPLETE
        assert after[number].value == trial.value and after[number].params == trial.params
    for path, stamp in files.items():
        assert (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()) == stamp
    # The trials that died were failed by their heartbeat and run once more, with new
    # numbers and run directories.
    died = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    retried = {t.system_attrs["failed_trial"]: t for t in after if "failed_trial" in t.system_attrs}
    assert died and sorted(retried) == sorted(died)
    for number in died:
        assert after[number].state == TrialState.FAIL
        retry = retried[number]
        assert retry.state == TrialState.COMPLETE and retry.number > max(before)
        # (A trial killed before it drew its parameters draws them in its retry.)
        assert retry.params == after[number].params or not after[number].params
        assert Path(retry.user_attrs["run_dir"]) == sweep_dir / str(retry.number)
    run_dirs = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(run_dirs)) == 4
    with (sweep_dir / "trials.csv").open() as file:
        rows = {int(r["number"]): r for r in csv.DictReader(file)}
    assert all("no heartbeat" in rows[n]["error"] for n in died)


@pytest.mark.slow
def test_a_ddp_trial_runs_one_set_of_parameters_on_both_ranks_and_is_pruned_on_both(tmp_path):
    """Two DDP trials (2 gloo processes each): max_epochs=1 finishes, max_epochs=3 is
    pruned at epoch 1 (beside a finished trial with a perfect curve from epoch 1 on)."""
    sweep_dir = tmp_path / "sweep"
    _plant_finished_trial(sweep_dir, {1: 1.0, 2: 1.0})
    _cli(
        *TINY,
        "trainer=ddp_cpu",
        "hydra/sweeper=seglab_optuna",
        "trainer.max_epochs=choice(1,3)",
        "~hydra.sweeper.sampler",
        "+hydra.sweeper.sampler={_target_:optuna.samplers.GridSampler,"
        "search_space:{trainer.max_epochs:[1,3]},seed:0}",
        "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1}",
        "hydra.sweeper.n_trials=3",
        f"+callbacks.params._target_={__name__}.RecordParams",
        "+callbacks.params.output_dir=${paths.output_dir}",
        "+callbacks.params.trial=${callbacks.optuna_trial.number}",
        "+callbacks.params.lr=${optimizer.lr}",
        "+callbacks.params.max_epochs=${trainer.max_epochs}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=900,
    )
    trials = {t.number: t for t in _study(sweep_dir).get_trials() if t.number > 0}
    assert len(trials) == 2
    for trial in trials.values():
        run_dir = Path(trial.user_attrs["run_dir"])
        ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0] == ranks[1]
        assert ranks[0]["trial"] == trial.number
        assert ranks[0]["trainer.max_epochs"] == trial.params["trainer.max_epochs"]
        if trial.params["trainer.max_epochs"] == 1:
            assert trial.state == TrialState.COMPLETE
            metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
            assert trial.value == pytest.approx(metrics["best/val/acc"])
        else:
            assert trial.state == TrialState.PRUNED
            assert sorted(trial.intermediate_values) == [0, 1]
            assert json.loads((run_dir / "pruned.json").read_text())["epoch"] == 1


@pytest.mark.slow
def test_the_shapes_recipe_runs_on_the_submitit_local_launcher(tmp_path):
    sweep_dir = tmp_path / "sweep"
    _cli(
        "hparams_search=shapes_optuna",
        *TINY_DATA,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    trials = _study(sweep_dir, "shapes").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        assert set(trial.params) == {
            "optimizer.lr",
            "optimizer.weight_decay",
            "loss",
            "model.encoder_name",
        }
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["metrics"]["best/val/mIoU"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["optimizer.lr=tag(log,interval(0,0.01))"],
            "seglab: error: search space entry optimizer.lr: optuna cannot use",
        ),
        (
            [*SWEEP, "hydra.sweeper.resume=true"],
            "seglab: error: hydra.sweeper.resume=true but there is no study to resume",
        ),
        (
            ["optimizer.lrr=interval(0.1,0.2)"],
            "seglab: error: the trials' overrides do not compose: Could not override "
            "'optimizer.lrr'",
        ),
    ],
    ids=["search-space", "resume-without-study", "unknown-key"],
)
def test_bad_sweeps_stop_with_one_line_before_any_trial(tmp_path, args, message):
    sweep_dir = tmp_path / "sweep"
    if "hydra/sweeper=seglab_optuna" not in args:
        args = ["hydra/sweeper=seglab_optuna", *args]
    result = _cli(*args, *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, ok=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-3000:]
    assert not list(sweep_dir.glob("0"))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_each_way_a_job_ends_becomes_its_trials_state(tmp_path):
    """Through a stand-in launcher: a value completes the trial; `Pruned` prunes it; an
    error, or no finite value, fails it with the reason; a lost job fails it and queues it
    once more; a trial asked past n_trials (two workers at once) is failed unrun."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from hydra_plugins.seglab_optuna_sweeper._sweep import Sweep

    outcomes = [
        0.7,
        Pruned("optuna trial 1 pruned at epoch 0"),
        SeglabError("training loss is nan at epoch 0, step 1"),
        float("nan"),
        OSError("A worker process was unexpectedly terminated"),
        0.6,  # trial 4 again
    ]

    class Launcher:
        overrides: list[list[str]] = []

        def launch(self, job_overrides, initial_job_idx):
            self.overrides.append(list(job_overrides[0]))
            outcome = outcomes.pop(0)
            if isinstance(outcome, OSError):
                raise outcome
            failed = isinstance(outcome, Exception)
            status = JobStatus.FAILED if failed else JobStatus.COMPLETED
            return [JobReturn(status=status, _return_value=outcome)]

    sweep = Sweep.__new__(Sweep)
    sweep.options, sweep.launcher, sweep.n_trials = {"pruner": "median"}, Launcher(), 5
    sweep.storage = None
    sweep.config = OmegaConf.create(
        {
            "hydra": {"sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.num}"}},
            "optimized_metric": "val/acc",
        }
    )
    sweep.sweep_dir, sweep.space, sweep.fixed = tmp_path, {"x": IntDistribution(0, 9)}, ["a=1"]
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.optimize(sweep._objective(url), n_trials=7, catch=(Exception,))

    trials = study.get_trials()
    assert [t.state.name for t in trials] == [
        *("COMPLETE", "PRUNED", "FAIL", "FAIL", "FAIL", "COMPLETE"),
        "FAIL",  # the 7th asked: 5 trials and one retry ran already
    ]
    errors = [t.user_attrs.get("error") for t in trials]
    assert errors[2] == "SeglabError: training loss is nan at epoch 0, step 1"
    assert errors[3] == "the run returned nan for best/val/acc"
    assert errors[4].startswith("its job was lost: OSError: A worker process")
    assert trials[5].system_attrs["failed_trial"] == 4 and trials[5].params == trials[4].params
    assert trials[6].user_attrs["surplus"] and not trials[6].params
    assert len(Launcher.overrides) == 6  # the surplus trial ran nothing
    assert Launcher.overrides[0] == [
        "a=1",
        f"x={trials[0].params['x']}",
        "+callbacks.optuna_trial={_target_:'seglab.sweeps.ReportToTrial',_recursive_:false,"
        f"storage:'{url}',study:'s',number:0,pruner:'median',"
        "monitor:'${optimized_metric}',output_dir:'${paths.output_dir}'}",
    ]
    assert [t.user_attrs.get("run_dir") for t in trials[:6]] == [
        str(tmp_path / str(n)) for n in range(6)
    ]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_resume_fails_the_dead_trials_even_one_killed_before_its_first_heartbeat(tmp_path):
    from hydra_plugins.seglab_optuna_sweeper._sweep import Sweep

    sweep = Sweep.__new__(Sweep)
    sweep.options = {"grace_period": 1}
    sweep.sweep_dir = tmp_path
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep.storage = open_storage(url, heartbeat_interval=1, grace_period=1, retry_stale_trials=True)
    study = optuna.create_study(storage=sweep.storage, study_name="s")
    study.ask({"x": IntDistribution(0, 9)})  # asked, then killed: no heartbeat ever
    sweep._fail_dead_trials(study)
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == 0
    assert retry.params == dead.params


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_trial_failed_for_its_dead_process_says_failed_in_its_run_info_and_trials_csv(
    tmp_path,
):
    """A trial killed with its sweep left run_info.json saying `running`; when the
    sweeper fails it, the record says failed with the reason and keeps its other keys."""
    from hydra_plugins.seglab_optuna_sweeper._results import NO_HEARTBEAT, RUN_DIR_ATTR
    from hydra_plugins.seglab_optuna_sweeper._sweep import Sweep, SweeperStorage

    sweep = Sweep.__new__(Sweep)
    sweep.options = {"grace_period": 1}
    sweep.sweep_dir = tmp_path
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep.storage = open_storage(
        url, heartbeat_interval=1, grace_period=1, retry_stale_trials=True,
        storage_class=SweeperStorage,
    )  # fmt: skip
    study = optuna.create_study(storage=sweep.storage, study_name="s")
    run_dirs = [tmp_path / "0", tmp_path / "1"]
    for run_dir, status in zip(run_dirs, ["running", "finished"], strict=True):
        trial = study.ask({"x": IntDistribution(0, 9)})
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
        run_dir.mkdir()
        (run_dir / "run_info.json").write_text(json.dumps({"status": status, "seed": 7}))
    sweep._fail_dead_trials(study)

    killed = json.loads((run_dirs[0] / "run_info.json").read_text())
    assert killed["status"] == "failed" and killed["error"] == NO_HEARTBEAT
    assert killed["seed"] == 7 and "ended" in killed
    # A run that recorded its own end keeps it.
    assert json.loads((run_dirs[1] / "run_info.json").read_text())["status"] == "finished"
    with (tmp_path / "trials.csv").open() as file:
        rows = {r["number"]: r for r in csv.DictReader(file)}
    assert rows["0"]["state"] == "FAIL" and rows["0"]["error"] == NO_HEARTBEAT


def test_resuming_with_another_search_space_names_the_difference(tmp_path):
    """The check runs when the study opens, before any trial: in-process here."""
    from hydra_plugins.seglab_optuna_sweeper._sweep import Sweep

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db'}", study_name="s")
    sweep = Sweep.__new__(Sweep)
    sweep.space = {"optimizer.lr": FloatDistribution(0.001, 0.01, log=True)}
    sweep._check_search_space(study, "sqlite:///db")  # a new study records its space
    sweep.space = {
        "optimizer.lr": FloatDistribution(0.001, 0.1, log=True),
        "loss": CategoricalDistribution(["ce", "dice"]),
    }
    with pytest.raises(SeglabError) as err:
        sweep._check_search_space(study, "sqlite:///db")
    assert str(err.value) == (
        "study 's' in sqlite:///db searched another space: loss is new (choice(ce, dice)); "
        "optimizer.lr was log interval(0.001, 0.01), now log interval(0.001, 0.1); "
        "continue it with the same parameters, or start another study "
        "(hydra.sweep.dir or hydra.sweeper.study_name)"
    )


# --- PostgreSQL: many workers on one study ------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server from Debian's packages, in a temporary directory on a free
    local port, run by the `postgres` user when the tests run as root; its URL (user
    seglab, password secret). Stopped after the module's tests."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs it on CI")
        pytest.skip(message)
    bin_dir = Path(initdb[-1]).parent
    # Not under pytest's tmp_path: the server's user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="seglab-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    password = root / "password"
    password.write_text("secret\n")
    if as_user:
        shutil.chown(password, "postgres")
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    pg(
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        "-U",
        "seglab",
        "--auth=scram-sha-256",
        f"--pwfile={password}",
    )
    pg(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        "start",
    )
    try:
        yield f"postgresql://seglab:secret@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgres_study_and_run_no_trial_twice(tmp_path, postgres):
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "seglab.train",
        "-m",
        *SWEEP,
        *TINY,
        f"hydra.sweeper.storage={postgres}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=4",
        *slow(3),
        f"hydra.sweep.dir={sweep_dir}",
    ]
    # Each writes to a file: one waiting on an unread pipe would leave the study to the other.
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = []
    for log in logs:
        with log.open("w") as file:
            workers.append(
                subprocess.Popen(
                    command, cwd=tmp_path, env=_env(), stdout=file, stderr=subprocess.STDOUT
                )
            )
    for worker in workers:
        worker.wait(timeout=600)
    outputs = [log.read_text() for log in logs]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    study = optuna.load_study(
        study_name="shared", storage=postgres.replace("postgresql://", "postgresql+psycopg://")
    )
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    # Any other trial is one both workers asked for at the same moment, never run.
    assert all(t.user_attrs.get("surplus") for t in study.get_trials() if t not in complete)
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both took part
    launched = [int(n) for o in outputs for n in re.findall(r"\t#(\d+) : ", o)]
    assert sorted(launched) == sorted(t.number for t in complete)  # each trial ran once
    for trial in complete:
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["metrics"]["best/val/acc"])
    # The password reached the trials through the environment, not through the config
    # every run saves (and its checkpoints keep).
    saved = [*sweep_dir.glob("*/.hydra/overrides.yaml"), *sweep_dir.glob("*/.hydra/config.yaml")]
    assert len(saved) == 8 and all("secret" not in path.read_text() for path in saved)


@pytest.mark.slow
def test_a_storage_refusing_the_password_stops_the_sweep_with_one_line(tmp_path, postgres):
    url = postgres.replace(":secret@", ":wrong@")
    result = _cli(
        *SWEEP,
        *TINY,
        f"hydra.sweeper.storage={url}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        ok=False,
    )
    last = result.stderr.strip().splitlines()[-1]
    shown = url.replace(":wrong@", ":***@")
    assert last.startswith(f"seglab: error: cannot open the optuna storage {shown}: ")
    assert "password authentication failed" in last and "wrong" not in last.replace(shown, "")


# --- the dashboard --------------------------------------------------------------------


def test_make_dashboard_serves_the_sweeps_study(tmp_path):
    sweep_dir = tmp_path / "sweep"
    _plant_finished_trial(sweep_dir, {0: 0.5})
    port = _free_port()
    venv = Path(sys.executable).parent.parent  # this environment's, as the Makefile's VENV
    server = subprocess.Popen(
        # -o: the installed package is taken as it is (no reinstall before serving).
        [
            "make",
            "-s",
            "-o",
            f"{venv}/.installed",
            "dashboard",
            f"SWEEP={sweep_dir}",
            f"VENV={venv}",
            f"ARGS=--port {port} --host 127.0.0.1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/1") as reply:
                    assert reply.status == 200
                    assert json.loads(reply.read())["name"] == "seglab"
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
