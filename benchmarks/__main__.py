"""Benchmarks: seglab against plain PyTorch on the same model, batches and optimizer.

    make bench                      # or: python -m benchmarks [--rounds 3] [--steps 30]

Run from the repository root. Prints ratios measured in one process and writes them to
outputs/bench/<time>.json (and outputs/bench/latest.json):

- train, infer (`benchmarks.loops`): seglab's fit and test loops vs raw PyTorch loops, for
  a UNet (resnet18) and the plain CNN; channels_last and bf16 next to the raw inference;
- memory (`benchmarks.memory`): peak memory of a training step (CUDA: max allocated; CPU:
  growth of the process's peak resident set, measured in a fresh process);
- loading (`benchmarks.loading`): images/s of the folder datamodules with 0 and 2 workers
  next to decoding alone, for 512x512 PNG image/mask pairs and for 50,000 32x32 JPEGs in
  class folders, and the plain CNN trained from those JPEGs.

`--only train,infer,memory,loading` runs a subset.
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

from benchmarks.loading import bench_loading
from benchmarks.loops import (
    bench_inference,
    bench_training,
    classification_batches,
    segmentation_batches,
)
from benchmarks.memory import bench_memory
from seglab.models import SimpleCNN

PARTS = ("train", "infer", "memory", "loading")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
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
