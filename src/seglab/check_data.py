"""Scan a dataset for problems before training on it.

    python -m seglab.check_data data=folder data.root=/data/roads \\
        data.class_names=[background,road,car] data.num_classes=3
    python -m seglab.check_data data=voc data.root=/data/voc num_workers=2
    make check-data ARGS="data=image_folder data.root=/data/photos"

Reads every sample of every split the way training reads it (without augmentation) and
prints: samples per split, images without masks and masks without images, unreadable or
truncated files, image/mask size mismatches, label values outside [0, num_classes) other
than ignore_index, non-image files, masks that are not PNG, empty class folders and other
layout problems (each naming the file or folder), the image sizes, per-class pixel
(segmentation) or image (classification) counts and frequencies, the class imbalance,
suggested class weights for the loss, the per-channel mean/std of the training images and
the memory each split's decoded cache (`data.cache`) would take. The same report goes to
outputs/check_data/runs/<time>/report.json. Exit status 1 when a problem was found.
"""

from __future__ import annotations

import glob
import inspect
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from seglab.cli import command
from seglab.data.base import SPLITS, SeglabDataModule
from seglab.data.cache import MEMORY_SHARE, available_memory, decoded_nbytes
from seglab.data.folder import FolderDataModule
from seglab.data.io import IMAGE_SUFFIXES
from seglab.data.labels import label_problem
from seglab.data.pairs import LOSSY_MASK_SUFFIXES, MASK_SUFFIX
from seglab.errors import SeglabError

log = logging.getLogger(__name__)


def _identity(item: Any) -> Any:
    return item


class SampleSummaries(Dataset):
    """Reads sample `i` of `dataset` (in a loader worker) and returns what the report
    needs: label counts, image statistics and size; or the error it raised."""

    def __init__(self, dataset: Dataset, split: str, datamodule: SeglabDataModule) -> None:
        self.dataset = dataset
        self.split = split
        self.task = datamodule.task
        self.num_classes = datamodule.num_classes
        self.ignore_index = datamodule.ignore_index
        self.mean = torch.tensor(datamodule.mean, dtype=torch.float64).view(3, 1, 1)
        self.std = torch.tensor(datamodule.std, dtype=torch.float64).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, target = self.dataset[index]
        except SeglabError as err:
            return {"error": str(err)}
        return self.summarise(index, image, target)

    def summarise(self, index: int, image: Any, target: Any) -> dict[str, Any]:
        """The summary of sample `index`, read as `(image, target)`."""
        image = torch.as_tensor(image)
        pixels = image.double()
        if image.is_floating_point():  # normalised: back to the 0-255 scale
            pixels = pixels * self.std + self.mean
        summary: dict[str, Any] = {
            "size": tuple(image.shape[-2:]),
            "channel_sum": pixels.sum(dim=(1, 2)).numpy(),
            "channel_sq_sum": (pixels**2).sum(dim=(1, 2)).numpy(),
            "pixels": image.shape[-2] * image.shape[-1],
        }
        if self.task == "segmentation":
            values, counts = torch.unique(torch.as_tensor(target), return_counts=True)
        else:
            values, counts = torch.tensor([int(target)]), torch.tensor([1])
        in_range = (values >= 0) & (values < self.num_classes)
        hist = np.zeros(self.num_classes, np.int64)
        hist[values[in_range].numpy()] = counts[in_range].numpy()
        summary["counts"] = hist
        if self.task == "segmentation":  # every 8-bit value, void included (labels.py)
            byte = (values >= 0) & (values < 256)
            values256 = np.zeros(256, np.int64)
            values256[values[byte].numpy()] = counts[byte].numpy()
            summary["values"] = values256
        bad = [int(v) for v in values[~in_range] if int(v) != self.ignore_index]
        if bad:
            summary["error"] = (
                f"{self.split} sample {index} has label values {bad} outside "
                f"[0, {self.num_classes}) that are not ignore_index={self.ignore_index}"
            )
        return summary


