"""Plan a segmentation experiment from the data and a time budget, with no config to write.

    seglab-plan data=folder data.root=/data/roads data.class_names=[bg,road] \\
        data.num_classes=2 budget=00:01:00:00 name=roads
    seglab-train --config-dir conf experiment=roads

Fingerprints the training split (`seglab.fingerprint`), decides the pipeline by rules,
each decision written beside its key with its reason, measures the batch size by trial
training steps on this machine (memory and speed, not guessed), sizes the run to the
budget (`trainer.max_time`, with a run-length schedule stretched over it) and writes
`<config dir>/experiment/<name>.yaml`: the first `--config-dir` given, else ./conf.
The decisions and the measurements also go to outputs/plan/runs/<time>/plan.json.

The rules (`decide`), in order:
- crop: the median image's shorter side, at most 512, rounded down to a multiple of 32;
  larger (up to the shorter side, at most 1024) when the 90th-percentile object of a
  class is larger than that crop, so most objects fit in one crop.
- evaluation: sliding window (`inference=slide`, window = crop, stride 2/3 of it) when the
  largest image's longer side is more than twice the crop, else the whole image.
- model: U-Net; encoder tu-resnet10t for small data or short budgets (< 1,000 images or
  < 30 minutes), resnet18 up to 10,000 images or 4 hours, resnet34 beyond; random init
  (offline; model.encoder_weights=imagenet downloads pretrained weights).
- loss: cross-entropy; class weights (median frequency balancing, clipped to [0.1, 10])
  when the pixel shares differ by more than 50x; a Dice term besides when a class holds
  under 1% of the pixels.
- batch: trial training steps at the crop with batches 2, 4, 8, 16, 32 while the peak
  memory stays under the limit (`memory`, GiB; default 85% of the GPU or half the
  available RAM): on a GPU the largest that fits (at most 16); on a CPU, where a larger
  batch is no faster per image, the smallest from 4 within 10% of the best images/s
  (more updates in the budget).
- learning rate: AdamW 3e-3 at batch 8 (the default recipe), scaled by sqrt(batch / 8).
- schedule: poly over the budget: `trainer.max_epochs=-1`, `trainer.max_time` = the
  budget less the estimated start-up, cache build, test and report; validation every
  epoch, or every n epochs when it would take over 10% of the training time.
- augmentation: scale range [0.5, 2.0] and colour jitter under 200 images, [0.5, 2.0]
  under 2,000, [0.75, 1.5] beyond; horizontal flips at 0.5.
- cache: memory when the decoded splits take at most a quarter of the available memory,
  else disk. Workers: the datamodule's default. Precision: `auto`'s choice here.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seglab.budget import parse_max_time
from seglab.check_data import class_weights
from seglab.cli import command, config_dir_arguments
from seglab.data.base import SeglabDataModule
from seglab.data.cache import available_memory, decoded_nbytes
from seglab.errors import SeglabError
from seglab.fingerprint import Fingerprint, fingerprint
from seglab.lightning_compat import auto_precision

log = logging.getLogger(__name__)

BATCHES = (2, 4, 8, 16, 32)
TRIAL_STEPS = 3  # per batch size, after one warm-up step
STARTUP_S = 8.0  # imports, data listing and the fit's set-up, measured on a 2-core CPU
REPORT_S = 4.0  # the report's page, besides its validation pass
# Pixel shares differing more than this get class weights. On shapes (17x) median-frequency
# weights cost 4.4 points of test mIoU in a 90-second planned run (0.779 against 0.823).
WEIGHTS_FROM = 50
MARGIN = 0.05  # of the budget, for what the estimate misses (the last step, slow disks)


@dataclass
class Decision:
    """One planned setting: the config key, its value, and why."""

    key: str
    value: Any
    why: str


@dataclass
class Plan:
    decisions: list[Decision] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # config group -> option
    trials: list[dict[str, Any]] = field(default_factory=list)  # the measured batch sizes
    estimate: dict[str, float] = field(default_factory=dict)  # seconds per phase
    evaluate: str = ""  # the evaluate command's inference overrides

    def add(self, key: str, value: Any, why: str) -> None:
        self.decisions.append(Decision(key, value, why))

    def value(self, key: str) -> Any:
        return next(d.value for d in self.decisions if d.key == key)

    def set(self, key: str, value: Any, why: str) -> None:
        """Replace `key`'s decision (in its place), or add it."""
        for d in self.decisions:
            if d.key == key:
                d.value, d.why = value, why
                return
        self.add(key, value, why)

    def remove(self, key: str) -> None:
        self.decisions = [d for d in self.decisions if d.key != key]

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "decisions": [vars(d) for d in self.decisions],
            "trials": self.trials,
            "estimate": self.estimate,
            "evaluate": self.evaluate,
        }


