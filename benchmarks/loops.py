"""seglab's training and evaluation loops against plain PyTorch loops on the same model,
batches and optimizer.

- training throughput (images/s) of seglab's fit loop (Lightning Trainer, the module's
  logging and progress bar) vs a raw loop (zero_grad, forward, loss, backward, step,
  scheduler step); runs alternate, and the ratio is the median over back-to-back
  (raw, seglab) pairs;
- inference throughput of seglab's evaluation loop (Trainer.test with metrics) vs a raw
  `torch.no_grad()` loop, and the raw loop with channels_last and with bf16 autocast.
"""

from __future__ import annotations

import copy
import statistics
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn

from benchmarks.timing import StepClock, alternate, images_per_second, paired_ratio
from seglab.data.shapes import SHAPES, ShapesClassification, ShapesSegmentation
from seglab.losses import CrossEntropyLoss
from seglab.modules import ClassificationModule, SegmentationModule


def segmentation_batches(steps: int, batch: int, size: int) -> list[tuple[torch.Tensor, ...]]:
    data = ShapesSegmentation("train", steps * batch, (size, size), SHAPES, 4, seed=0)
    items = [data[i] for i in range(len(data))]
    return [
        (
            torch.stack([x for x, _ in items[i : i + batch]]),
            torch.stack([y for _, y in items[i : i + batch]]),
        )
        for i in range(0, len(items), batch)
    ]


def classification_batches(steps: int, batch: int) -> list[tuple[torch.Tensor, ...]]:
    data = ShapesClassification("train", steps * batch, (32, 32), SHAPES, seed=0)
    items = [data[i] for i in range(len(data))]
    return [
        (
            torch.stack([x for x, _ in items[i : i + batch]]),
            torch.tensor([y for _, y in items[i : i + batch]]),
        )
        for i in range(0, len(items), batch)
    ]


class _Batches:
    """The in-memory batches as one iterable (Lightning reads a plain list as a list of
    dataloaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _raw_train(net: nn.Module, batches, lr: float) -> float:
    loss_fn = CrossEntropyLoss(ignore_index=255)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=len(batches))
    net.train()
    clock = StepClock()
    for images, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(images), targets)
        loss.backward()
        optimizer.step()
        scheduler.step()
        clock.tick()
    return images_per_second(clock.times, len(batches[0][0]))


def _module(net: nn.Module, task: str, lr: float) -> L.LightningModule:
    names = ["background", *SHAPES] if task == "segmentation" else list(SHAPES)
    cls = SegmentationModule if task == "segmentation" else ClassificationModule
    return cls(
        net,
        CrossEntropyLoss(ignore_index=255 if task == "segmentation" else -100),
        partial(torch.optim.AdamW, lr=lr),
        partial(torch.optim.lr_scheduler.PolynomialLR),
        class_names=names,
        ignore_index=255 if task == "segmentation" else -100,
    )


def _seglab_train(net: nn.Module, batches, task: str, lr: float, workdir: Path) -> float:
    """seglab's loop as `make train` runs it: TensorBoard logging every 10 steps, the
    progress bar, LR monitor; no validation or checkpoint writing (timed separately)."""
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=L.pytorch.loggers.TensorBoardLogger(workdir, name="bench"),
        callbacks=[clock, L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=10,
    )
    # The very batch objects the raw loop iterates: no DataLoader collation on one side only.
    trainer.fit(_module(net, task, lr), train_dataloaders=_Batches(batches))
    return images_per_second(clock.times, len(batches[0][0]))


def bench_training(name: str, make_net, batches, task: str, rounds: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    initial = make_net()
    raw, seglab = alternate(
        rounds,
        lambda: _raw_train(copy.deepcopy(initial), batches, lr=1e-3),
        lambda: _seglab_train(copy.deepcopy(initial), batches, task, 1e-3, workdir),
    )
    ratio, pairs = paired_ratio(raw, seglab)
    result = {
        "raw_img_s": statistics.median(raw),
        "seglab_img_s": statistics.median(seglab),
        "ratio": ratio,
        "pair_ratios": pairs,
        "raw_runs": raw,
        "seglab_runs": seglab,
    }
    print(
        f"train {name:<14} raw {result['raw_img_s']:8.1f} img/s   seglab "
        f"{result['seglab_img_s']:8.1f} img/s   ratio {result['ratio']:.3f} "
        f"(pairs {min(pairs):.3f}-{max(pairs):.3f})",
        flush=True,
    )
    return result


def _raw_infer(net: nn.Module, batches, channels_last=False, bf16=False) -> float:
    net = net.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    clock = StepClock()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for images, _ in batches:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            net(images)
            clock.tick()
    return images_per_second(clock.times, len(batches[0][0]))


def bench_inference(make_net, batches, rounds: int) -> dict:
    torch.manual_seed(0)
    net = make_net()
    module = _module(net, "segmentation", 1e-3)
    runs: dict[str, list[float]] = {"raw": [], "seglab": [], "channels_last": [], "bf16": []}
    for _ in range(rounds):
        runs["raw"].append(_raw_infer(net, batches))
        clock = StepClock()
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            logger=False,
            callbacks=[clock],
            enable_progress_bar=True,
            enable_model_summary=False,
        )
        trainer.test(module, dataloaders=_Batches(batches), verbose=False)
        runs["seglab"].append(images_per_second(clock.times, len(batches[0][0])))
        runs["channels_last"].append(_raw_infer(copy.deepcopy(net), batches, channels_last=True))
        runs["bf16"].append(_raw_infer(net, batches, bf16=True))
    result: dict = {f"{k}_img_s": statistics.median(v) for k, v in runs.items()}
    result["runs"] = runs
    for variant in ("seglab", "channels_last", "bf16"):
        result[f"{variant}_ratio"], _ = paired_ratio(runs["raw"], runs[variant])
    raw = result["raw_img_s"]
    print(
        f"infer unet           raw {raw:8.1f} img/s   seglab {result['seglab_img_s']:8.1f} "
        f"img/s   ratio {result['seglab_ratio']:.3f}   channels_last x"
        f"{result['channels_last_ratio']:.2f}   bf16 x{result['bf16_ratio']:.2f}",
        flush=True,
    )
    return result
