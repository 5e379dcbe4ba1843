"""The users' commands end to end, each as its own process, against a hand loop's process.

- command (`--only command`): the seed workload as a user types it,
  `seglab-train experiment=folder_cnn data.root=<tree> trainer.max_epochs=E
  data.batch_size=32 data.augment=false`, in a fresh working directory (default run
  directory, default logger, report and test), on 50,000 32x32 JPEGs in 10 class folders
  (45,000 in train/, 5,000 in test/, CIFAR-10's layout), against `benchmarks.hand seed`
  on the same tree.
- unet_command (`--only unet_command`): `seglab-train data=folder model=unet
  model.encoder_name=resnet18 ... data.crop_size=352 data.batch_size=8` on 480x360 PNG
  pairs against `benchmarks.hand unet` trained on as many pairs as seglab's train split.

Wall time is measured around each process. seglab's breakdown comes from its train.log's
timestamps: start-up and imports (launch to the first line), file scan and cache (to the
datamodule's "N train, N val, N test samples" line, the cache's own line dividing the
two), the fit's set-up (sanity validation, loaders), the training epochs and their
validation (each epoch line's seconds and validation seconds), the test (to "Run
directory") and the report (to "Report:"), and the exit. The per-step ratio compares
steps/s over the whole training epochs (validation left out), seglab's / the hand loop's.
Hand loop first, then seglab, one pair per round.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.loading import jpeg_folder, png_pairs
from benchmarks.recipes import UNET_SIZE, unet_recipe

LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[\w+\] - (.*)$")
EPOCH = re.compile(r"^epoch (\d+).*, ([\d.]+) s \(validation ([\d.]+) s\)$")
SAMPLES = re.compile(r": (\d+) train, (\d+) val, (\d+) test samples$")


def _seglab_train() -> str:
    """The `seglab-train` script beside this interpreter (the one `make install` wrote)."""
    script = Path(sys.executable).parent / "seglab-train"
    return str(script) if script.exists() else "seglab-train"


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_train_log(path: Path, launched: float, ended: float) -> dict:
    """The phases of one run from its train.log (see the module docstring), in seconds."""
    first = cache = data = fit_end = test_end = report = None
    epochs: list[tuple[float, float, float]] = []  # (end, seconds, validation seconds)
    train_samples = 0
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if not match:
            continue
        when, logger, message = _stamp(match[1]), match[2], match[3]
        first = when if first is None else first
        if logger == "seglab.data.cache" and cache is None and data is None:
            cache = when
        if data is None and (samples := SAMPLES.search(message)):
            data, train_samples = when, int(samples[1])
        if epoch := EPOCH.match(message):
            epochs.append((when, float(epoch[2]), float(epoch[3])))
        if message.startswith("Run ended:"):
            fit_end = when
        if message.startswith("Run directory:"):
            test_end = when
        if message.startswith("Report:"):
            report = when
    if None in (first, data, fit_end, test_end) or not epochs:
        raise RuntimeError(f"{path}: not a finished run's log (no epoch, test or run line)")
    first_epoch_start = epochs[0][0] - epochs[0][1]
    report_end = report if report is not None else test_end
    phases = {
        "start-up and imports": first - launched,
        "file scan": (cache or data) - first,
        "cache": data - cache if cache else 0.0,
        "fit set-up (sanity check)": first_epoch_start - data,
        "training epochs": sum(s - v for _, s, v in epochs),
        "validation": sum(v for _, _, v in epochs),
        "between epochs": (fit_end - first_epoch_start) - sum(s for _, s, _ in epochs),
        "test": test_end - fit_end,
        "report": report_end - test_end,
        "exit": ended - report_end,
    }
    training = [s - v for _, s, v in epochs]
    return {"phases": phases, "train_samples": train_samples, "epoch_training_s": training}


def run_seglab(overrides: list[str], batch: int) -> dict:
    """`seglab-train OVERRIDES` in a fresh temporary working directory: wall time, the
    phases of its train.log, its test metrics and its training steps/s."""
    with tempfile.TemporaryDirectory(prefix="seglab-command-") as cwd:
        launched = time.time()
        done = subprocess.run(
            [_seglab_train(), *overrides], cwd=cwd, capture_output=True, text=True, check=False
        )
        ended = time.time()
        if done.returncode:
            raise RuntimeError(f"seglab-train {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
        (run_dir,) = Path(cwd, "outputs", "train", "runs").iterdir()
        parsed = parse_train_log(run_dir / "train.log", launched, ended)
        metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    steps = math.ceil(parsed["train_samples"] / batch)
    training = parsed["epoch_training_s"]
    return {
        "wall_s": ended - launched,
        "phases": parsed["phases"],
        "steps_per_epoch": steps,
        "steps_per_s": steps * len(training) / sum(training),
        "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
    }


def run_hand(args: list[str]) -> dict:
    """`python -m benchmarks.hand ARGS`: wall time, its phases and steps/s."""
    launched = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.hand", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.time() - launched
    if done.returncode:
        raise RuntimeError(f"benchmarks.hand {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    epochs = out.pop("epochs")
    phases = {
        "start-up and imports": out.pop("imports"),
        "decode": out.pop("decode"),
        "training epochs": sum(epochs),
        "test": out.pop("test"),
    }
    phases["exit"] = wall - sum(phases.values())
    steps = out.pop("steps_per_epoch")
    return {
        "wall_s": wall,
        "phases": phases,
        "steps_per_epoch": steps,
        "steps_per_s": steps * len(epochs) / sum(epochs),
        "test": {out["score_name"]: out["score"]},
    }


def _compare(label: str, hand: list[dict], seglab: list[dict]) -> dict:
    walls = [s["wall_s"] / h["wall_s"] for h, s in zip(hand, seglab, strict=True)]
    steps = [s["steps_per_s"] / h["steps_per_s"] for h, s in zip(hand, seglab, strict=True)]
    result = {
        "wall_ratio": statistics.median(walls),
        "steps_ratio": statistics.median(steps),
        "wall_ratios": walls,
        "steps_ratios": steps,
        "hand": hand,
        "seglab": seglab,
    }
    h, s = hand[-1], seglab[-1]
    print(f"\n{label}: seglab / hand loop, whole command (last round's breakdown)")
    print(f"  wall {result['wall_ratio']:.2f}x ({s['wall_s']:.1f} s vs {h['wall_s']:.1f} s)")
    print(
        f"  training steps/s over whole epochs {result['steps_ratio']:.2f} of the hand loop's "
        f"({s['steps_per_s']:.1f} vs {h['steps_per_s']:.1f}; "
        f"{s['steps_per_epoch']} vs {h['steps_per_epoch']} steps per epoch)"
    )
    for name, phases in (("seglab", s["phases"]), ("hand", h["phases"])):
        shown = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        print(f"  {name:6s} s: {shown}")
    shown = {k: round(v, 4) for k, v in s["test"].items() if k.count("/") == 1}
    print(f"  test: seglab {shown}, hand {h['test']}")
    return result


def bench_command(data_dir: Path, images: int, epochs: int, rounds: int) -> dict:
    """The seed command against the hand loop (see the module docstring)."""
    root = jpeg_folder(data_dir, images).resolve()
    overrides = [
        "experiment=folder_cnn",
        f"data.root={root}",
        f"trainer.max_epochs={epochs}",
        "data.batch_size=32",
        "data.augment=false",
    ]
    hand, seglab = [], []
    for _ in range(rounds):
        hand.append(run_hand(["seed", str(root), str(epochs), "32"]))
        seglab.append(run_seglab(overrides, 32))
    result = _compare(f"seed command, {images} JPEGs, {epochs} epochs, batch 32", hand, seglab)
    return {"images": images, "epochs": epochs, "command": overrides, **result}


def bench_unet_command(data_dir: Path, pairs: int, epochs: int, rounds: int) -> dict:
    """The UNet recipe's command against the hand loop (see the module docstring)."""
    root = png_pairs(data_dir, pairs, UNET_SIZE).resolve()
    overrides = [*unet_recipe(root), f"trainer.max_epochs={epochs}"]
    train, _, test = (round(r * pairs) for r in (0.8, 0.1, 0.1))  # data=folder's split_ratios
    hand, seglab = [], []
    for _ in range(rounds):
        hand.append(run_hand(["unet", str(root), str(epochs), "8", "352", str(train), str(test)]))
        seglab.append(run_seglab(overrides, 8))
    result = _compare(f"unet352 command, {pairs} pairs, {epochs} epochs, batch 8", hand, seglab)
    return {"pairs": pairs, "epochs": epochs, "command": overrides, **result}
