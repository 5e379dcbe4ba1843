"""Benchmarks: seglab against plain PyTorch on the same model, batches and optimizer.

    make bench                      # or: python -m seglab.bench [--rounds 3] [--steps 30]

Prints ratios measured in one process and writes them to outputs/bench/<time>.json
(and outputs/bench/latest.json):

- training throughput (images/s) of seglab's fit loop (Lightning Trainer, the module's
  logging and progress bar) vs a raw loop (zero_grad, forward, loss, backward, step,
  scheduler step), for a UNet (resnet18) and the plain CNN; runs alternate, and the
  ratio is the median over back-to-back (raw, seglab) pairs;
- inference throughput of seglab's evaluation loop (Trainer.test with metrics) vs a raw
  `torch.no_grad()` loop, and the raw loop with channels_last and with bf16 autocast;
- peak memory of a training step (CUDA: max allocated; CPU: growth of the process's
  peak resident set, measured in a fresh process);
- data loading (`seglab.bench_loading`): images/s of the folder datamodules with 0 and 2
  workers next to decoding alone, for 512x512 PNG image/mask pairs and for 50,000 32x32
  JPEGs in class folders, and the plain CNN trained from those JPEGs.

`--only train,infer,memory,loading` runs a subset.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from seglab.bench_loading import bench_loading
from seglab.data.shapes import SHAPES, ShapesClassification, ShapesSegmentation
from seglab.losses import CrossEntropyLoss
from seglab.models import SimpleCNN
from seglab.modules import ClassificationModule, SegmentationModule

PARTS = ("train", "infer", "memory", "loading")
WARMUP = 3  # steps excluded from every timing (allocator and kernel warm-up)


def _segmentation_batches(steps: int, batch: int, size: int) -> list[tuple[torch.Tensor, ...]]:
    data = ShapesSegmentation("train", steps * batch, (size, size), SHAPES, 4, seed=0)
    items = [data[i] for i in range(len(data))]
    return [
        (
            torch.stack([x for x, _ in items[i : i + batch]]),
            torch.stack([y for _, y in items[i : i + batch]]),
        )
        for i in range(0, len(items), batch)
    ]


def _classification_batches(steps: int, batch: int) -> list[tuple[torch.Tensor, ...]]:
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


class _StepClock(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())


def _images_per_second(times: list[float], batch: int) -> float:
    timed = times[WARMUP:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def _raw_train(net: nn.Module, batches, lr: float) -> float:
    loss_fn = CrossEntropyLoss(ignore_index=255)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=len(batches))
    net.train()
    times = []
    for images, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(images), targets)
        loss.backward()
        optimizer.step()
        scheduler.step()
        times.append(time.perf_counter())
    return _images_per_second(times, len(batches[0][0]))


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
    clock = _StepClock()
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
    return _images_per_second(clock.times, len(batches[0][0]))


def bench_training(name: str, make_net, batches, task: str, rounds: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    initial = make_net()
    raw, seglab = [], []
    for round_ in range(rounds):
        # Back-to-back pairs, the order swapped every round: whichever runs second in a
        # pair tends to gain from a warm allocator and caches on this kind of machine.
        first_raw = round_ % 2 == 0
        if first_raw:
            raw.append(_raw_train(copy.deepcopy(initial), batches, lr=1e-3))
        seglab.append(_seglab_train(copy.deepcopy(initial), batches, task, 1e-3, workdir))
        if not first_raw:
            raw.append(_raw_train(copy.deepcopy(initial), batches, lr=1e-3))
    # Run i of each side ran back to back, under the same machine state: the ratio is
    # the median over those pairs, with its spread (single runs vary by +-7% here).
    pairs = [s / r for r, s in zip(raw, seglab, strict=True)]
    result = {
        "raw_img_s": statistics.median(raw),
        "seglab_img_s": statistics.median(seglab),
        "ratio": statistics.median(pairs),
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
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for images, _ in batches:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            net(images)
            times.append(time.perf_counter())
    return _images_per_second(times, len(batches[0][0]))


def bench_inference(make_net, batches, rounds: int) -> dict:
    torch.manual_seed(0)
    net = make_net()
    module = _module(net, "segmentation", 1e-3)
    runs: dict[str, list[float]] = {"raw": [], "seglab": [], "channels_last": [], "bf16": []}
    for _ in range(rounds):
        runs["raw"].append(_raw_infer(net, batches))
        clock = _TestClock()
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            logger=False,
            callbacks=[clock],
            enable_progress_bar=True,
            enable_model_summary=False,
        )
        trainer.test(module, dataloaders=_Batches(batches), verbose=False)
        runs["seglab"].append(_images_per_second(clock.times, len(batches[0][0])))
        runs["channels_last"].append(_raw_infer(copy.deepcopy(net), batches, channels_last=True))
        runs["bf16"].append(_raw_infer(net, batches, bf16=True))
    result: dict = {f"{k}_img_s": statistics.median(v) for k, v in runs.items()}
    result["runs"] = runs
    for variant in ("seglab", "channels_last", "bf16"):  # median of back-to-back pairs
        pairs = [v / r for r, v in zip(runs["raw"], runs[variant], strict=True)]
        result[f"{variant}_ratio"] = statistics.median(pairs)
    raw = result["raw_img_s"]
    print(
        f"infer unet           raw {raw:8.1f} img/s   seglab {result['seglab_img_s']:8.1f} "
        f"img/s   ratio {result['seglab_ratio']:.3f}   channels_last x"
        f"{result['channels_last_ratio']:.2f}   bf16 x{result['bf16_ratio']:.2f}",
        flush=True,
    )
    return result


class _TestClock(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_test_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())


_MEMORY_PROBE = """
import sys, threading, time, torch, segmentation_models_pytorch as smp
size, batch = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = smp.Unet("resnet18", encoder_weights=None, classes=4)
opt = torch.optim.AdamW(net.parameters(), 1e-3)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 4, (batch, size, size))
cuda = torch.cuda.is_available()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()