def floor32(value: float) -> int:
    return max(32, int(value) // 32 * 32)


def crop_size(print_: Fingerprint) -> tuple[int, str]:
    short = min(print_.height["median"], print_.width["median"])
    crop = floor32(min(short, 512))
    why = f"the median image is {print_.height['median']:.0f}x{print_.width['median']:.0f}"
    extents = [(c.object_extent["p90"], c.name) for c in print_.classes[1:] if c.object_extent]
    if extents:
        largest, name = max(extents)
        if largest > crop and short > crop:
            crop = floor32(min(short, largest, 1024))
            why += f"; {name} objects reach {largest:.0f} px (90th percentile): the crop holds them"
        else:
            why += f"; the largest objects ({name}, 90th percentile {largest:.0f} px) fit"
    return crop, why


def encoder_for(samples: int, budget_s: float) -> tuple[str, str]:
    if samples < 1000 or budget_s < 30 * 60:
        return (
            "tu-resnet10t",
            f"{samples} training images, {budget_s / 60:.0f} min: a small encoder",
        )
    if samples <= 10_000 or budget_s <= 4 * 3600:
        return "resnet18", f"{samples} training images, {budget_s / 3600:.1f} h"
    return "resnet34", f"{samples} training images, {budget_s / 3600:.1f} h: a deeper encoder"


def loss_for(print_: Fingerprint, ignore_index: int) -> tuple[str, list[float] | None, str]:
    """(loss option, CE class weights or None, why)."""
    shares = np.asarray([c.pixel_share for c in print_.classes])
    present = shares[shares > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    rare = [c.name for c in print_.classes if 0 < c.pixel_share < 0.01]
    weights = None
    why = f"pixel shares {', '.join(f'{c.name} {c.pixel_share:.1%}' for c in print_.classes)}"
    if ratio > WEIGHTS_FROM:
        weights = [round(min(10.0, max(0.1, w)), 3) if w else 0.0 for w in class_weights(shares)]
        why += f"; they differ {ratio:.0f}x: median-frequency class weights"
    else:
        why += f"; they differ {ratio:.0f}x, under {WEIGHTS_FROM}x: no class weights"
    if rare:
        return "ce_dice", weights, why + f"; {', '.join(rare)} under 1%: a Dice term"
    return "ce", weights, why


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _reset_peak() -> bool:
    """Reset the process's peak resident set (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def memory_limit(cfg_memory: float | None, device: torch.device) -> tuple[int, str]:
    if cfg_memory is not None:
        return int(float(cfg_memory) * 2**30), f"memory={cfg_memory} GiB"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(0.85 * total), f"85% of the GPU's {total / 2**30:.1f} GiB"
    free = available_memory()
    return free // 2, f"half the {free / 2**30:.1f} GiB of RAM available"


def _release() -> None:
    """Hand freed memory back to the system (glibc's malloc_trim), so that one trial's
    freed buffers do not hide the next one's need."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak is only less exact
        pass


def trial_step(
    model_cfg: DictConfig,
    base: int,
    encoder: str,
    num_classes: int,
    crop: int,
    batch: int,
    precision: str,
    device: torch.device,
) -> dict[str, float]:
    """Peak memory and seconds per training step of the planned net at `crop` and
    `batch`: on the GPU the allocator's peak; on the CPU the process's peak resident set
    less `base` (its resident set before the first trial), what the step needs of RAM."""
    torch.manual_seed(0)
    cpu = device.type == "cpu"
    if cpu:
        _release()
        if not _reset_peak():
            raise SeglabError("cannot measure the CPU's peak memory here (/proc/self/clear_refs)")
    else:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    net = instantiate(model_cfg, encoder_name=encoder, classes=num_classes).to(device)
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, crop, crop, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, num_classes, (batch, crop, crop), device=device)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    autocast = precision.endswith("mixed")
    times = []
    for _ in range(1 + TRIAL_STEPS):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(net(images), masks)
        loss.backward()
        optimizer.step()
        if not cpu:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    peak = _peak() - base if cpu else torch.cuda.max_memory_allocated(device)
    del net, optimizer, images, masks, loss
    _release()
    return {"batch": batch, "peak_bytes": int(peak), "step_s": float(np.median(times[1:]))}


def choose_batch(trials: list[dict], limit: int, gpu: bool) -> tuple[int, str]:
    fits = [t for t in trials if t["peak_bytes"] <= limit]
    if not fits:
        smallest = trials[0]
        raise SeglabError(
            f"a training step at batch {smallest['batch']} needs "
            f"{smallest['peak_bytes'] / 2**30:.2f} GiB, more than the {limit / 2**30:.2f} GiB "
            "limit: give more memory (memory=GiB) or use smaller images"
        )
    if gpu:
        best = max((t for t in fits if t["batch"] <= 16), key=lambda t: t["batch"])
        return best["batch"], "the largest batch (up to 16) whose step fits the memory limit"
    floor = min(4, max(t["batch"] for t in fits))  # batch 2 only where 4 does not fit
    rate = {t["batch"]: t["batch"] / t["step_s"] for t in fits if t["batch"] >= floor}
    top = max(rate.values())
    batch = min(b for b, r in rate.items() if r >= 0.9 * top)
    return batch, (
        f"{rate[batch]:.1f} images/s, within 10% of the best measured from batch {floor} "
        f"({top:.1f}); smaller batches give more updates in the budget"
    )


def decide(
    print_: Fingerprint,
    datamodule: SeglabDataModule,
    data_cfg: DictConfig,
    model_cfg: DictConfig,
    budget: timedelta,
    memory: float | None,
    device: torch.device,
    encoder: str | None = None,
    crop: int | None = None,
    batches: Sequence[int] = BATCHES,
) -> Plan:
    """The plan for `print_` within `budget` (see the module docstring for the rules);
    `encoder` and `crop`, when given, replace the rules' choice (seglab-auto's
    candidates), and the batch is measured for them. `batches` are the batch sizes
    tried, in order; given largest first, the first whose step fits ends the trials."""
    plan = Plan()
    budget_s = budget.total_seconds()
    train_n = print_.samples["train"]
    eval_n = sum(n for split, n in print_.samples.items() if split != "train")
    crops = "crop_size" in data_cfg
    if crops:
        planned, why = crop_size(print_)
        if crop is not None and crop != planned:
            why = f"a candidate of seglab-auto (the rule gives {planned}: {why})"
        plan.add("data.crop_size", crop or planned, why)
        crop = crop or planned
    else:  # e.g. data=shapes: whole images of one size
        crop = floor32(min(print_.height["median"], print_.width["median"]))
    if 2 * crop < max(print_.max_size):
        stride = max(32, crop * 2 // 3)
        plan.evaluate = (
            f"inference=slide inference.window=[{crop},{crop}] inference.stride=[{stride},{stride}]"
        )
    else:
        plan.evaluate = "inference=whole"

    planned, why = encoder_for(train_n, budget_s)
    if encoder is not None and encoder != planned:
        why = f"a candidate of seglab-auto (the rule gives {planned}: {why})"
    encoder = encoder or planned
    plan.groups["model"] = "unet"
    plan.add("model.encoder_name", encoder, why)
    plan.add("model.encoder_weights", None, "random init works offline; imagenet downloads weights")

    option, weights, why = loss_for(print_, datamodule.ignore_index)
    plan.groups["loss"] = option
    key = "loss.losses.ce.weight" if option == "ce_dice" else "loss.weight"
    plan.add(key, weights, why)

    on_cpu = device.type == "cpu"
    precision, why = auto_precision(on_cpu)
    plan.add("trainer.precision", precision, why)

    limit, limit_why = memory_limit(memory, device)
    # A first step allocates once for good (thread pools, kernel caches): not a batch's.
    trial_step(model_cfg, 0, encoder, datamodule.num_classes, crop, 2, precision, device)
    _release()
    base = _rss() if on_cpu else 0
    descending = len(batches) > 1 and batches[0] > batches[-1]
    for batch in batches:
        if batch > max(2, train_n // 2):
            if descending:
                continue
            break
        trial = trial_step(
            model_cfg, base, encoder, datamodule.num_classes, crop, batch, precision, device
        )
        plan.trials.append(trial)
        log.info(
            "trial step at batch %d: %.2f s, %.0f MiB", batch, trial["step_s"],
            trial["peak_bytes"] / 2**20,
        )  # fmt: skip
        fits = trial["peak_bytes"] <= limit
        if descending and fits:
            break
        if not descending and (not fits or trial["step_s"] * 50 > budget_s):
            break
    batch, why = choose_batch(plan.trials, limit, gpu=not on_cpu)
    plan.add("data.batch_size", batch, f"{why}; limit {limit_why}")

    lr = float(f"{min(6e-3, 3e-3 * math.sqrt(batch / 8)):.2g}")
    plan.groups["optimizer"] = "adamw"
    plan.add("optimizer.lr", lr, "AdamW 3e-3 at batch 8, scaled by sqrt(batch / 8)")

    if crops:
        if train_n < 200:
            scale, jitter = [0.5, 2.0], {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3}
            why = f"{train_n} training images: strong augmentation"
        elif train_n < 2000:
            scale, jitter = [0.5, 2.0], None
            why = f"{train_n} training images"
        else:
            scale, jitter = [0.75, 1.5], None
            why = f"{train_n} training images: milder scaling"
        plan.add("data.scale_range", scale, why)
        if "color_jitter" in data_cfg:
            plan.add("data.color_jitter", jitter, why)

    if "cache" in data_cfg:
        pixels = print_.height["median"] * print_.width["median"]
        need = decoded_nbytes("segmentation", train_n + eval_n, int(pixels * (train_n + eval_n)))
        free = available_memory()
        cache = "memory" if need <= free / 4 else "disk"
        plan.add(
            "data.cache", cache,
            f"the decoded splits take about {need / 2**20:.0f} MiB of {free / 2**20:.0f} MiB free",
        )  # fmt: skip

    step_s = next(t["step_s"] for t in plan.trials if t["batch"] == batch)
    eval_per_image = step_s / batch / 3  # a forward pass is about a third of a step
    cache_s = print_.seconds_per_sample * (train_n + eval_n) / max(1, min(8, _cores()))
    val_s = print_.samples.get("val", 0) * eval_per_image
    epoch_s = math.ceil(train_n / batch) * step_s
    test_s = (print_.samples.get("test", 0) + print_.samples.get("val", 0)) * eval_per_image
    fixed = STARTUP_S + cache_s + test_s + REPORT_S + MARGIN * budget_s
    fit_s = budget_s - fixed
    if fit_s < 2 * (epoch_s + val_s):
        least = (fixed - MARGIN * budget_s + 2 * (epoch_s + val_s)) / (1 - MARGIN) + 1
        raise SeglabError(
            f"budget={hms(budget_s)} leaves {max(0, fit_s):.0f} s to train, less than 2 "
            f"epochs ({epoch_s + val_s:.0f} s each on this machine); give at least "
            f"budget={hms(least)}"
        )
    every = max(1, math.ceil(val_s / (0.1 * epoch_s))) if epoch_s else 1
    epochs = fit_s / (epoch_s + val_s / every)
    plan.estimate = {
        "startup_s": STARTUP_S,
        "cache_s": round(cache_s, 1),
        "epoch_s": round(epoch_s, 2),
        "validation_s": round(val_s, 2),
        "test_and_report_s": round(test_s + REPORT_S, 1),
        "fit_s": round(fit_s, 1),
        "epochs": round(epochs, 1),
    }
    plan.groups["scheduler"] = "poly"
    plan.add("trainer.max_epochs", -1, "the run ends at trainer.max_time, not after N epochs")
    plan.add(
        "trainer.max_time", hms(fit_s),
        f"the budget less start-up {STARTUP_S:.0f} s, cache {cache_s:.0f} s, test and report "
        f"{test_s + REPORT_S:.0f} s and a {MARGIN:.0%} margin: about {epochs:.0f} epochs "
        f"of {epoch_s:.1f} s",
    )  # fmt: skip
    plan.add(
        "trainer.check_val_every_n_epoch", every,
        f"validation takes {val_s:.1f} s against {epoch_s:.1f} s per epoch",
    )  # fmt: skip
    return plan


def _cores() -> int:
    import os  # noqa: PLC0415

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def hms(seconds: float) -> str:
    """DD:HH:MM:SS, rounded down to the second."""
    s = int(max(0, seconds))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _yaml(value: Any) -> str:
    """A value as YAML flow text: JSON is YAML, null and numbers included."""
    return "null" if value is None else json.dumps(value)


def _data_overrides() -> dict[str, str]:
    """The data.KEY=VALUE overrides of this command line (the user's data options)."""
    found = {}
    for override in HydraConfig.get().overrides.task:
        key, _, _ = override.lstrip("+~").partition("=")
        if key.startswith("data.") and key.count(".") == 1:
            found[key.split(".", 1)[1]] = key
    return found


def render(
    plan: Plan,
    print_: Fingerprint,
    cfg: DictConfig,
    data_option: str,
    name: str | None = None,
    by: str = "seglab-plan",
    note: Sequence[str] = (),
) -> str:
    """The experiment file: the defaults list, then every key with its reason above it;
    `note` lines go into the header."""
    lines = [
        "# @package _global_",
        f"# Planned by {by} on {datetime.now():%Y-%m-%d %H:%M} for budget={cfg.budget}",
        f"# from {print_.read} of {print_.samples['train']} training images of "
        f"{print_.dataset}; edit freely.",
        *(f"# {line}" for line in note),
        f"#   seglab-train --config-dir <this folder's parent> experiment={name or cfg.name}",
        f"# Evaluate with: seglab-evaluate ckpt_path=<best.ckpt> {plan.evaluate}",
        "defaults:",
        f"  - override /data: {data_option}",
        *(f"  - override /{group}: {option}" for group, option in plan.groups.items()),
        "",
    ]
    given = {key: cfg.data[key] for key in _data_overrides() if key in cfg.data}
    planned: dict[str, list[Decision]] = {}
    for decision in plan.decisions:
        planned.setdefault(decision.key.split(".", 1)[0], []).append(decision)
    if given or "data" in planned:
        lines.append("data:")
        for key, value in given.items():
            if not any(d.key == f"data.{key}" for d in planned.get("data", [])):
                plain = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
                lines.append(f"  {key}: {_yaml(plain)}")
    for top in ("data", "model", "loss", "optimizer", "trainer"):
        if top not in planned:
            continue
        if top != "data":
            lines.append(f"{top}:")
        nested: dict[str, list[tuple[str, Decision]]] = {}
        for d in planned[top]:
            path = d.key.split(".")[1:]
            nested.setdefault(".".join(path[:-1]), []).append((path[-1], d))
        for prefix, items in nested.items():
            indent = "  "
            for depth, part in enumerate(prefix.split(".") if prefix else []):
                lines.append(f"{'  ' * (depth + 1)}{part}:")
                indent = "  " * (depth + 2)
            for name, d in items:
                width = max(40, 88 - len(indent))
                lines += [f"{indent}# {line}" for line in textwrap.wrap(d.why, width)]
                lines.append(f"{indent}{name}: {_yaml(d.value)}")
        lines.append("")
    return "\n".join(lines)


def config_dir(cfg: DictConfig) -> Path:
    if cfg.get("config_dir"):
        return Path(cfg.config_dir)
    given = config_dir_arguments(sys.argv[1:])
    return Path(given[0]) if given else Path("conf")


def read_budget(cfg: DictConfig) -> timedelta:
    budget = parse_max_time(cfg.budget)
    if budget is None:
        raise SeglabError("budget is required, as DD:HH:MM:SS (budget=00:01:00:00 for an hour)")
    return budget


def experiment_target(cfg: DictConfig, own: bool = False) -> Path:
    """Where the experiment file goes; an existing one is refused unless
    `overwrite=true` or `own` (the command that wrote it continues)."""
    if not str(cfg.name).replace("_", "").replace("-", "").isalnum():
        raise SeglabError(f"name={cfg.name!r} must be letters, digits, _ or -: it names a file")
    target = config_dir(cfg) / "experiment" / f"{cfg.name}.yaml"
    if target.exists() and not cfg.get("overwrite") and not own:
        raise SeglabError(
            f"{target} exists (an earlier plan, perhaps edited since); choose another "
            "name=..., or overwrite=true to replace it"
        )
    return target


def write_text(target: Path, text: str) -> None:
    """`text` into `target` through a temporary file: never half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_text(text)
    partial.replace(target)


def fingerprinted(cfg: DictConfig) -> tuple[SeglabDataModule, Fingerprint]:
    """The configured segmentation datamodule, prepared, and its fingerprint."""
    datamodule: SeglabDataModule = instantiate(cfg.data)
    if datamodule.task != "segmentation":
        raise SeglabError(
            f"seglab-plan plans segmentation data; data={HydraConfig.get().runtime.choices.data} "
            "is a classification dataset (experiment=folder_cnn trains class folders)"
        )
    datamodule.prepare_data()
    started = time.perf_counter()
    print_ = fingerprint(datamodule, limit=cfg.limit, num_workers=cfg.num_workers)
    log.info(
        "Fingerprint of %d training images in %.1f s", print_.read, time.perf_counter() - started
    )
    return datamodule, print_


def device_here() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def plan(cfg: DictConfig) -> dict[str, Any]:
    """Fingerprint `cfg.data`, decide, write the experiment file and plan.json."""
    budget = read_budget(cfg)
    target = experiment_target(cfg)
    datamodule, print_ = fingerprinted(cfg)
    device = device_here()
    decided = decide(print_, datamodule, cfg.data, cfg.model, budget, cfg.memory, device)
    data_option = HydraConfig.get().runtime.choices.data
    text = render(decided, print_, cfg, data_option)
    write_text(target, text)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "experiment": str(target),
        "budget": str(cfg.budget),
        "device": str(device),
        "fingerprint": print_.to_dict(),
        "plan": decided.to_dict(),
    }
    (output_dir / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    folder = target.parent.parent
    print(f"Written {target}; train it: seglab-train --config-dir {folder} experiment={cfg.name}")
    log.info("Plan: %s", target)
    return result


@command("plan")
def main(cfg: DictConfig) -> None:
    plan(cfg)


if __name__ == "__main__":
    main()
