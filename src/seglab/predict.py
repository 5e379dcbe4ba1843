"""Predict new images with a trained checkpoint.

    python -m seglab.predict ckpt_path=outputs/train/runs/<time>/checkpoints/last.ckpt \\
        input=photos/ output=predictions/
    python -m seglab.predict ckpt_path=... input='photos/**/*.jpg' output=out inference=slide
    python -m seglab.predict ckpt_path=... input=... output=... device=cpu num_workers=4

`input` is a folder (its .png, .jpg, .jpeg, .bmp, .tif, .tiff and .webp files, sorted, not
recursive) or a glob pattern. A segmentation checkpoint writes, for `photos/cat.jpg`:

    output/masks/cat.png     class index per pixel (8-bit grey), at the image's own size
    output/color/cat.png     the mask in the data's palette (RGB)
    output/overlay/cat.png   the image blended with the colour mask (`overlay_alpha`)

With `uncertainty=true` also `output/uncertainty/cat.png` (softmax entropy / log C, 255 =
uniform), with test-time augmentation `output/disagreement/cat.png` (share of augmented
views off the mask's class), and `output/uncertainty.csv` ranking every image by its mean
entropy; with `explain=<class>` also `output/explain/cat.png`, the class's Grad-CAM map
over the image (`seglab.explain`). Probabilities use the checkpoint's temperature
(`seglab.evaluate calibrate=true`); masks never depend on it.

A classification checkpoint writes `output/predictions.csv` (`file,class,probability`;
a cell starting with = + - @ is written with a leading ' so a spreadsheet shows it as text).
The output folder is never inside the input's folder tree, and one holding files no
earlier predict wrote is refused unless `overwrite=true` (seglab.output_folder); files are
moved into place, never written through a link.
An unreadable image is logged, skipped and listed at the end, and the command then exits
with status 1; every other image is still predicted.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from seglab.checkpoint import load_run
from seglab.cli import command
from seglab.data.io import IMAGE_SUFFIXES, UnreadableImage, read_rgb
from seglab.errors import SeglabError
from seglab.explain import class_activation_maps, overlay_heatmap, resolve_class
from seglab.inference import class_indices
from seglab.output_folder import OutputFolder

log = logging.getLogger(__name__)

# Failed files named in the one-line summaries; all of them are logged one by one anyway.
_MAX_NAMED = 10

# What the dataset yields per file: the decoded uint8 (H, W, 3) image, or why it failed.
Item = tuple[str, np.ndarray | str]


def find_images(pattern: str) -> list[Path]:
    """The image files a folder holds (not recursive) or a glob pattern matches, sorted.

    Raises:
        SeglabError: nothing with an image extension matches.
    """
    path = Path(pattern).expanduser()
    if path.is_dir():
        candidates = list(path.iterdir())
    else:
        # recursive=True lets "**" cross folders, as in the shell's globstar.
        candidates = [Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)]
    images = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        kind = "folder" if path.is_dir() else "path or glob pattern"
        raise SeglabError(
            f"input={pattern} ({kind}) matches no images; looked for files ending in "
            f"{', '.join(IMAGE_SUFFIXES)} (case-insensitive)"
        )
    return images


class ImageFiles(Dataset):
    """Decodes image files, one per item, never raising on a bad file.

    Args:
        paths: the image files.
        size: (height, width) to resize every image to (bilinear, antialiased, as in
            training), or None to keep each image's own size.

    Returns per item `(path, image)` with image uint8 (H, W, 3) RGB, or `(path, reason)`
    with the reason the file could not be decoded, so one bad file never ends a run.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int] | None = None) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        path = self.paths[index]
        try:
            image = read_rgb(path)
        except UnreadableImage as err:
            return str(path), str(err)
        if self.size is not None:
            # The resize image_folder applies when decoding (`ImageFolderDataModule.decode`).
            image = TF.resize(image, list(self.size), antialias=True)
        return str(path), image.permute(1, 2, 0).contiguous().numpy()


def _as_is(item: Item) -> Item:
    """DataLoader conversion that keeps numpy arrays as they are (module level: picklable
    for worker processes)."""
    return item


