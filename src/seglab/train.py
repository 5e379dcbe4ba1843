"""Train, then test the best checkpoint.

    python -m seglab.train                                   # UNet on the embedded shapes
    python -m seglab.train model=fcn
    python -m seglab.train experiment=shapes_cnn              # the plain CNN classifier
    python -m seglab.train model=unet model.encoder_name=resnet34 optimizer=sgd optimizer.lr=0.05
    python -m seglab.train --help                             # every group and option

Each run writes into outputs/train/runs/<time>/: `.hydra/` (composed config, overrides),
`run_info.json` (seed, versions, git commit, status: running, finished or failed with the
error), `checkpoints/`, `tensorboard/`, `train.log` (a failure's error, and traceback
for unexpected ones, included) and `metrics.json`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from seglab import rundir
from seglab.checkpoint import RunRecord, json_value, read_checkpoint
from seglab.cli import command
from seglab.data.base import SeglabDataModule
from seglab.errors import SeglabError, exit_message, one_line
from seglab.modules import build_module
from seglab.resume import (
    AtomicCheckpointIO,
    BudgetCheck,
    StopOnSignal,
    Stopped,
    logging_step,
    parse_max_time,
    resolve_resume,
)
from seglab.run_log import RunLog, position, stop_reason, to_log_files, to_log_files_once
from seglab.sweeps import Pruned, raise_if_pruned, trial_callbacks
from seglab.tensorboard import log_hparams

log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Build every entry of a config group holding named objects (callbacks, loggers);
    an entry set to null is left out."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None]


def _check_optimized_metric(cfg: DictConfig, module: L.LightningModule) -> None:
    name = cfg.optimized_metric
    logged = module.metric_names("val")
    if name not in logged:
        raise SeglabError(
            f"optimized_metric={name} is not logged by {type(module).__name__}; "
            f"choose one of {logged}"
        )


def _sync_data_config(cfg: DictConfig, datamodule: SeglabDataModule) -> None:
    """Write the datamodule's classes back into `cfg.data`: a datamodule may find them on
    disk (class-named folders, `class_names: null`), and the model head
    (`${data.num_classes}`) and every checkpoint's stored config must see them."""
    with open_dict(cfg):
        cfg.data.class_names = list(datamodule.class_names)
        cfg.data.num_classes = datamodule.num_classes


# ckpt_path values Lightning resolves itself (not files).
_LIGHTNING_CKPT_NAMES = ("hpc", "registry")


def check_options(
    cfg: DictConfig, output_dir: Path
) -> tuple[str | Path | None, dict[str, Any] | None]:
    """Options that would otherwise fail deep inside torch or Lightning, after data and
    model were built (or silently do something else), checked before anything is built.

    Returns:
        the checkpoint to resume from (`ckpt_path` with "auto" and "last" resolved; None
        for a fresh start) and its contents (None for Lightning's own names).
    """
    try:  # the optimizer's own checks (lr >= 0, betas in [0, 1), ...) on one parameter
        instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise SeglabError(
            f"optimizer <{cfg.optimizer._target_}> refuses its settings: {one_line(err)}; "
            "fix the optimizer.* overrides (e.g. optimizer.lr=0.001)"
        ) from err

    precision = str(cfg.trainer.get("precision", "32-true"))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and precision in ("16", "16-mixed", "16-true"):
        # Lightning would switch to bf16 with a warning while the config says 16-mixed.
        raise SeglabError(
            f"trainer.precision={precision} needs a GPU, and this run is on the CPU "
            f"(trainer.accelerator={accelerator}); use trainer.precision=bf16-mixed or 32-true"
        )

    parse_max_time(cfg.trainer.get("max_time"))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in _LIGHTNING_CKPT_NAMES:
        return ckpt_path, None
    return resolve_resume(
        ckpt_path,
        output_dir,
        OmegaConf.to_container(cfg, resolve=True),
        fallback=bool(cfg.get("ckpt_fallback", False)),
    )


def _remove_empty_event_files(loggers: list[Any], trainer: L.Trainer | None) -> None:
    """A run that failed before its first training step leaves no TensorBoard run behind
    (it would show up as an empty run among the real ones)."""
    if trainer is not None and trainer.global_step > 0:
        return
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and Path(logger.log_dir).is_dir():
            logger.experiment.close()
            for event_file in Path(logger.log_dir).glob("events.out.tfevents.*"):
                event_file.unlink()


