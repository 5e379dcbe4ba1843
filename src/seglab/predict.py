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
import logging
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
        self, paths: Sequence[str], images: Sequence[np.ndarray], logits: torch.Tensor
    ) -> None:
        masks = class_indices(logits).to(torch.uint8).cpu().numpy()
        for path, image, mask in zip(paths, images, masks, strict=True):
            name = f"{Path(path).stem}.png"
            color = self.palette[mask]
            blend = (1 - self.alpha) * image.astype(np.float32) + self.alpha * color
            self.folder.write(f"masks/{name}", _save_png(mask))  # 2-D uint8 -> mode "L"
            self.folder.write(f"color/{name}", _save_png(color))
            self.folder.write(f"overlay/{name}", _save_png(np.rint(blend).astype(np.uint8)))

    def close(self) -> None:
        pass


class _ClassificationWriter:
    """Logits -> softmax; one CSV row per image with the top class and its probability."""

    SUBFOLDERS = ()
    CSV = "predictions.csv"

    def __init__(self, class_names: Sequence[str], folder: OutputFolder) -> None:
        self.class_names = [csv_cell(name) for name in class_names]
        # Rows are written as they come, so an interrupted run keeps what it predicted.
        self.file = folder.open_stream(self.CSV)
        self.csv = csv.writer(self.file)
        self.csv.writerow(["file", "class", "probability"])

    @classmethod
    def planned(cls, paths: Sequence[Path]) -> list[str]:
        return [cls.CSV]

    def __call__(
        self, paths: Sequence[str], images: Sequence[np.ndarray], logits: torch.Tensor
    ) -> None:
        top, labels = logits.softmax(dim=1).max(dim=1)
        for path, probability, label in zip(paths, top.tolist(), labels.tolist(), strict=True):
            self.csv.writerow([csv_cell(path), self.class_names[label], f"{probability:.6f}"])
        self.file.flush()

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
    # Refuses the input tree, foreign files and links before anything is written.
    folder.claim(str(cfg.input), kind.planned(paths), kind.SUBFOLDERS)
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

    def flush() -> None:
        nonlocal written
        images = [image for _, image in pending]
        batch = torch.stack([datamodule.to_input(image) for image in images]).to(device)
        writer([path for path, _ in pending], images, module.predict_logits(batch))
        written += len(pending)
        progress.update(len(pending))
        pending.clear()

    try:
        with (
            logging_redirect_tqdm(),  # log lines print above the bar instead of through it
            tqdm(total=len(paths), desc="predict", unit="img") as progress,
            torch.inference_mode(),
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

    summary = f"wrote {written} of {len(paths)} images to {output}; {len(failed)} failed"
    if failed:
        log.error("%s: %s", summary, _names(failed))
    else:
        log.info(summary)
    return {"total": len(paths), "written": written, "failed": failed, "output": str(output)}


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
