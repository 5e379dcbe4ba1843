"""A segmentation dataset's fingerprint: what `seglab.plan` derives a pipeline from.

Read from the training split as training reads it, without augmentation (the datamodule's
`check_splits()`, as `seglab.check_data` reads it), at most `limit` evenly spaced samples:

- image sizes (height, width) and aspect ratios, channels, the dataset's size per split;
- per class: the share of labelled pixels, the share of images it appears in, and its
  objects (8-connected components of its pixels, `scipy.ndimage`): their count, area and
  extent (the longer side of each one's bounding box);
- the share of ignore_index pixels, and the per-channel mean/std (0-255).

Classification datasets get sizes, class shares and statistics only (no objects).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from seglab.check_data import SampleSummaries
from seglab.data.base import SeglabDataModule
from seglab.errors import SeglabError

try:  # the `plan` extra
    from scipy import ndimage
except ImportError:  # pragma: no cover - reported when a fingerprint needs it
    ndimage = None


def _quantiles(values: list[float]) -> dict[str, float] | None:
    """Median, 10th and 90th percentile of `values` (None when there are none)."""
    if not values:
        return None
    q10, q50, q90 = np.percentile(np.asarray(values, np.float64), [10, 50, 90])
    return {
        "p10": round(float(q10), 1),
        "median": round(float(q50), 1),
        "p90": round(float(q90), 1),
    }


@dataclass
class ClassPrint:
    """One class of the training split."""

    name: str
    pixel_share: float = 0.0  # of the labelled (not ignored) pixels; images for classifiers
    image_share: float = 0.0  # of the images holding at least one pixel of it
    objects: int = 0
    object_area: dict[str, float] | None = None  # pixels: p10, median, p90
    object_extent: dict[str, float] | None = None  # pixels, bounding box's longer side


@dataclass
class Fingerprint:
    """What `fingerprint` found; `asdict` gives it as JSON values."""

    task: str
    dataset: str
    samples: dict[str, int]  # per split
    read: int  # training samples read for the figures below
    seconds_per_sample: float  # reading one as stored, in this process
    channels: int
    height: dict[str, float]
    width: dict[str, float]
    aspect: dict[str, float]  # width / height
    max_size: list[int]  # the largest (height, width) read
    ignore_share: float
    mean: list[float]
    std: list[float]
    classes: list[ClassPrint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Summaries(SampleSummaries):
    """The checker's summary of sample `i` (size, channel sums, per-class counts, every
    8-bit label value), read in a loader worker, with its channels, the seconds the read
    and summary took and, for segmentation, each class's objects: (area, extent) pairs."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        started = time.perf_counter()
        summary = super().__getitem__(index)
        summary["seconds"] = time.perf_counter() - started
        return summary

    def summarise(self, index: int, image: Any, target: Any) -> dict[str, Any]:
        summary = super().summarise(index, image, target)
        summary["channels"] = int(torch.as_tensor(image).shape[0])
        summary["objects"] = {}
        if self.task != "segmentation":
            return summary
        mask = torch.as_tensor(target).numpy()
        for value in np.flatnonzero(summary["counts"]).tolist():
            labels, found = ndimage.label(mask == value, structure=np.ones((3, 3), bool))
            areas = np.bincount(labels.ravel(), minlength=found + 1)[1:]
            boxes = ndimage.find_objects(labels)
            extents = [max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes]
            summary["objects"][value] = list(zip(areas.tolist(), extents, strict=True))
        return summary


def _identity(item: Any) -> Any:
    return item


def fingerprint(
    datamodule: SeglabDataModule, limit: int | None = 1000, num_workers: int = 0
) -> Fingerprint:
    """The fingerprint of `datamodule`'s training split (at most `limit` evenly spaced
    samples; None: all), read by `num_workers` loader processes.

    Raises:
        SeglabError: the split is empty or unreadable, or scipy (the `plan` extra) is
            missing for a segmentation dataset.
    """
    if datamodule.task == "segmentation" and ndimage is None:
        raise SeglabError(
            "the dataset fingerprint needs scipy (connected components): pip install 'seglab[plan]'"
        )
    datasets, problems = datamodule.check_splits()
    train = datasets.get("train")
    if train is None or len(train) == 0:  # type: ignore[arg-type]
        why = f": {problems[0]}" if problems else ""
        raise SeglabError(f"{type(datamodule).__name__} has no training samples to plan from{why}")
    samples = {split: len(d) for split, d in datasets.items()}  # type: ignore[arg-type]
    count = samples["train"]
    chosen: Dataset = train
    if limit is not None and count > limit:
        chosen = Subset(train, np.linspace(0, count - 1, limit).round().astype(int).tolist())
    loader = DataLoader(
        _Summaries(chosen, "train", datamodule), batch_size=None, num_workers=num_workers,
        collate_fn=_identity,
    )  # fmt: skip
    names = list(datamodule.class_names)
    counts = np.zeros(len(names), np.int64)
    present = np.zeros(len(names), np.int64)
    objects: list[list[tuple[int, int]]] = [[] for _ in names]
    sizes, seconds, ignored, channels = [], 0.0, 0, 3
    total, sums, sq_sums = 0, np.zeros(3), np.zeros(3)
    for summary in tqdm(loader, desc="fingerprinting train", unit="sample", leave=False):
        if "error" in summary:  # unreadable, or label values out of range
            raise SeglabError(
                f"{summary['error']} (seglab-check-data lists every problem of the dataset)"
            )
        sizes.append(summary["size"])
        seconds += summary["seconds"]
        channels = summary["channels"]
        counts += summary["counts"]
        present += summary["counts"] > 0
        if "values" in summary and 0 <= datamodule.ignore_index < 256:
            ignored += int(summary["values"][datamodule.ignore_index])
        for value, found in summary["objects"].items():
            objects[value] += found
        total += summary["pixels"]
        sums += summary["channel_sum"]
        sq_sums += summary["channel_sq_sum"]
    read = len(sizes)
    shape = np.asarray(sizes, np.float64)
    mean = sums / total
    std = np.sqrt(np.maximum(sq_sums / total - mean**2, 0))
    labelled = int(counts.sum())
    classes = []
    for c, name in enumerate(names):
        found = objects[c]
        classes.append(
            ClassPrint(
                name=name,
                pixel_share=round(float(counts[c]) / labelled, 6) if labelled else 0.0,
                image_share=round(float(present[c]) / read, 4),
                objects=len(found),
                object_area=_quantiles([a for a, _ in found]),
                object_extent=_quantiles([e for _, e in found]),
            )
        )
    pixels = labelled + ignored
    return Fingerprint(
        task=datamodule.task,
        dataset=type(datamodule).__name__,
        samples=samples,
        read=read,
        seconds_per_sample=round(seconds / read, 6),
        channels=channels,
        height=_quantiles(shape[:, 0].tolist()),
        width=_quantiles(shape[:, 1].tolist()),
        aspect=_quantiles((shape[:, 1] / shape[:, 0]).tolist()),
        max_size=[int(shape[:, 0].max()), int(shape[:, 1].max())],
        ignore_share=round(ignored / pixels, 6) if datamodule.task == "segmentation" else 0.0,
        mean=[round(float(v), 2) for v in mean],
        std=[round(float(v), 2) for v in std],
        classes=classes,
    )
