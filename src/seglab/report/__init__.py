"""One self-contained HTML page for a run or a sweep: open it in any browser, offline
(images inline as PNG, no external script or style).

    python -m seglab.report outputs/train/runs/<time>        # -> <run dir>/report.html
    python -m seglab.report outputs/train/multirun/<time>    # -> <sweep dir>/report.html
    make report RUN=outputs/train/multirun/<time>

A run's page: command and overrides, final metrics, per-class IoU (accuracy for
classifiers) as a chart and a table, training and validation curves (TensorBoard event
files or the CSV log), the validation confusion matrix and sample predictions of the best
checkpoint (recomputed from it, `seglab.checkpoint.load_run`), and the run's facts
(duration, seed, versions, git commit, machine). What the run did not leave behind (it
failed before writing metrics.json, it logged nothing, no checkpoint) is said on the page.

A sweep's page (a multirun's directory, or any folder of run directories): a sortable
table of every run with its overrides, final metrics, state and a link to its own page,
the best run highlighted, the fold/seed aggregates of `seglab.summary`, and for optuna
sweeps the optimisation history. From the command line, runs without a page get one.

One module per job: `run` (a run's page), `curves` (its logged scalars and their
figure), `validation` (the best checkpoint's pass over the validation split), `sweep` (a
sweep's page), `html` (what the pages share); this module writes a page, and is the
command line and the Hydra callback.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from seglab.errors import SeglabError, exit_message, one_line
from seglab.report.html import REPORT_NAME, render
from seglab.rundir import is_run_dir
from seglab.summary import find_runs, sweep_dir_of

log = logging.getLogger(__name__)


def write_report(path: str | Path, *, device: str | None = None) -> Path:
    """Write `<path>/report.html` for the run or sweep directory `path`.

    Cheap enough to end every run with: a run's page costs one validation pass of its
    best checkpoint (for the confusion matrix and sample predictions). A missing piece
    (logs, checkpoint, data, metrics.json) is said on the page, never raised.

    Args:
        path: a run directory, or a sweep directory (a folder of run directories).
        device: where the checkpoint runs ("cpu", "cuda"); None: cuda when available.

    Returns:
        the page written.

    Raises:
        SeglabError: `path` is neither a run nor a sweep directory.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise SeglabError(f"{path} {what}; give a run directory or a sweep directory")
    # torch, Lightning, TensorBoard's reader and optuna: loaded when a page is written,
    # not by every run that names this module's Hydra callback.
    from seglab.report import run, sweep  # noqa: PLC0415

    if is_run_dir(path):
        html = render("run.html", run.run_page(path, device))
    elif (path / "multirun.yaml").exists() or find_runs(path):
        html = render("sweep.html", sweep.sweep_page(path))
    else:
        raise SeglabError(
            f"{path} is neither a run directory (run_info.json, metrics.json or .hydra/) nor "
            "a sweep directory (run directories below it); give e.g. "
            "outputs/train/runs/<time> or outputs/train/multirun/<time>"
        )
    out = path / REPORT_NAME
    temporary = out.with_name(f".{REPORT_NAME}.{os.getpid()}.tmp")
    temporary.write_text(html, encoding="utf-8")
    temporary.replace(out)  # jobs of a sweep ending together each rewrite its page
    return out


class SweepReportCallback(Callback):
    """Hydra callback writing the sweep's page at the end of a multirun, and after every
    job (Hydra's basic sweeper raises on a failed job before `on_multirun_end`). The
    runs' own pages are written by the runs (train's `report: true`)."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and config.get("report", True):
            self._write(sweep_dir_of(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("report", True):
            self._write(Path(config.hydra.sweep.dir))

    @staticmethod
    def _write(sweep_dir: Path) -> None:
        try:
            path = write_report(sweep_dir)
        except Exception as err:  # never fail a sweep for its page
            log.warning("No report for %s: %s", sweep_dir, one_line(err))
            return
        log.info("Report: %s", path)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m seglab.report PATH`: write PATH/report.html."""
    parser = argparse.ArgumentParser(
        prog="python -m seglab.report",
        description="Write a self-contained HTML report (report.html) into a run or sweep "
        "directory.",
    )
    parser.add_argument("path", type=Path, help="a run directory or a sweep directory")
    parser.add_argument(
        "--runs",
        choices=("missing", "all", "none"),
        default="missing",
        help="for a sweep, which of its runs get their own page written: those without "
        "one (default), all, or none",
    )
    parser.add_argument(
        "--device", default=None, help="where checkpoints run (cpu, cuda); default: cuda if any"
    )
    args = parser.parse_args(argv)
    try:
        path: Path = args.path
        if path.is_dir() and not is_run_dir(path) and args.runs != "none":
            for run in find_runs(path):
                if args.runs == "all" or not (run / REPORT_NAME).exists():
                    print(write_report(run, device=args.device))
        print(write_report(path, device=args.device))
    except SeglabError as err:
        raise SystemExit(exit_message(err)) from None


if __name__ == "__main__":
    main()
