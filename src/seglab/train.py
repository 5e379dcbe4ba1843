"""Train, then test the best checkpoint.

    python -m seglab.train                                   # UNet on the embedded shapes
    python -m seglab.train model=fcn
    python -m seglab.train experiment=shapes_cnn              # the plain CNN classifier
    python -m seglab.train model=unet model.encoder_name=resnet34 optimizer=sgd optimizer.lr=0.05
    python -m seglab.train --help                             # every group and option

Each run writes into outputs/train/runs/<time>/: `.hydra/` (composed config, overrides),
`run_info.json` (seed, versions, git commit, status: running, finished or failed with the
error), `checkpoints/`, `tensorboard/`, `train.log` (a failure's error, and traceback
for unexpected ones, included) and `metrics.json` (`seglab.rundir` owns their names).

`train()` reads as the run: check the options, build data, module and trainer once from
the config, fit, test, record.
"""

from __future__ import annotations

import copy
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

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
from seglab.budget import BudgetCheck, parse_max_time
from seglab.checkpoint import AtomicCheckpointIO, RunRecord, json_value, read_checkpoint
from seglab.cli import command, config_error
from seglab.data.base import SeglabDataModule
from seglab.errors import SeglabError, exit_message, one_line
from seglab.lightning_compat import auto_precision, logging_step
from seglab.modules import build_module
from seglab.resume import resolve_resume
from seglab.run_log import RunLog, position, stop_reason, to_log_files, to_log_files_once
from seglab.stop import StopOnSignal, Stopped
from seglab.sweeps import Pruned, raise_if_pruned
from seglab.tensorboard import launch, log_hparams, run_hparams
from seglab.trackers import end_runs

log = logging.getLogger(__name__)


def _check_optimized_metric(cfg: DictConfig, module: L.LightningModule) -> None:
    name = cfg.optimized_metric
    logged = module.metric_names("val")
    if name not in logged:
        raise SeglabError(
            f"optimized_metric={name} is not logged by {type(module).__name__}; "
            f"choose one of {logged}"
        )


def with_classes(cfg: DictConfig, datamodule: SeglabDataModule) -> DictConfig:
    """`cfg` with the datamodule's classes in `data`: a datamodule may find them on disk
    (class-named folders, `class_names: null`), and the model head (`${data.num_classes}`)
    and every checkpoint's stored config must see them. A new config: `cfg` is unchanged."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.data.class_names = list(datamodule.class_names)
        cfg.data.num_classes = datamodule.num_classes
    return cfg


# ckpt_path values Lightning resolves itself (not files).
_LIGHTNING_CKPT_NAMES = ("hpc", "registry")


class Options(NamedTuple):
    """What `check_options` found: where the run starts and how long it may take."""

    ckpt_path: str | Path | None  # "auto" and "last" resolved; None: a fresh start
    checkpoint: dict[str, Any] | None  # its contents; None for Lightning's own names
    budget: timedelta | None  # trainer.max_time
    precision: str  # trainer.precision, "auto" resolved


def check_options(cfg: DictConfig, output_dir: Path) -> Options:
    """Options that would otherwise fail deep inside torch or Lightning, after data and
    model were built (or silently do something else), checked before anything is built."""
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
    if precision == "auto":
        precision, why = auto_precision(on_cpu)
        log.info("trainer.precision=auto: %s (%s)", precision, why)

    budget = parse_max_time(cfg.trainer.get("max_time"))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in _LIGHTNING_CKPT_NAMES:
        return Options(ckpt_path, None, budget, precision)
    path, checkpoint = resolve_resume(
        ckpt_path,
        output_dir,
        OmegaConf.to_container(cfg, resolve=True),
        fallback=bool(cfg.get("ckpt_fallback", False)),
    )
    return Options(path, checkpoint, budget, precision)


def train(cfg: DictConfig) -> dict[str, float | None]:
    """Fit the configured model, test its best checkpoint, write metrics.json.

    A failure is recorded in the run directory before it propagates: the error (with its
    traceback when it is not a `SeglabError`) in train.log, `status: failed` and the error
    in run_info.json. A run stopped by a signal (`seglab.stop.StopOnSignal`) is
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
        record = RunRecord(_resolved(cfg, output_dir), output_dir)
        record.start()
        signals = cfg.get("signals") or {}
        stopper = StopOnSignal(
            signals=signals.get("stop", ()),
            requeue_signal=signals.get("requeue"),
            checkpoint_dir=output_dir / rundir.CHECKPOINT_DIR,
        )
        stopper.install()  # a signal while the data is read stops the run, too
        trainer: L.Trainer | None = None
        try:
            options = check_options(cfg, output_dir)
            if options.checkpoint is not None or record.previous is not None:
                step = options.checkpoint.get("global_step", 0) if options.checkpoint else 0
                record.restarted(options.ckpt_path if options.checkpoint else None, int(step))
            if cfg.get("seed") is not None:
                # Our own log line: Lightning's goes to stderr, where only errors belong.
                L.seed_everything(cfg.seed, workers=True, verbose=False)
                log.info("Seed %d", cfg.seed)

            log.info("Building data <%s>", cfg.data._target_)
            datamodule: SeglabDataModule = instantiate(cfg.data)
            cfg = with_classes(cfg, datamodule)
            record.config = config = OmegaConf.to_container(cfg, resolve=True)
            module = _build_module(cfg, datamodule)
            trainer = _build_trainer(
                cfg,
                options,
                [record, RunLog(output_dir, cfg.optimized_metric), stopper, BudgetCheck()],
            )

            trainer.fit(module, datamodule=datamodule, ckpt_path=options.ckpt_path)
            raise_if_pruned(trainer)  # a pruned trial ends here, on every rank, untested
            stopper.stop_if_signalled(trainer, "after fitting, before the test")
            reason = stop_reason(trainer)
            log.info("Run ended: %s", reason)
            metrics, best_path = _test(cfg, trainer, module, datamodule)

            log_hparams(trainer, run_hparams(config, launch()), _params(config), metrics)
            if trainer.is_global_zero:
                rundir.write_metrics(
                    output_dir,
                    metrics,
                    optimized_metric=cfg.optimized_metric,
                    best_model_path=best_path,
                )
                log.info("Run directory: %s", output_dir)
        except BaseException as err:
            try:
                _record_failure(err, record, stopper, trainer)
            finally:
                end_runs(trainer.loggers if trainer is not None else [], output_dir)
            raise
        finally:
            stopper.uninstall()
        record.finish(stop_reason=reason)
        _write_report(cfg, output_dir)
        end_runs(trainer.loggers, output_dir)
    return metrics