@dataclass
class SplitReport:
    """What one split's scan found."""

    samples: int = 0
    readable: int = 0
    counts: np.ndarray | None = None  # per class: pixels or images
    values: np.ndarray | None = None  # segmentation: pixels per 8-bit label value
    sizes: set[tuple[int, int]] = field(default_factory=set)
    channel_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))
    channel_sq_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))
    pixels: int = 0

    def add(self, summary: dict[str, Any]) -> None:
        self.readable += 1
        self.counts = summary["counts"] if self.counts is None else self.counts + summary["counts"]
        if "values" in summary:
            values = summary["values"]
            self.values = values if self.values is None else self.values + values
        self.sizes.add(summary["size"])
        self.channel_sum += summary["channel_sum"]
        self.channel_sq_sum += summary["channel_sq_sum"]
        self.pixels += summary["pixels"]

    def mean_std(self) -> tuple[list[float], list[float]] | None:
        if not self.pixels:
            return None
        mean = self.channel_sum / self.pixels
        std = np.sqrt(np.maximum(self.channel_sq_sum / self.pixels - mean**2, 0))
        return [round(float(v), 2) for v in mean], [round(float(v), 2) for v in std]


def class_weights(counts: np.ndarray) -> list[float]:
    """Median frequency balancing (Eigen & Fergus 2015): weight_c = median(f) / f_c over
    the classes that occur; 0 for classes that never occur (nothing to weigh)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return [0.0] * len(counts)
    freq = counts / counts.sum()
    median = float(np.median(freq[present]))
    return [round(median / f, 4) if f > 0 else 0.0 for f in freq]


# Mask formats that lose information: their decoded label values are not the saved ones.
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")


def stray_files(datamodule: SeglabDataModule) -> list[str]:
    """Files of a folder dataset (`FolderDataModule`) that training passes over without a
    word, each named with why: non-image files among the images or masks, and masks that
    are not PNG (a JPEG mask holds compression noise, not labels). Other datamodules
    have none to report here."""
    if not isinstance(datamodule, FolderDataModule):
        return []
    images, masks = datamodule.root / "images", datamodule.root / "masks"
    if (images / "train").is_dir():
        folders = [(images / s, masks / s) for s in SPLITS]
    else:
        folders = [(images, masks)]
    found = []
    listed = ", ".join(IMAGE_SUFFIXES)
    for image_dir, mask_dir in folders:
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                suffix = path.suffix.lower()
                if path.name.startswith(".") or not path.is_file() or suffix == MASK_SUFFIX:
                    continue
                if suffix not in IMAGE_SUFFIXES:
                    found.append(
                        f"{path} is not an image file; it is not used (images: {listed}, any case)"
                    )
                elif folder == mask_dir:
                    if suffix in LOSSY_MASK_SUFFIXES and (
                        datamodule.decoder.threshold is not None  # read by the threshold
                        or any(image_dir.glob(f"{glob.escape(path.stem)}.*"))  # told already
                    ):
                        continue
                    why = (
                        "lossy compression changes the label values"
                        if suffix in LOSSY_SUFFIXES
                        else "masks are read as PNG only"
                    )
                    found.append(
                        f"mask {path} is not a PNG: masks must be lossless PNG files ({why}); "
                        f"it is not used: save the labels as {path.stem}{MASK_SUFFIX}"
                    )
    return found


def scan(
    datamodule: SeglabDataModule, num_workers: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """Read every sample of every split of `datamodule` and report what is wrong.

    Args:
        num_workers: loader processes reading samples in parallel.
        limit: read at most this many samples per split (None: all).

    Returns:
        {"problems": [str, ...], "warnings": [...], "splits": {split: {...}},
         "class_names": [...], "task": ..., "class_weights": [...], "mean": ..., "std": ...}
    """
    datasets, problems = datamodule.check_splits()
    problems = list(problems)
    discovered = bool(problems)  # an empty split then has its reason listed already
    problems += stray_files(datamodule)
    warnings: list[str] = []
    reports: dict[str, SplitReport] = {}
    for split, dataset in datasets.items():
        summaries: Dataset = SampleSummaries(dataset, split, datamodule)
        if limit is not None and len(summaries) > limit:  # type: ignore[arg-type]
            summaries = torch.utils.data.Subset(summaries, range(limit))
        loader = DataLoader(
            summaries, batch_size=None, num_workers=num_workers, collate_fn=_identity
        )
        report = reports[split] = SplitReport(samples=len(summaries))  # type: ignore[arg-type]
        for summary in tqdm(loader, desc=f"checking {split}", unit="sample", leave=False):
            if "counts" in summary:
                report.add(summary)
            if "error" in summary:
                problems.append(summary["error"])
        if report.samples == 0 and not discovered:
            problems.append(
                f"the {split} split of {type(datamodule).__name__} has no samples; check "
                "the data config"
            )

    names = datamodule.class_names
    unit = "pixels" if datamodule.task == "segmentation" else "images"
    splits_out: dict[str, Any] = {}
    for split, report in reports.items():
        counts = report.counts if report.counts is not None else np.zeros(len(names), np.int64)
        total = int(counts.sum())
        heights = [h for h, _ in report.sizes]
        widths = [w for _, w in report.sizes]
        splits_out[split] = {
            "samples": report.samples,
            "readable": report.readable,
            unit: {name: int(c) for name, c in zip(names, counts, strict=True)},
            "frequency": {
                name: (float(c) / total if total else None)
                for name, c in zip(names, counts, strict=True)
            },
            "size_min": [min(heights), min(widths)] if report.sizes else None,
            "size_max": [max(heights), max(widths)] if report.sizes else None,
            # The decoded uint8 images (and masks) as `data.cache` holds them.
            "cache_bytes": decoded_nbytes(datamodule.task, report.readable, report.pixels),
        }
    result: dict[str, Any] = {
        "task": datamodule.task,
        "class_names": names,
        "unit": unit,
        "splits": splits_out,
        "problems": problems,
        "warnings": warnings,
        "cache_bytes": sum(info["cache_bytes"] for info in splits_out.values()),
        "available_memory": available_memory(),
    }
    train = reports.get("train")
    if train is not None and train.counts is not None:
        absent = [n for n, c in zip(names, train.counts, strict=True) if c == 0]
        if train.values is not None:  # the same line `setup` stops training with
            problem = label_problem(
                train.values,
                names,
                datamodule.ignore_index,
                f"the {train.readable} train masks",
                getattr(datamodule, "label_map", None),
            )
            if problem is not None:
                problems.insert(0, problem)
        elif absent:
            warnings.append(f"classes with no {unit} in the train split: {absent}")
        present = train.counts[train.counts > 0]
        result["imbalance"] = float(present.max() / present.min()) if len(present) else None
        result["class_weights"] = class_weights(train.counts)
        stats = train.mean_std()
        if stats is not None:
            result["mean"], result["std"] = stats
            # Only datamodules that take them get the statistics as overrides to paste.
            result["stats_are_config"] = "mean" in inspect.signature(type(datamodule)).parameters
    return result


# Problems that explain the others (nothing found at all): shown first.
_ROOT_CAUSES = (
    "does not exist",
    "found no image/mask pairs",
    "has no images/ and masks/",
    "has no train pairs",
    "has no val pairs",
    "has no samples",
)
_PATH = re.compile(r"(?:[A-Za-z]:)?[^\s,;()']*[/\\][^\s,;()']*")


def _kind(message: str) -> str:
    """What a problem says with its files and numbers left out: problems of one kind."""
    return re.sub(r"\d+", "#", _PATH.sub("<file>", message))


def group_problems(problems: list[str]) -> list[dict[str, Any]]:
    """Problems of one kind together (the same message but for its files and numbers),
    the root causes first, then in the order found.

    Returns:
        per kind: `line` (the one line to print: count, first message with its fix, up
        to three example files), `count` and `messages` (every problem of the kind).
    """
    groups: dict[str, list[str]] = {}
    for message in problems:
        groups.setdefault(_kind(message), []).append(message)
    ordered = sorted(
        groups.values(),
        key=lambda members: not any(cause in members[0] for cause in _ROOT_CAUSES),
    )
    out = []
    for members in ordered:
        line = members[0]
        if len(members) > 1:
            files = [m[0] for m in (_PATH.findall(message) for message in members[1:]) if m]
            shown = ", ".join(Path(f).name for f in files[:3])
            more = f"; also {shown}{', ...' if len(files) > 3 else ''}" if shown else ""
            line = f"{len(members)} x {members[0]}{more}"
        out.append({"line": line, "count": len(members), "messages": members})
    return out


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def format_report(result: dict[str, Any]) -> str:
    """The report as text: a per-class table over splits, then the findings."""
    names, unit = result["class_names"], result["unit"]
    splits = result["splits"]
    lines = [f"task: {result['task']}, {len(names)} classes"]
    for split, info in splits.items():
        size = (
            f"{info['size_min'][0]}x{info['size_min'][1]}"
            if info["size_min"] == info["size_max"] and info["size_min"]
            else f"{info['size_min']} to {info['size_max']} (HxW)"
            if info["size_min"]
            else "-"
        )
        lines.append(
            f"{split:<6} {info['samples']:>8} samples ({info['readable']} readable), "
            f"image size {size}, decoded cache {_mib(info['cache_bytes'])}"
        )
    width = max(10, *(len(n) for n in names))
    header = f"{'class':<{width}}" + "".join(f"{s + ' ' + unit:>24}" for s in splits)
    lines += ["", header]
    for name in names:
        cells = "".join(
            f"{info[unit][name]:>14} {_percent(info['frequency'][name]):>9}"
            for info in splits.values()
        )
        lines.append(f"{name:<{width}}{cells}")
    lines.append("")
    if result.get("imbalance") is not None:
        lines.append(f"class imbalance (train, most / least frequent): {result['imbalance']:.1f}")
    if result.get("class_weights"):
        weights = ",".join(f"{w:g}" for w in result["class_weights"])
        lines.append(f"suggested class weights (median frequency): loss.weight=[{weights}]")
    if result.get("mean"):
        mean = ",".join(f"{v:g}" for v in result["mean"])
        std = ",".join(f"{v:g}" for v in result["std"])
        if result.get("stats_are_config"):
            lines.append(f"train image mean/std (0-255): data.mean=[{mean}] data.std=[{std}]")
        else:
            lines.append(f"train image mean/std (0-255): [{mean}] / [{std}]")
    if "cache_bytes" in result:
        need, free = result["cache_bytes"], result["available_memory"]
        fits = "fits" if need <= MEMORY_SHARE * free else "does not fit"
        lines.append(
            f"decoded cache (data.cache=memory or disk): {_mib(need)} for these splits; "
            f"{fits} in a quarter of the {_mib(free)} available now (data.cache=auto)"
        )
    for warning in result["warnings"]:
        lines.append(f"warning: {warning}")
    problems = result["problems"]
    if problems:
        groups = group_problems(problems)
        kinds = f" of {len(groups)} kinds" if len(groups) < len(problems) else ""
        lines += ["", f"{len(problems)} problem(s){kinds}:"]
        lines += [f"  - {group['line']}" for group in groups]
        if result.get("problems_file"):
            lines.append(f"every problem, one per line: {result['problems_file']}")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def check_data(cfg: DictConfig) -> dict[str, Any]:
    """Scan `cfg.data`, print the report, write report.json; returns the report."""
    datamodule: SeglabDataModule = instantiate(cfg.data)
    datamodule.prepare_data()  # downloads, where the config asks for it (data.download)
    result = scan(datamodule, num_workers=cfg.num_workers, limit=cfg.get("limit"))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if result["problems"]:
        listing = output_dir / "problems.txt"
        listing.write_text("".join(f"{problem}\n" for problem in result["problems"]))
        result["problems_file"] = str(listing)
    print(format_report(result))
    (output_dir / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log.info("Report written to %s", output_dir / "report.json")
    return result


@command("check_data")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: exit status 1 when the scan found a problem."""
    if check_data(cfg)["problems"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