def resolve_device(name: str) -> torch.device:
    """The torch device `name` means: "auto" is cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SeglabError(f"device={name} is not a torch device (e.g. auto, cpu, cuda)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SeglabError(f"device={name} but CUDA is not available here; use device=auto or cpu")
    return device


def _check_unique_stems(paths: Sequence[Path]) -> None:
    """Refuse inputs that would overwrite each other's outputs (a.png and a.jpg, or the
    same name in two folders of a glob): outputs are named after the input's stem."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise SeglabError(
                f"inputs {seen[path.stem]} and {path} would both be written as "
                f"{path.stem}.png; rename one or predict them into separate outputs"
            )
        seen[path.stem] = path


def _names(failed: Sequence[dict[str, str]]) -> str:
    names = [entry["file"] for entry in failed[:_MAX_NAMED]]
    more = len(failed) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


# Characters a spreadsheet reads as the start of a formula (CSV injection): a cell
# starting with one is written with a leading apostrophe, which spreadsheets show as text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str) -> str:
    """`value` as a CSV cell a spreadsheet never runs as a formula."""
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def _save_png(array: np.ndarray) -> Any:
    # The format is given, not guessed from the name: "..png" has no extension to Pillow.
    return lambda file: Image.fromarray(array).save(file, format="PNG")


class _SegmentationWriter:
    """Logits -> argmax mask, written as class-index, colour and overlay PNGs."""

    SUBFOLDERS = ("masks", "color", "overlay")

    def __init__(
        self, palette: Sequence[tuple[int, int, int]], folder: OutputFolder, overlay_alpha: float
    ) -> None:
        self.palette = np.asarray(palette, dtype=np.uint8)  # (C, 3)
        self.alpha = overlay_alpha
        self.folder = folder

    @classmethod
    def planned(cls, paths: Sequence[Path]) -> list[str]:
        return [f"{kind}/{path.stem}.png" for path in paths for kind in cls.SUBFOLDERS]

    def __call__(
        self,
        paths: Sequence[str],
        images: Sequence[np.ndarray],
        logits: torch.Tensor,
        maps: dict[str, Sequence[np.ndarray]] | None = None,
    ) -> None:
        masks = class_indices(logits).to(torch.uint8).cpu().numpy()
        for i, (path, image, mask) in enumerate(zip(paths, images, masks, strict=True)):
            name = f"{Path(path).stem}.png"
            color = self.palette[mask]
            blend = (1 - self.alpha) * image.astype(np.float32) + self.alpha * color
            self.folder.write(f"masks/{name}", _save_png(mask))  # 2-D uint8 -> mode "L"
            self.folder.write(f"color/{name}", _save_png(color))
            self.folder.write(f"overlay/{name}", _save_png(np.rint(blend).astype(np.uint8)))
            for kind, arrays in (maps or {}).items():
                self.folder.write(f"{kind}/{name}", _save_png(arrays[i]))

    def close(self) -> None:
        pass


class _ClassificationWriter:
    """Logits -> softmax; one CSV row per image with the top class and its probability."""

    SUBFOLDERS = ()
    CSV = "predictions.csv"

    def __init__(self, class_names: Sequence[str], folder: OutputFolder) -> None:
        self.class_names = [csv_cell(name) for name in class_names]
        self.folder = folder
        # Rows are written as they come, so an interrupted run keeps what it predicted.
        self.file = folder.open_stream(self.CSV)
        self.csv = csv.writer(self.file)
        self.csv.writerow(["file", "class", "probability"])

    @classmethod
    def planned(cls, paths: Sequence[Path]) -> list[str]:
        return [cls.CSV]

    def __call__(
        self,
        paths: Sequence[str],
        images: Sequence[np.ndarray],
        probabilities: torch.Tensor,
        maps: dict[str, Sequence[np.ndarray]] | None = None,
    ) -> None:
        top, labels = probabilities.max(dim=1)
        for path, probability, label in zip(paths, top.tolist(), labels.tolist(), strict=True):
            self.csv.writerow([csv_cell(path), self.class_names[label], f"{probability:.6f}"])
        self.file.flush()
        for kind, arrays in (maps or {}).items():
            for path, array in zip(paths, arrays, strict=True):
                self.folder.write(f"{kind}/{Path(path).stem}.png", _save_png(array))

    def close(self) -> None:
        self.file.close()