if cuda:
    net, x, y = net.cuda(), x.cuda(), y.cuda()
    step(); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    step(); torch.cuda.synchronize()
    print(torch.cuda.max_memory_allocated() / 2**20)
else:
    step()  # optimizer state and allocator pools exist from here on
    base, peak, done = rss(), [0], []
    def sample():  # the resident set, every millisecond, while steps run
        while not done:
            peak[0] = max(peak[0], rss()); time.sleep(0.001)
    thread = threading.Thread(target=sample); thread.start()
    for _ in range(3):
        step()
    done.append(1); thread.join()
    print((max(peak[0], base) - base) / 2**20, base / 2**20)
"""


def bench_memory(size: int, batch: int) -> dict:
    """Peak memory of a UNet-resnet18 training step, in a fresh process. CUDA: the
    allocator's peak. CPU: the resident set's peak while steps run, above the level after
    a first step (weights, gradients, optimizer state), i.e. the step's activations and
    temporaries."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(size), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = [float(v) for v in out.strip().splitlines()[-1].split()]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"peak_mib": values[0], "device": device, "image_size": size, "batch": batch}
    if len(values) > 1:
        result["resident_before_mib"] = values[1]
    print(
        f"memory unet-resnet18 {size}x{size} batch {batch}: step peak {values[0]:.0f} MiB "
        f"({device})",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs per variant")
    parser.add_argument("--steps", type=int, default=30, help="batches per run")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)}",
    )
    args = parser.parse_args(argv)
    parts = args.only.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown parts {unknown}; choose from {list(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "tb"
    L.seed_everything(0, verbose=False)

    results: dict = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    unet = partial(smp.Unet, "resnet18", encoder_weights=None, classes=4)
    if "train" in parts or "infer" in parts:
        seg = _segmentation_batches(args.steps, batch=16, size=64)
    if "train" in parts:
        cls = _classification_batches(args.steps, batch=256)
        results["train_unet_resnet18"] = bench_training(
            "unet-resnet18", unet, seg, "segmentation", args.rounds, workdir
        )
        results["train_cnn"] = bench_training(
            "cnn", partial(SimpleCNN, num_classes=3), cls, "classification", args.rounds, workdir
        )
    if "infer" in parts:
        results["infer_unet_resnet18"] = bench_inference(unet, seg, args.rounds)
    if "memory" in parts:
        results["memory_train_step"] = bench_memory(64, 16)
    if "loading" in parts:
        results["loading"] = bench_loading()
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    text = json.dumps(results, indent=2, default=float) + "\n"
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print(f"written to {args.out / (stamp + '.json')}")
    return results


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
