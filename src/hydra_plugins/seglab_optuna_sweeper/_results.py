"""What a sweep leaves in its directory, written at the end of every run of the sweeper
(a resumed or joined one included), from the whole study:

    optimization_results.yaml   best parameters, value, trial and run directory; counts
    trials.csv                  every trial: number, state, value, parameters, duration,
                                run directory, error, the trial it retries, worker
                                (also written after every trial, as the study stands)
    plots/*.html                optimization history, parameter importances, parallel
                                coordinates (plotly; plotly.min.js beside them, offline)
"""

from __future__ import annotations

import csv
import logging
import os
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from seglab import rundir
from seglab.errors import one_line
from seglab.secrets import redact, redact_text

log = logging.getLogger(__name__)

# What the sweeper records on each trial (user attributes): why it failed, where it ran,
# which worker (host:pid) ran it, and whether it was a surplus trial, never run.
ERROR_ATTR = "error"
RUN_DIR_ATTR = "run_dir"
WORKER_ATTR = "worker"
SURPLUS_ATTR = "surplus"
# A trial can only end FAIL without an error when optuna fails it for its heartbeat.
NO_HEARTBEAT = "its process died (no heartbeat for grace_period)"

PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
}


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial that `trial` repeats (None for a new trial)."""
    return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def write_results(study: optuna.Study, sweep_dir: Path, storage: str) -> None:
    """Write the study's results into `sweep_dir`; `storage` is the URL to record (its
    password hidden)."""
    trials = study.get_trials(deepcopy=False)
    _write_summary(study, trials, sweep_dir / "optimization_results.yaml", storage)
    write_trials(trials, sweep_dir / "trials.csv")
    _write_plots(study, sweep_dir / "plots")


def mark_run_failed(run_dir: str | Path | None, reason: str) -> None:
    """Record in the trial's run_info.json that the sweeper failed it: a trial killed
    with its sweep never wrote its end and stays `running` there. Its other keys are
    kept; a run that recorded its own end keeps it."""
    if run_dir is None:
        return
    record = rundir.read_record(run_dir, strict=False)  # None: never started
    if record is None or record.get("status") != "running":
        return
    rundir.write_record(
        run_dir,
        record
        | {
            "status": "failed",
            "error": redact_text(reason),
            "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


# Trials end in several threads (n_jobs) and each writes trials.csv.
_WRITING = threading.Lock()


def _write_summary(
    study: optuna.Study, trials: list[FrozenTrial], path: Path, storage: str
) -> None:
    states = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    summary: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "storage": storage,
        "direction": study.direction.name.lower(),
        "trials": {state: count for state, count in states.items() if count},
    }
    if states["COMPLETE"]:
        best = study.best_trial
        summary |= {
            "best_params": redact(best.params),
            "best_value": best.value,
            "best_trial": best.number,
            "best_run_dir": best.user_attrs.get(RUN_DIR_ATTR),
        }
        log.info("Best trial %d: %s = %s, %s", best.number, "value", best.value, best.params)
    else:
        summary |= {"best_params": None, "best_value": None}
        log.warning("No trial of study '%s' completed", study.study_name)
    OmegaConf.save(OmegaConf.create(summary), path)
    log.info("Results: %s", path)


def write_trials(trials: list[FrozenTrial], path: Path) -> None:
    """trials.csv: every trial of the study as it stands (written after each trial)."""
    keys = sorted({key for t in trials for key in t.params})
    columns = ["number", "state", "value", *keys, "duration_s", "run_dir", "error", "retry_of"]
    with _WRITING:
        _write_trials_csv(trials, keys, columns, path)


def _write_trials_csv(
    trials: list[FrozenTrial], keys: list[str], columns: list[str], path: Path
) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*columns, "worker"])
        for t in trials:
            duration = t.duration.total_seconds() if t.duration is not None else None
            writer.writerow(
                [
                    t.number,
                    t.state.name,
                    t.value,
                    *(t.params.get(key) for key in keys),
                    None if duration is None else round(duration, 1),
                    t.user_attrs.get(RUN_DIR_ATTR),
                    # An error may quote the storage URL (a connection refused).
                    redact_text(t.user_attrs.get(ERROR_ATTR) or "")
                    or (NO_HEARTBEAT if t.state == TrialState.FAIL else None),
                    retry_of(t),
                    t.user_attrs.get(WORKER_ATTR),
                ]
            )
    os.replace(partial, path)


def _write_plots(study: optuna.Study, folder: Path) -> None:
    from optuna import visualization  # noqa: PLC0415 (plotly: only for the plots)

    if not visualization.is_available():
        log.warning("No plots: plotly is not installed")
        return
    folder.mkdir(exist_ok=True)
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():  # optuna's remarks on small studies
                warnings.simplefilter("ignore")
                figure = getattr(visualization, function)(study)
        except Exception as err:  # e.g. importances need two finished trials
            log.info("No %s plot: %s", name, one_line(err))
            continue
        figure.write_html(folder / f"{name}.html", include_plotlyjs="directory")