def _check_options(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg) & {"ckpt_path", "input", "output"})
    if missing:
        raise SeglabError(
            f"missing {', '.join(missing)}: python -m seglab.predict ckpt_path=CKPT "
            "input=FOLDER_OR_GLOB output=FOLDER"
        )
    if int(cfg.batch_size) < 1:
        raise SeglabError(f"batch_size must be at least 1; got {cfg.batch_size}")
    if int(cfg.num_workers) < 0:
        raise SeglabError(f"num_workers must be 0 or more; got {cfg.num_workers}")
    if not 0.0 <= float(cfg.overlay_alpha) <= 1.0:
        raise SeglabError(f"overlay_alpha must be in [0, 1]; got {cfg.overlay_alpha}")


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image `cfg.input` names with the checkpoint `cfg.ckpt_path` and write
    the results into `cfg.output` (see the module docstring for the files).

    Returns:
        `total` (images found), `written` (images predicted and written), `failed` (one
        `{"file", "reason"}` per unreadable image, in input order) and `output`.

    Raises:
        SeglabError: a missing option, no checkpoint, or an input matching no images.
    """
    _check_options(cfg)
    paths = find_images(str(cfg.input))
    output = Path(str(cfg.output)).expanduser()
    folder = OutputFolder(output, overwrite=bool(cfg.overwrite))
    device = resolve_device(str(cfg.device))
    run = load_run(cfg.ckpt_path)
    module, datamodule = run.module.to(device), run.datamodule

    if run.task == "segmentation":
        if module.num_classes > 256:
            raise SeglabError(
                f"the checkpoint has {module.num_classes} classes; 8-bit masks hold at most 256"
            )
        _check_unique_stems(paths)
        # Whole image padded to size_divisor, or sliding window: logits at the image's size.
        module.inference = instantiate(cfg.inference)
        kind: type[_SegmentationWriter] | type[_ClassificationWriter] = _SegmentationWriter
        size = None  # segmentation predicts every pixel of the image as it is
    else:
        kind = _ClassificationWriter
        size = datamodule.input_size  # the classifier's dense layer fixes its input size
    uncertainty = bool(cfg.get("uncertainty", False))
    explain = cfg.get("explain")
    explaining = explain is not None
    target = None  # explain=predicted: each image's predicted class (classifiers)
    if explaining and str(explain) != "predicted":
        target = resolve_class(str(explain), run.class_names)
    elif explaining and run.task == "segmentation":
        raise SeglabError(
            "explain=predicted is for classifiers; a segmentation map explains one class: "
            f"explain=<one of {', '.join(run.class_names)}>"
        )
    tta = run.task == "segmentation" and uncertainty and _augments(module.inference)
    maps = [
        kind_
        for kind_, wanted in (
            ("uncertainty", uncertainty and run.task == "segmentation"),
            ("disagreement", tta),
            ("explain", explain is not None),
        )
        if wanted
    ]
    if maps and run.task != "segmentation":
        _check_unique_stems(paths)
    planned = kind.planned(paths) + [f"{m}/{p.stem}.png" for p in paths for m in maps]
    if uncertainty:
        planned.append(UNCERTAINTY_CSV)
    # Refuses the input tree, foreign files and links before anything is written.
    folder.claim(str(cfg.input), planned, (*kind.SUBFOLDERS, *maps))
    if kind is _SegmentationWriter:
        writer: _SegmentationWriter | _ClassificationWriter = _SegmentationWriter(
            datamodule.palette, folder, float(cfg.overlay_alpha)
        )
    else:
        writer = _ClassificationWriter(run.class_names, folder)

    loader = DataLoader(
        ImageFiles(paths, size),
        batch_size=None,  # one decoded file per item; batches are grouped by size below
        collate_fn=_as_is,
        num_workers=int(cfg.num_workers),
    )
    log.info("Predicting %d images (%s, %s) into %s", len(paths), run.task, device, output)
    failed: list[dict[str, str]] = []
    written = 0
    pending: list[tuple[str, np.ndarray]] = []
    batch_size = int(cfg.batch_size)

    ranking: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal written
        names = [path for path, _ in pending]
        images = [image for _, image in pending]
        batch = torch.stack([datamodule.to_input(image) for image in images]).to(device)
        views: list[torch.Tensor] = []
        if tta:
            logits, views = module.inference.logits_and_views(module.net, module.formatted(batch))
        else:
            logits = module.predict_logits(batch)
        probabilities = module.probabilities(logits)
        extra: dict[str, list[np.ndarray]] = {}
        if uncertainty:
            entropy = normalized_entropy(probabilities)
            disagreeing = disagreement(views, logits) if views else None
            for i, name in enumerate(names):
                ranking.append(
                    {
                        "file": csv_cell(name),
                        "entropy": round(float(entropy[i].mean()), 6),
                        "disagreement": ""
                        if disagreeing is None
                        else round(float(disagreeing[i].mean()), 6),
                    }
                )
            if run.task == "segmentation":
                extra["uncertainty"] = _grey(entropy)
                if disagreeing is not None:
                    extra["disagreement"] = _grey(disagreeing)
        if explaining:
            with torch.enable_grad():
                cams = class_activation_maps(module, batch, target, run.task)
            extra["explain"] = [
                overlay_heatmap(image, cam)
                for image, cam in zip(images, cams.cpu().numpy(), strict=True)
            ]
        writer(names, images, logits if run.task == "segmentation" else probabilities, extra)
        written += len(pending)
        progress.update(len(pending))
        pending.clear()

    try:
        with (
            logging_redirect_tqdm(),  # log lines print above the bar instead of through it
            tqdm(total=len(paths), desc="predict", unit="img") as progress,
            # Grad-CAM needs gradients: tensors made under inference mode cannot have them.
            torch.no_grad() if explaining else torch.inference_mode(),
        ):
            for path, item in loader:
                if isinstance(item, str):
                    log.error("Skipping %s: cannot read it (%s)", path, item)
                    failed.append({"file": path, "reason": item})
                    progress.update(1)
                    continue
                # Only same-size images stack into one tensor; the order stays the input's.
                if pending and (len(pending) == batch_size or pending[0][1].shape != item.shape):
                    flush()
                pending.append((path, item))
            if pending:
                flush()
    finally:
        writer.close()
        if uncertainty and ranking:
            _write_ranking(folder, ranking)

    summary = f"wrote {written} of {len(paths)} images to {output}; {len(failed)} failed"
    if failed:
        log.error("%s: %s", summary, _names(failed))
    else:
        log.info(summary)
    return {"total": len(paths), "written": written, "failed": failed, "output": str(output)}


UNCERTAINTY_CSV = "uncertainty.csv"


def normalized_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy of the class distribution over dim 1 divided by log(C): 0 certain, 1 the
    uniform distribution. (N, C, ...) -> (N, ...)."""
    return torch.special.entr(probabilities.float()).sum(dim=1) / math.log(probabilities.shape[1])


