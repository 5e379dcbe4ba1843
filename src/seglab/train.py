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
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from seglab.checkpoint import RunRecord, json_value
from seglab.cli import command
from seglab.data.base import SeglabDataModule
from seglab.errors import SeglabError, exit_message, one_line
from seglab.modules import build_module
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


def check_options(cfg: DictConfig, output_dir: Path) -> str | Path | None:
    """Options that would otherwise fail deep inside torch or Lightning, after data and
    model were built (or silently do something else), checked before anything is built.

    Returns:
        the checkpoint to resume from (`ckpt_path`, with "last" resolved), or None.
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

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = output_dir / "checkpoints" / "last.ckpt"
        if not ckpt_path.exists():
            raise SeglabError(f"ckpt_path=last but {ckpt_path} does not exist")
    elif ckpt_path is not None and ckpt_path not in _LIGHTNING_CKPT_NAMES:
        if not Path(ckpt_path).is_file():
            raise SeglabError(
                f"ckpt_path={ckpt_path} does not exist; give a checkpoint a run wrote "
                "(<run dir>/checkpoints/last.ckpt), or ckpt_path=last with that run's "
                "hydra.run.dir"
            )
    return ckpt_path


def _to_log_files(level: int, message: str, exc_info: Any = None) -> None:
    """Write to the run's log files only (train.log): the console gets its own line."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


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
    in run_info.json.

    Returns:
        every logged metric of the last validation and of the test, plus
        `best/<optimized_metric>`, the best validation score of the run.
    """
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(OmegaConf.to_container(cfg, resolve=True), output_dir)
    record.start()
    built: dict[str, Any] = {"loggers": [], "trainer": None}
    try:
        metrics = _fit_and_test(cfg, output_dir, record, built)
    except BaseException as err:
        if isinstance(err, Pruned):  # the sweep's decision, not a failure
            record.finish(err, status="pruned")
            raise
        if isinstance(err, SeglabError):
            _to_log_files(logging.ERROR, exit_message(err))
        else:
            _to_log_files(logging.ERROR, f"run failed: {one_line(err)}", sys.exc_info())
        record.finish(err)
        _remove_empty_event_files(built["loggers"], built["trainer"])
        raise
    record.finish()
    return metrics


def _fit_and_test(
    cfg: DictConfig, output_dir: Path, record: RunRecord, built: dict[str, Any]
) -> dict[str, float | None]:
    ckpt_path = check_options(cfg, output_dir)
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

    loggers = instantiate_all(cfg.get("logger"))
    built["loggers"] = loggers
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(record)
    callbacks.extend(trial_callbacks(cfg))  # a trial of an optuna sweep reports to its study
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    built["trainer"] = trainer
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    raise_if_pruned(trainer)  # a pruned trial ends here, on every rank, untested
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


@command("train")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns the optimized metric for Hydra sweepers."""
    return train(cfg).get(f"best/{cfg.optimized_metric}")


if __name__ == "__main__":
    main()
