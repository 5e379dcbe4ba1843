"""Train, then test the best checkpoint.

    python -m seglab.train                                   # UNet on the embedded shapes
    python -m seglab.train model=fcn
    python -m seglab.train experiment=shapes_cnn              # the plain CNN classifier
    python -m seglab.train model=unet model.encoder_name=resnet34 optimizer=sgd optimizer.lr=0.05
    python -m seglab.train --help                             # every group and option

Each run writes into outputs/train/runs/<time>/: `.hydra/` (composed config, overrides),
`run_info.json` (seed, versions, git commit), `checkpoints/`, `tensorboard/`, `train.log`
and `metrics.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from seglab.checkpoint import RunRecord, json_value
from seglab.cli import command
from seglab.data.base import SeglabDataModule
from seglab.errors import SeglabError
from seglab.modules import build_module

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


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float | None]) -> None:
    """Record the composed config with the run's final metrics, for TensorBoard's HParams
    tab to compare the runs of a sweep. The metrics get their own `final/` names: logged
    under their usual names they would add a stray point at step 0 to every curve."""
    params = OmegaConf.to_container(cfg, resolve=True)
    params.pop("paths", None)
    summary = {
        f"final/{name.replace('/', '_')}": value
        for name, value in metrics.items()
        if value is not None
        and (name.startswith("best/") or name.startswith("test/"))
        and "/IoU/" not in name
        and "/Acc/" not in name
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=summary)
        else:
            logger.log_hyperparams(params)


def train(cfg: DictConfig) -> dict[str, float | None]:
    """Fit the configured model, test its best checkpoint, write metrics.json.

    Returns:
        every logged metric of the last validation and of the test, plus
        `best/<optimized_metric>`, the best validation score of the run.
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    log.info("Building data <%s>", cfg.data._target_)
    datamodule: SeglabDataModule = instantiate(cfg.data)
    _sync_data_config(cfg, datamodule)
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
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(RunRecord(OmegaConf.to_container(cfg, resolve=True), output_dir))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = output_dir / "checkpoints" / "last.ckpt"
        if not ckpt_path.exists():
            raise SeglabError(f"ckpt_path=last but {ckpt_path} does not exist")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
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

    _log_hparams(trainer, cfg, metrics)
    if trainer.is_global_zero:
        record = {
            "optimized_metric": cfg.optimized_metric,
            "best_model_path": best_path,
            "metrics": dict(sorted(metrics.items())),
        }
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        log.info("Run directory: %s", output_dir)
    return metrics


@command("train")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point; returns the optimized metric for Hydra sweepers."""
    return train(cfg).get(f"best/{cfg.optimized_metric}")


if __name__ == "__main__":
    main()