def disagreement(views: Sequence[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Share of the test-time-augmented views whose class differs from the averaged
    prediction's, per pixel: (N, H, W) in [0, 1]."""
    final = class_indices(logits)
    differing = sum((class_indices(view) != final).float() for view in views)
    return differing / len(views)


def _augments(inference: Any) -> bool:
    return bool(getattr(inference, "flip", False)) or len(getattr(inference, "scales", ())) > 1


def _grey(values: torch.Tensor) -> list[np.ndarray]:
    """[0, 1] maps -> 8-bit grey images (255 = 1)."""
    return list(torch.round(values.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy())


def _write_ranking(folder: OutputFolder, rows: list[dict[str, Any]]) -> None:
    """uncertainty.csv: most uncertain first, what to label next."""
    ordered = sorted(rows, key=lambda r: -r["entropy"])

    def save(file: Any) -> None:
        text = io.TextIOWrapper(file, newline="")
        writer = csv.DictWriter(text, fieldnames=["rank", "file", "entropy", "disagreement"])
        writer.writeheader()
        writer.writerows({"rank": i + 1, **row} for i, row in enumerate(ordered))
        text.flush()
        text.detach()

    folder.write(UNCERTAINTY_CSV, save)


@command("predict")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: exits with status 1 and one line on any failure."""
    result = predict(cfg)
    if result["failed"]:
        raise SeglabError(
            f"{len(result['failed'])} of {result['total']} images could not be read: "
            f"{_names(result['failed'])} (the others were written)"
        )


if __name__ == "__main__":
    main()
