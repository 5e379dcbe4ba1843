"""Cross-validation and repeated-seed aggregates of a multirun.

    python -m seglab.train -m data.fold=0,1,2,3,4          # or seed=1,2,3
    python -m seglab.summary outputs/train/multirun/<time>  # (re)write it by hand

After a multirun, `SummaryCallback` (registered in conf/hydra/default.yaml) writes into
the sweep directory `summary.json` and `summary.csv`: the runs are grouped by their
overrides (`.hydra/overrides.yaml`) without `data.fold` and `seed`, so the runs of one
group differ only in fold or seed, and each group gets the number of runs and the mean,
standard deviation, minimum and maximum of every final metric of its runs' metrics.json
(`test/...` and the best validation score `best/...`, per class too). A run that failed,
was pruned, is still running or wrote no metrics.json is listed under `failed` with its
reason and left out of the statistics.

Everything is read from the run directories on disk, so it works the same with every
launcher (basic, joblib, submitit) and sweeper (seglab_optuna: each trial has its own
parameters, so its groups hold one run).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from seglab import rundir
from seglab.errors import SeglabError, exit_message, one_line

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
# Overrides whose runs are repetitions of one experiment: they are averaged over.
REPEAT_KEYS = ("data.fold", "seed")
# The metrics of metrics.json that are final results (not the last epoch's).
FINAL_PREFIXES = ("test/", "best/")
STATISTICS = ("mean", "std", "min", "max")


@dataclass
class Member:
    """One run directory of a sweep, as it stands on disk.

    Attributes:
        path: the run directory.
        name: its path relative to the sweep directory (the job number, e.g. "3").
        overrides: its command-line overrides, from `.hydra/overrides.yaml`.
        status: run_info.json's status (finished, failed, pruned, running), "unknown"
            without one.
        error: why the run is left out of the statistics; None for a usable run.
        metrics: metrics.json's metrics; empty without one.
        optimized_metric: metrics.json's optimized metric, e.g. "val/mIoU".
    """

    path: Path
    name: str
    overrides: list[str]
    status: str
    error: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    optimized_metric: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def read_overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides (`.hydra/overrides.yaml`); [] without them."""
    try:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def read_member(run_dir: Path, sweep_dir: Path) -> Member:
    """The run in `run_dir`: usable when it finished and wrote metrics.json."""
    info = rundir.read_record(run_dir, strict=False) or {}
    status = str(info.get("status", "unknown"))
    member = Member(
        path=run_dir,
        name=run_dir.relative_to(sweep_dir).as_posix(),
        overrides=read_overrides(run_dir),
        status=status,
    )
    summary = rundir.read_metrics(run_dir, strict=False)
    if summary is not None and isinstance(summary.get("metrics"), dict):
        member.metrics = dict(summary["metrics"])
        member.optimized_metric = summary.get("optimized_metric")
    if status in ("failed", "pruned", "running"):
        member.error = info.get("error") or status
        if status == "running":
            member.error = "still running, or killed (run_info.json says running)"
    elif summary is None:
        member.error = "no metrics.json (the run ended before writing it)"
    return member


def find_runs(sweep_dir: Path) -> list[Path]:
    """The run directories under `sweep_dir` (those holding `.hydra/overrides.yaml`), in
    job order."""
    runs = [
        path.parent.parent
        for path in sweep_dir.rglob("overrides.yaml")
        if path.parent.name == ".hydra" and path.parent.parent != sweep_dir
    ]

    def order(path: Path) -> tuple:
        parts = path.relative_to(sweep_dir).parts
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)

    return sorted(runs, key=order)


def read_members(sweep_dir: str | Path) -> list[Member]:
    """Every run of the sweep in `sweep_dir`, in job order."""
    sweep_dir = Path(sweep_dir)
    return [read_member(run, sweep_dir) for run in find_runs(sweep_dir)]


def _override_key(override: str) -> str:
    """The key an override sets: "+data.fold=2" -> "data.fold"."""
    return override.split("=", 1)[0].lstrip("+~")


def group_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides that define a run's experiment: all but `REPEAT_KEYS`."""
    return tuple(o for o in overrides if _override_key(o) not in REPEAT_KEYS)