def _resolved(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The resolved config; a key left ??? or options that do not go together (model=cnn
    data=folder) are recorded as a failed run, with the config as written, and stop it."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        error = config_error(err, cfg) or SeglabError(one_line(err))
        record = RunRecord(OmegaConf.to_container(cfg, resolve=False), output_dir)
        record.start()
        to_log_files_once(logging.ERROR, exit_message(error))
        record.finish(error, stop_reason="failed before training")
        raise error from None


def _build_module(cfg: DictConfig, datamodule: SeglabDataModule) -> L.LightningModule:
    log.info("Building model <%s>", cfg.model._target_)
    module = build_module(
        datamodule,
        instantiate(cfg.model),
        instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **cfg.get("module", {}),
    )
    _check_optimized_metric(cfg, module)
    return module


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Build every entry of a config group holding named objects (callbacks, loggers);
    an entry set to null is left out."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None]


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


def _build_trainer(cfg: DictConfig, options: Options, run_callbacks: list[L.Callback]) -> L.Trainer:
    """The trainer: the configured callbacks (a sweep's trial link among them) and
    loggers, then the run's own callbacks (record, log, signal stop, budget check)."""
    checkpoint = options.checkpoint
    loggers = _build_loggers(cfg.get("logger"), logging_step(checkpoint) if checkpoint else None)
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    extra: dict[str, Any] = {"precision": options.precision}
    if not cfg.trainer.get("plugins"):  # checkpoints written atomically
        extra["plugins"] = [AtomicCheckpointIO()]
    if options.budget is not None:
        # Lightning takes a {seconds: 30}-style budget as a dict, not as a DictConfig.
        extra["max_time"] = options.budget
    return instantiate(
        cfg.trainer, callbacks=[*callbacks, *run_callbacks], logger=loggers or False, **extra
    )


def _test(
    cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule: SeglabDataModule
) -> tuple[dict[str, float | None], str]:
    """The last validation's metrics, `best/<optimized_metric>` and, with `test: true`, the
    test of the best checkpoint; and that checkpoint's path ("" when none was saved)."""
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
    return metrics, best_path


def _params(config: dict[str, Any]) -> dict[str, Any]:
    """The config other loggers than TensorBoard record: all of it but where it writes."""
    return {key: value for key, value in config.items() if key != "paths"}


def _record_failure(
    err: BaseException, record: RunRecord, stopper: StopOnSignal, trainer: L.Trainer | None
) -> None:
    """Record how the run ended before `err` propagates: pruned, stopped by a signal
    (raised as `Stopped`) or failed, with where it stood."""
    where = position(trainer) if trainer is not None else "before training"
    if isinstance(err, Pruned):  # the sweep's decision, not a failure
        record.finish(err, status="pruned", stop_reason=f"pruned by the sweep {where}")
        return
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
    _remove_empty_event_files(trainer)


def _remove_empty_event_files(trainer: L.Trainer | None) -> None:
    """A run that failed before its first training step leaves no TensorBoard run behind
    (it would show up as an empty run among the real ones)."""
    if trainer is None or trainer.global_step > 0:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and Path(logger.log_dir).is_dir():
            logger.experiment.close()
            for event_file in Path(logger.log_dir).glob("events.out.tfevents.*"):
                event_file.unlink()


def _write_report(cfg: DictConfig, output_dir: Path) -> None:
    """The run's report.html (`report: true`); a report that cannot be made is a warning,
    never a failure of the finished run."""
    if not cfg.get("report") or rank_zero_only.rank != 0:
        return
    from seglab.report import write_report  # noqa: PLC0415 (matplotlib, jinja2: only when asked)

    try:
        log.info("Report: %s", write_report(output_dir))
    except Exception as err:
        log.warning("No report for %s: %s", output_dir, one_line(err))


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
