"""Experiment trackers beside TensorBoard: MLflow (`logger=mlflow`) and Weights & Biases
offline (`logger=wandb`); several at once with `logger=[tensorboard,mlflow]`.

`MLflowLogger` is Lightning's `MLFlowLogger` with seglab's defaults and its record of a
run: per-epoch metrics as Lightning logs them; as params, the choices of TensorBoard's
HParams table (`seglab.tensorboard.run_hparams`: data, model, encoder, loss, lr, ...,
and every other override), logged once when the run is scored (`log_run`); at the end
(`end_runs`) the resolved config (`config.yaml`, passwords masked), `metrics.json`,
`run_info.json`, `report.html` and the best checkpoint as artifacts, and the run's
status: FINISHED, FAILED, or KILLED for a run stopped by a signal or pruned. A resumed
run (`ckpt_path=auto`) goes on in the same MLflow run (its id is kept in
`<run dir>/mlflow.json`).

The default store is MLflow's default backend, a SQLite database, `outputs/mlflow.db`
(artifacts in `outputs/mlflow-artifacts/`), beside the run directories; any
`tracking_uri` (`http://host:5000`, a tracking server) or `MLFLOW_TRACKING_URI` is taken
instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from seglab import rundir
from seglab.secrets import redact, redact_text

log = logging.getLogger(__name__)

OUTPUTS = Path("outputs")
DEFAULT_DB = OUTPUTS / "mlflow.db"
DEFAULT_ARTIFACTS = OUTPUTS / "mlflow-artifacts"
RUN_ID_FILE = "mlflow.json"
# seglab's run status (run_info.json) -> MLflow's.
STATUS = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "pruned": "KILLED"}
# The run directory's files uploaded at the end (when they exist), by artifact folder.
RUN_FILES = ("metrics.json", "run_info.json", "report.html", "train.log")


def default_tracking_uri() -> str:
    """`sqlite:///<cwd>/outputs/mlflow.db`, the folder made."""
    DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_DB.resolve()}"


class MLflowLogger(MLFlowLogger):
    """Lightning's MLflow logger with seglab's store, run name, params and end.

    Args:
        run_dir: the run directory (`${paths.output_dir}`): names the MLflow run (its
            last part, unless `run_name` is given) and keeps its id for a resume.
        experiment_name: the MLflow experiment; made when missing.
        tracking_uri: None: `MLFLOW_TRACKING_URI`, else `outputs/mlflow.db` (SQLite).
        artifact_location: a new experiment's artifact root; None: `outputs/mlflow-artifacts`
            for a local store, the server's own for a tracking server.
        tags, prefix, synchronous: as Lightning's `MLFlowLogger`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        experiment_name: str = "seglab",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        tags: dict[str, Any] | None = None,
        prefix: str = "",
        synchronous: bool | None = None,
    ) -> None:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        if artifact_location is None and uri.startswith(("sqlite:", "file:")):
            DEFAULT_ARTIFACTS.mkdir(parents=True, exist_ok=True)
            artifact_location = DEFAULT_ARTIFACTS.resolve().as_uri()
        self.run_dir = Path(run_dir)
        previous = rundir.read_json(self.run_dir / RUN_ID_FILE, strict=False) or {}
        resumed = (
            previous.get("run_id") if previous.get("tracking_uri") == redact_text(uri) else None
        )
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name or self.run_dir.name,
            tracking_uri=uri,
            tags=tags,
            log_model=False,
            prefix=prefix,
            artifact_location=artifact_location,
            run_id=resumed,
            synchronous=synchronous,
        )
        self._ended = False

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Starts the MLflow run and keeps its id in the run directory (for a resume),
        but logs no params: Lightning calls this with the module's arguments when fitting
        starts, and MLflow refuses a param logged twice with two values; seglab logs the
        run's choices once, with `log_run`."""
        path = self.run_dir / RUN_ID_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            rundir.write_json(
                path,
                {"run_id": self.run_id, "experiment_id": self.experiment_id,
                 "tracking_uri": redact_text(self._tracking_uri)},
            )  # fmt: skip

    @rank_zero_only
    def log_run(
        self, row: Sequence[Any], params: Mapping[str, Any], metrics: Mapping[str, Any]
    ) -> None:
        """The run's params (the HParams table's `row` of `seglab.tensorboard.Column`s,
        by title), the resolved config `params` as `config.yaml`, and the final
        `metrics` (best and test scores) at the last step."""
        from mlflow.entities import Param  # noqa: PLC0415

        client, run_id = self.experiment, self.run_id
        logged = client.get_run(run_id).data.params
        fresh = [
            Param(column.title, str(column.value)[:6000])
            for column in row
            if column.title not in logged
        ]
        if fresh:
            client.log_batch(run_id, params=fresh)
        client.log_dict(run_id, redact(dict(params)), "config.yaml")
        self.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})

    def finalize(self, status: str = "success") -> None:
        """Lightning's end of each fit and test: the run stays open for the test, the
        report and the artifacts (`end_runs`); a crash inside Lightning ends it FAILED."""
        if status == "failed" and self._initialized and not self._ended:
            self.experiment.set_terminated(self.run_id, "FAILED")
            self._ended = True

    @rank_zero_only
    def end(self, status: str, best_checkpoint: str | None = None) -> None:
        """Upload the run directory's record, report and best checkpoint and set the
        MLflow status from seglab's (`STATUS`)."""
        if not self._initialized:
            return
        client, run_id = self.experiment, self.run_id
        for name in RUN_FILES:
            path = self.run_dir / name
            if path.is_file():
                client.log_artifact(run_id, str(path))
        if best_checkpoint and Path(best_checkpoint).is_file():
            client.log_artifact(run_id, best_checkpoint, "checkpoints")
        client.set_terminated(run_id, STATUS.get(status, "FAILED"))
        self._ended = True
        log.info(
            "MLflow run %s (%s): %s", run_id, STATUS.get(status), redact_text(self._tracking_uri)
        )


def end_runs(loggers: Sequence[Any], run_dir: Path) -> None:
    """End every tracker run of `loggers` with the status and best checkpoint in
    `run_dir`'s record (`run_info.json`, `metrics.json`); never raises: a tracker that
    cannot be reached is a warning, not a failed run."""
    trackers = [logger for logger in loggers if isinstance(logger, MLflowLogger)]
    if not trackers:
        return
    record = rundir.read_record(run_dir, strict=False) or {}
    metrics = rundir.read_metrics(run_dir, strict=False) or {}
    best = rundir.best_checkpoint(run_dir, metrics.get("best_model_path"))
    for tracker in trackers:
        try:
            tracker.end(str(record.get("status", "failed")), None if best is None else str(best))
        except Exception as err:  # noqa: BLE001 - the run itself is done and recorded
            log.warning("MLflow: the run's end was not recorded: %s", redact_text(str(err)))