def describe(values: Sequence[float]) -> dict[str, float | None]:
    """mean, sample standard deviation (ddof=1; None for a single value), min, max."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(members: Sequence[Member]) -> list[dict[str, Any]]:
    """The groups of `members` that differ only in `REPEAT_KEYS`, in order of their first
    run.

    Returns:
        per group: `overrides` (the group's key), `runs` (the usable run names), `n`,
        `failed` ([{run, status, error}]), and `metrics`: per final metric,
        {mean, std, min, max, n}; std is the sample standard deviation (ddof=1), None
        for one run. A metric that is null (NaN) in a run is averaged over the others
        (its own `n` says over how many).
    """
    groups: dict[tuple[str, ...], list[Member]] = {}
    for member in members:
        groups.setdefault(group_key(member.overrides), []).append(member)
    result = []
    for key, group in groups.items():
        usable = [m for m in group if m.ok]
        names = sorted(
            {name for m in usable for name in m.metrics if name.startswith(FINAL_PREFIXES)},
            key=lambda name: (not name.startswith("best/"), name.count("/") > 1, name),
        )
        metrics = {}
        for name in names:
            values = [m.metrics[name] for m in usable if _is_number(m.metrics.get(name))]
            if values:
                metrics[name] = {**describe(values), "n": len(values)}
        result.append(
            {
                "overrides": list(key),
                "runs": [m.name for m in usable],
                "n": len(usable),
                "failed": [
                    {"run": m.name, "status": m.status, "error": m.error} for m in group if not m.ok
                ],
                "metrics": metrics,
            }
        )
    return result


def _csv_text(groups: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for group in groups:
        names += [name for name in group["metrics"] if name not in names]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = [f"{name} {stat}" for name in names for stat in STATISTICS]
    writer.writerow(["overrides", "n", "runs", "failed", *columns])
    for group in groups:
        failed = "; ".join(f"{f['run']}: {f['error']}" for f in group["failed"])
        cells = [group["metrics"].get(name, {}).get(stat) for name in names for stat in STATISTICS]
        writer.writerow(
            [
                " ".join(group["overrides"]),
                group["n"],
                " ".join(group["runs"]),
                failed,
                *("" if value is None else repr(value) for value in cells),
            ]
        )
    return buffer.getvalue()


def write_summary(sweep_dir: str | Path) -> Path:
    """Write `summary.json` and `summary.csv` into `sweep_dir` from its run directories.

    Returns:
        the path of summary.json.

    Raises:
        SeglabError: `sweep_dir` is not a directory, or holds no run directory.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SeglabError(f"{sweep_dir} is not a directory; give a multirun's sweep directory")
    members = read_members(sweep_dir)
    if not members:
        raise SeglabError(
            f"{sweep_dir} holds no run directory (no */.hydra/overrides.yaml); give the "
            "sweep directory of a multirun (outputs/train/multirun/<time>)"
        )
    groups = summarize(members)
    summary = {
        "grouped_by": f"overrides without {', '.join(REPEAT_KEYS)}",
        "std": "sample standard deviation (ddof=1); null for a group of one run",
        "groups": groups,
        "failed": [
            {"run": m.name, "status": m.status, "error": m.error, "overrides": m.overrides}
            for m in members
            if not m.ok
        ],
    }
    path = sweep_dir / SUMMARY_JSON
    rundir.write_atomically(path, json.dumps(summary, indent=2) + "\n")
    rundir.write_atomically(sweep_dir / SUMMARY_CSV, _csv_text(groups))
    return path


def sweep_dir_of(config: DictConfig) -> Path:
    """The sweep directory of a job of a multirun, from the job's own output directory
    (`hydra.sweep.dir` could resolve `${now:...}` anew in a launcher's process)."""
    output_dir = Path(config.hydra.runtime.output_dir)
    depth = len(Path(str(config.hydra.sweep.subdir)).parts)
    return output_dir.parents[depth - 1] if depth else output_dir


class SummaryCallback(Callback):
    """Hydra callback writing the sweep's summary at the end of the multirun, and after
    every job: Hydra's basic sweeper raises when a job failed, before `on_multirun_end`,
    and a summary listing that failure is still wanted then."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self._write(sweep_dir_of(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(Path(config.hydra.sweep.dir))

    @staticmethod
    def _write(sweep_dir: Path) -> None:
        try:
            path = write_summary(sweep_dir)
        except Exception as err:  # never fail a sweep for its summary
            log.warning("No summary for %s: %s", sweep_dir, one_line(err))
            return
        log.info("Summary: %s", path)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m seglab.summary SWEEP_DIR`: (re)write the summary of a sweep."""
    parser = argparse.ArgumentParser(
        prog="python -m seglab.summary",
        description="Write summary.json and summary.csv (mean, std, min, max of the final "
        "metrics over runs that differ only in data.fold or seed) into a sweep directory.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun's sweep directory")
    args = parser.parse_args(argv)
    try:
        path = write_summary(args.sweep_dir)
    except SeglabError as err:
        raise SystemExit(exit_message(err)) from None
    print(f"{path}\n{path.with_name(SUMMARY_CSV)}", file=sys.stdout)


if __name__ == "__main__":
    main()
