"""A sweep's page: every run with its overrides, metrics and state, the best one, the
fold/seed aggregates of `seglab.summary`, and for optuna sweeps the optimisation
history."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from seglab import rundir
from seglab.errors import one_line
from seglab.report.html import REPORT_NAME, duration, png, seconds_between
from seglab.summary import Member, read_members, summarize
from seglab.sweeps import TRIAL_KEY, open_storage

log = logging.getLogger(__name__)


def _varying(members: Sequence[Member]) -> tuple[list[str], list[list[str]]]:
    """The overrides every run shares, and per run the others (what tells runs apart),
    without the optuna sweeper's link of a trial to its study (`optuna_trial=...`)."""
    if not members:
        return [], []
    common = set(members[0].overrides).intersection(*(m.overrides for m in members[1:]))
    shared = [o for o in members[0].overrides if o in common]
    own = [
        [o for o in m.overrides if o not in common and not o.startswith(f"{TRIAL_KEY}=")]
        for m in members
    ]
    return shared, own


def sweep_page(sweep_dir: Path) -> dict[str, Any]:
    """What a sweep's page shows (the context of templates/sweep.html)."""
    members = read_members(sweep_dir)
    optimized = next((m.optimized_metric for m in members if m.optimized_metric), None)
    score = f"best/{optimized}" if optimized else None
    direction = _direction(sweep_dir)
    shared, varying = _varying(members)
    columns = ([score] if score else []) + [
        name
        for name in (f"test/{m}" for m in rundir.SUMMARY_METRICS)
        if any(name in m.metrics for m in members)
    ]
    best = _best(members, score, direction)
    runs = []
    for member, own in zip(members, varying, strict=True):
        info = rundir.read_record(member.path, strict=False) or {}
        report = member.path / REPORT_NAME
        runs.append(
            {
                "name": member.name,
                "link": f"{member.name}/{REPORT_NAME}" if report.exists() else None,
                "status": member.status if member.status != "finished" or member.ok else "failed",
                "ok": member.ok,
                "error": member.error,
                "overrides": own,
                "values": [member.metrics.get(c) if member.ok else None for c in columns],
                "duration": duration(info.get("started"), info.get("ended")),
                "seconds": seconds_between(info.get("started"), info.get("ended")),
                "best": member is best,
            }
        )
    groups = summarize(members)
    repeated = any(g["n"] + len(g["failed"]) > 1 for g in groups)
    group_shared = set(shared)
    aggregates = [
        {
            "overrides": [o for o in g["overrides"] if o not in group_shared],
            "n": g["n"],
            "runs": g["runs"],
            "failed": g["failed"],
            "stats": [g["metrics"].get(c) for c in columns],
        }
        for g in groups
    ]
    page = {
        "title": f"sweep {sweep_dir.name}",
        "sweep_dir": str(sweep_dir.resolve()),
        "shared": shared,
        "columns": columns,
        "runs": runs,
        "counts": {
            "runs": len(members),
            "finished": sum(m.ok for m in members),
            "left out": sum(not m.ok for m in members),
        },
        "best": next((r for r in runs if r["best"]), None),
        "score": score,
        "direction": direction,
        "aggregates": aggregates if repeated else None,
        "summary_files": [n for n in ("summary.csv", "summary.json") if (sweep_dir / n).exists()],
        "failed": [r for r in runs if not r["ok"]],
        "history": _history(sweep_dir, direction),
        "plots": sorted(
            p.relative_to(sweep_dir).as_posix() for p in (sweep_dir / "plots").glob("*.html")
        ),
    }
    return page


def _direction(sweep_dir: Path) -> str:
    """Which way the score is better: optimization_results.yaml's direction ("maximize"
    or "minimize") for optuna sweeps, else maximize (checkpoints keep the highest
    `optimized_metric`)."""
    try:
        results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "maximize"
    direction = str((results or {}).get("direction", "maximize"))
    return "minimize" if direction.startswith("min") else "maximize"


def _best(members: Sequence[Member], score: str | None, direction: str) -> Member | None:
    scored = [
        m for m in members if m.ok and score and isinstance(m.metrics.get(score), (int, float))
    ]
    if not scored:
        return None
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda m: m.metrics[score])


def read_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """An optuna sweep's trials as {number, state, value}: from its study (optuna.db,
    current while the sweep runs), else from trials.csv; [] for other sweeps."""
    database = sweep_dir / "optuna.db"
    if database.is_file():
        try:
            import optuna  # noqa: PLC0415 (an extra: seglab[sweeps])

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # Waits for the trials' writers, and never creates tables in the sweep's file.
            storage = open_storage(f"sqlite:///{database}", create_tables=False)
            trials = []
            for name in optuna.get_all_study_names(storage):
                study = optuna.load_study(study_name=name, storage=storage)
                trials += [
                    {"number": t.number, "state": t.state.name, "value": t.value}
                    for t in study.get_trials(deepcopy=False)
                ]
            if trials:
                return trials
        except Exception as err:  # a locked or damaged database: trials.csv may do
            log.info("Cannot read %s: %s", database, one_line(err))
    table = sweep_dir / "trials.csv"
    if table.is_file():
        with table.open(newline="") as file:
            return [
                {
                    "number": int(row["number"]),
                    "state": row["state"],
                    "value": float(row["value"]) if row.get("value") else None,
                }
                for row in csv.DictReader(file)
            ]
    return []


def _history(sweep_dir: Path, direction: str) -> dict[str, Any] | None:
    """The optimisation history: every finished trial's value, and the best so far."""
    trials = sorted(read_trials(sweep_dir), key=lambda t: t["number"])
    if not trials:
        return None
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    figure = None
    if done:
        fig = Figure(figsize=(7.5, 3.2))
        ax = fig.add_subplot()
        numbers = [t["number"] for t in done]
        values = [t["value"] for t in done]
        pick = max if direction == "maximize" else min
        best_so_far = [pick(values[: i + 1]) for i in range(len(values))]
        ax.scatter(numbers, values, s=18, color="#4c78a8", label="trial value", zorder=3)
        ax.step(numbers, best_so_far, where="post", color="#e45756", label="best so far")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("objective")
        ax.set_title("optimisation history")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.set_layout_engine("constrained")
        figure = png(fig)
    return {"chart": figure, "states": states, "trials": len(trials)}
