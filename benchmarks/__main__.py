"""Benchmarks: seglab against plain PyTorch on the same model, data and optimizer.

    make bench                      # or: python -m benchmarks [--rounds 5] [--steps 30]
    python -m benchmarks --only seed --seed-images 2000 --rounds 1   # a quick look

Run from the repository root. Prints ratios measured in one process (seglab / plain
PyTorch: 1.0 means seglab costs nothing) and writes them to outputs/bench/<time>.json
(and outputs/bench/latest.json). The generated datasets are written once into
outputs/bench/data/ and reused. The parts (`--only seed,unet352` runs a subset):

- command, unet_command (`benchmarks.command`): the users' commands as they type them,
  `seglab-train experiment=folder_cnn ...` on the seed tree (`--command-epochs`, 10) and
  the UNet recipe on 480x360 PNG pairs (`--unet-pairs`, `--unet-epochs`), each its own
  process in a fresh working directory, against a hand loop's process
  (`benchmarks.hand`): whole wall time, the phases of each, test scores, and training
  steps/s over whole epochs;
- seed (`benchmarks.recipes`): the workload users start with, `experiment=folder_cnn`
  (the plain CNN) on 50,000 32x32 JPEGs in 10 class folders at batch 32 and 256:
  `seglab.train.train()` with `data.cache=memory` against a hand-written PyTorch loop on
  the images decoded once; the decode, the time `train()` takes to its first training
  step (cache build included) and a second run's with `data.cache=disk` are printed
  apart from images/s;
- unet352 (`benchmarks.recipes`): UNet-resnet18 on `data=folder`, 480x360 PNG pairs,
  352x352 crops, batch 8: `train()` against a hand loop on the pairs decoded once;
- train, infer (`benchmarks.loops`): seglab's fit and test loops vs raw PyTorch loops on
  the same in-memory batches, for a UNet (resnet18) and the plain CNN at batch 256;
  channels_last and bf16 next to the raw inference;
- memory (`benchmarks.memory`): peak memory of a training step (CUDA: max allocated; CPU:
  growth of the process's peak resident set, measured in a fresh process);
- loading (`benchmarks.loading`): images/s of the folder datamodules with 0 and 2 workers
  next to decoding alone, for 512x512 PNG image/mask pairs and for 50,000 32x32 JPEGs in
  class folders, and the plain CNN trained from those JPEGs.

Every timing leaves out the first steps of a run (`benchmarks.timing.WARMUP`), and hand
and seglab runs alternate in back-to-back pairs whose ratios' median is reported.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import segmentation_models_pytorch as smp
import torch

from benchmarks.command import bench_command, bench_unet_command
from benchmarks.loading import bench_loading
from benchmarks.loops import (
    bench_inference,
    bench_training,
    classification_batches,
    segmentation_batches,
)
from benchmarks.memory import bench_memory
from benchmarks.recipes import bench_seed, bench_unet352
from seglab.data.cache import MODES as CACHE_MODES
from seglab.models import SimpleCNN

PARTS = ("command", "unet_command", "seed", "unet352", "train", "infer", "memory", "loading")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs per variant")
    parser.add_argument(
        "--steps", type=int, default=30, help="batches per run of the train and infer parts"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/bench"), help="results; data/ holds the datasets"
    )
    parser.add_argument(
        "--seed-images",
        type=int,
        default=50_000,
        help="JPEGs in the seed part's folder tree, 9 in 10 of them in train/",
    )
    parser.add_argument(
        "--seed-cache",
        choices=CACHE_MODES,
        default="memory",
        help="data.cache of the seed part's timed seglab runs",
    )
    parser.add_argument(
        "--seed-steps",
        type=int,
        default=200,
        help="timed steps per seed run after the warm-up, at most an epoch; 0: one epoch",
    )
    parser.add_argument(
        "--unet-steps", type=int, default=3, help="timed steps per unet352 run after the warm-up"
    )
    parser.add_argument(
        "--command-epochs", type=int, default=10, help="epochs of the command part's runs"
    )
    parser.add_argument(
        "--command-rounds", type=int, default=1, help="hand/seglab pairs of the command parts"
    )
    parser.add_argument(
        "--unet-pairs", type=int, default=80, help="PNG pairs of the unet_command part"
    )
    parser.add_argument(
        "--unet-epochs", type=int, default=2, help="epochs of the unet_command part's runs"
    )
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
    data_dir = args.out / "data"
    L.seed_everything(0, verbose=False)

    results: dict = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if "command" in parts:
        results["command"] = bench_command(
            data_dir, args.seed_images, args.command_epochs, args.command_rounds
        )
    if "unet_command" in parts:
        results["unet_command"] = bench_unet_command(
            data_dir, args.unet_pairs, args.unet_epochs, args.command_rounds
        )
    if "seed" in parts:
        results["seed"] = bench_seed(
            data_dir, args.seed_images, args.seed_cache, args.rounds, args.seed_steps
        )
    if "unet352" in parts:
        results["unet352"] = bench_unet352(data_dir, args.rounds, args.unet_steps)
    unet = partial(smp.Unet, "resnet18", encoder_weights=None, classes=4)
    if "train" in parts or "infer" in parts:
        seg = segmentation_batches(args.steps, batch=16, size=64)
    if "train" in parts:
        cls = classification_batches(args.steps, batch=256)
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
        results["loading"] = bench_loading(data_dir)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    text = json.dumps(results, indent=2, default=float) + "\n"
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print(f"written to {args.out / (stamp + '.json')}")
    return results


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