def train(cfg: DictConfig) -> dict[str, float | None]:
    """Fit the configured model, test its best checkpoint, write metrics.json.

    A failure is recorded in the run directory before it propagates: the error (with its
    traceback when it is not a `SeglabError`) in train.log, `status: failed` and the error
    in run_info.json. A run stopped by a signal (`seglab.resume.StopOnSignal`) is
    checkpointed and recorded as `stopped`; the same command with `ckpt_path=auto`
    continues it.

    Returns:
        every logged metric of the last validation and of the test, plus
        `best/<optimized_metric>`, the best validation score of the run.
    """
    output_dir = Path(cfg.paths.output_dir)
    # Locked for the whole run; refused, before anything is written, when it holds another
    # run that this one does not restart (seglab.rundir).
    with rundir.claimed(output_dir, cfg.get("ckpt_path")):
        return _run(cfg, output_dir)


def _run(cfg: DictConfig, output_dir: Path) -> dict[str, float | None]:
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        # A key left ??? or options that do not go together (model=cnn data=folder):
        # recorded as a failed run, with the config as written, before it stops.
        from seglab.cli import config_error

        error = config_error(err, cfg) or SeglabError(one_line(err))
        record = RunRecord(OmegaConf.to_container(cfg, resolve=False), output_dir)
        record.start()
        to_log_files_once(logging.ERROR, exit_message(error))
        record.finish(error, stop_reason="failed before training")
        raise error from None
    record = RunRecord(config, output_dir)
    record.start()
    signals = cfg.get("signals") or {}
    stopper = StopOnSignal(
        signals=signals.get("stop", ()),
        requeue_signal=signals.get("requeue"),
        checkpoint_dir=output_dir / "checkpoints",
    )
    built: dict[str, Any] = {"loggers": [], "trainer": None, "stopper": stopper, "fitting": False}
    stopper.install()
    try:
        metrics = _fit_and_test(cfg, output_dir, record, built)
    except BaseException as err:
        where = position(built["trainer"]) if built["fitting"] else "before training"
        if isinstance(err, Pruned):  # the sweep's decision, not a failure
            record.finish(err, status="pruned", stop_reason=f"pruned by the sweep {where}")
            raise
        if isinstance(err, SIGTERMException):  # how Lightning stops between two steps
            err = stopper.error()
        if isinstance(err, Stopped):
            to_log_files(logging.WARNING, f"seglab: {err}")
            # "stopped by SIGTERM at epoch 1, batch 3/6 (step 9)", without the advice.
            record.finish(err, status="stopped", stop_reason=str(err).split("; ")[0])
            raise err from None
        if isinstance(err, SeglabError):
            to_log_files_once(logging.ERROR, exit_message(err))
        else:
            to_log_files(logging.ERROR, f"run failed: {one_line(err)}", sys.exc_info())
        record.finish(err, stop_reason=f"failed {where}")
        _remove_empty_event_files(built["loggers"], built["trainer"])
        raise
    finally:
        stopper.uninstall()
    record.finish(stop_reason=built["stop_reason"])
    _write_report(cfg, output_dir)
    return metrics


def _write_report(cfg: DictConfig, output_dir: Path) -> None:
    """The run's report.html (`report: true`); a report that cannot be made is a warning,
    never a failure of the finished run."""
    if not cfg.get("report") or rank_zero_only.rank != 0:
        return
    from seglab.report import write_report  # matplotlib and jinja2: only when needed

    try:
        log.info("Report: %s", write_report(output_dir))
    except Exception as err:
        log.warning("No report for %s: %s", output_dir, one_line(err))


def _build_loggers(group: DictConfig | None, purge_step: int | None) -> list[Any]:
    """The configured loggers; a resumed run's TensorBoard loggers hide the points the
    stopped run logged after its checkpoint (TensorBoard's `purge_step`), so the resumed
    run continues one curve."""
    loggers = []
    for entry in (group or {}).values():
        if entry is None:
            continue
        extra = {}
        if purge_step is not None and issubclass(get_class(entry._target_), TensorBoardLogger):
            extra["purge_step"] = purge_step
        loggers.append(instantiate(entry, **extra))
    return loggers


def _fit_and_test(
    cfg: DictConfig, output_dir: Path, record: RunRecord, built: dict[str, Any]
) -> dict[str, float | None]:
    ckpt_path, checkpoint = check_options(cfg, output_dir)
    if checkpoint is not None or record.previous is not None:
        record.restarted(
            ckpt_path if checkpoint is not None else None,
            int(checkpoint.get("global_step", 0)) if checkpoint is not None else 0,
        )
    if cfg.get("seed") is not None:
        # Our own log line: Lightning's goes to stderr, where only errors belong.
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        log.info("Seed %d", cfg.seed)

    log.info("Building data <%s>", cfg.data._target_)
    datamodule: SeglabDataModule = instantiate(cfg.data)
    _sync_data_config(cfg, datamodule)
    record.config = OmegaConf.to_container(cfg, resolve=True)  # with the classes found
    log.info("Building model <%s>", cfg.model._target_)
    net = instantiate(cfg.model)
    module = build_module(
        datamodule,
        net,
        instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **cfg.get("module", {}),
    )
    _check_optimized_metric(cfg, module)

    loggers = _build_loggers(
        cfg.get("logger"), logging_step(checkpoint) if checkpoint is not None else None
    )
    built["loggers"] = loggers
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(record)
    callbacks.append(RunLog(output_dir, cfg.optimized_metric))
    callbacks.append(built["stopper"])
    callbacks.append(BudgetCheck())
    callbacks.extend(trial_callbacks(cfg))  # a trial of an optuna sweep reports to its study
    extra: dict[str, Any] = {}
    if not cfg.trainer.get("plugins"):  # checkpoints written atomically
        extra["plugins"] = [AtomicCheckpointIO()]
    if (budget := parse_max_time(cfg.trainer.get("max_time"))) is not None:
        # Lightning takes a {seconds: 30}-style budget as a dict, not as a DictConfig.
        extra["max_time"] = budget
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra
    )
    built["trainer"] = trainer
    built["fitting"] = True
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    raise_if_pruned(trainer)  # a pruned trial ends here, on every rank, untested
    built["stopper"].stop_if_signalled(trainer, "after fitting, before the test")
    built["stop_reason"] = stop_reason(trainer)
    log.info("Run ended: %s", built["stop_reason"])
    metrics = {name: json_value(value) for name, value in trainer.callback_metrics.items()}

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_score is not None:
        metrics[f"best/{cfg.optimized_metric}"] = json_value(checkpoint.best_model_score)
    else:
        metrics[f"best/{cfg.optimized_metric}"] = metrics.get(cfg.optimized_metric)

    if cfg.get("test"):
        # The best checkpoint when there is one; the weights in memory otherwise
        # (fast_dev_run and checkpointing switched off save none).
        if best_path:
            _check_best_checkpoint(Path(best_path))
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None)
        metrics.update({name: json_value(v) for name, v in results[0].items()})

    log_hparams(trainer, cfg, metrics)
    if trainer.is_global_zero:
        summary = {
            "optimized_metric": cfg.optimized_metric,
            "best_model_path": best_path,
            "metrics": dict(sorted(metrics.items())),
        }
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("Run directory: %s", output_dir)
    return metrics


def _check_best_checkpoint(path: Path) -> None:
    """A best checkpoint that cannot be read is one line naming it (Lightning's test would
    print torch's unpickling traceback), before the test starts."""
    try:
        read_checkpoint(path)
    except SeglabError as err:
        why = type(err.__cause__).__name__ if err.__cause__ is not None else "no seglab record"
        raise SeglabError(
            f"the best checkpoint {path} cannot be read ({why}); the fit itself finished: "
            f"test another checkpoint (python -m seglab.evaluate "
            f"ckpt_path={path.parent / 'last.ckpt'}), or run with test=false"
        ) from None


@command("train")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns the optimized metric for Hydra sweepers."""
    return train(cfg).get(f"best/{cfg.optimized_metric}")


if __name__ == "__main__":
    main()
