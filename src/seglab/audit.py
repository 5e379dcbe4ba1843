"""A label audit: which training images (and which of their pixels) are most likely
labelled wrong, from out-of-fold predictions ranked by cleanlab.segmentation.

    seglab-audit data=folder data.root=/data/roads data.class_names=[bg,road] \\
        data.num_classes=2 folds=3 run_name=roads
    seglab-audit experiment=shapes_fcn folds=5 top=50 trainer.max_epochs=10

The steps, each in `outputs/audit/runs/<run_name or time>/`:
1. folds: `folds` ordinary training runs of the pooled train and val images
   (`data.folds`, `data.fold`; every training key or group on the command line passes
   through), in `folds/fold_<k>/`, validated on their held-out fold. A rerun with the
   same `run_name` reuses the finished fold runs (checkpoint and metrics.json there) and
   resumes an interrupted one from its last.ckpt.
2. out-of-fold probabilities: fold k's best checkpoint (`seglab.checkpoint.load_run`)
   predicts each image it held out (`predict_logits`, softmax), so every pooled image is
   scored by a model that never trained on it. Stored in `oof/fold_<k>.npz` (see
   "Storage"); an existing file of the same checkpoint and `oof_size` is reused.
3. ranking: `cleanlab.segmentation.rank.get_label_quality_scores` (softmin of each
   pixel's probability of its given label) scores each image, lowest first;
   `cleanlab.segmentation.filter.find_label_issues` (confident learning, per-class
   thresholds over the whole set) flags the pixels whose given label the out-of-fold
   model confidently contradicts: their share is each image's suspect pixel share.
4. outputs: `label_issues.csv` (one row per pooled image: rank, image, label quality,
   suspect pixel share, fold; worst first), `suspects.npz` (the top images' pixel scores
   and flagged pixels), `audit.json` (settings, counts, paths, fold scores) and
   `report.html` (the `top` suspects: image | given mask | out-of-fold prediction |
   label-issue heat map, 1 - the probability of the given label).

Storage (`seglab.oof`): per image, uint8 probabilities at most `oof_size` pixels on the
long side, its mask and a thumbnail, deflated in one .npz per fold. Ranking reads them
back into one uint8 memory-mapped array (N, classes, H, W) on the most common stored
grid (other sizes resized to it), deleted afterwards; cleanlab dequantises it batch by
batch. cleanlab's `find_label_issues` keeps one Python float per pixel (a list of numpy
scalars, about 40 bytes each): 3,000 images at 128 x 128 take about 2 GB, at
oof_size=64 a quarter of that.

Pixels at `ignore_index` are given the out-of-fold prediction as their label, so they
never count as issues (cleanlab knows no void label).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from seglab import rundir
from seglab.cli import command
from seglab.config import compose
from seglab.errors import SeglabError
from seglab.oof import (
    AUDIT_JSON,
    ISSUES_CSV,
    OOF_DIR,
    SUSPECTS,
    FoldWriter,
    dequantise,
    downsample,
    grid_size,
    quantise,
    read_index,
    write_csv,
)

log = logging.getLogger(__name__)

# Keys of conf/audit.yaml that are the audit's own: not passed on to the fold runs
# (run_name and ckpt_path name the audit's directory; fold runs always resume).
AUDIT_KEYS = frozenset(
    {"folds", "top", "oof_size", "temperature", "pixel_batch", "run_name", "ckpt_path", "task_name"}
)


def require_cleanlab() -> None:
    """Raises SeglabError with the install line when cleanlab is missing."""
    try:
        import cleanlab.segmentation.filter  # noqa: F401, PLC0415
        import cleanlab.segmentation.rank  # noqa: F401, PLC0415
    except ImportError as err:
        raise SeglabError(
            f"seglab-audit ranks with cleanlab, which is not installed ({err}); install it: "
            "pip install 'seglab[audit]'"
        ) from None


# --- The fold runs --------------------------------------------------------------------


def fold_overrides(task: Sequence[str], folds: int, fold: int) -> list[str]:
    """The training overrides of fold `fold`: the command line's (`task`), less the
    audit's own keys and Hydra's, then the fold and what a fold run needs."""
    passed = []
    for override in task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in AUDIT_KEYS or key.startswith("hydra.") or key == "hydra":
            continue
        passed.append(override)
    return [
        *passed,
        f"data.folds={folds}",
        f"data.fold={fold}",
        "test=false",
        "report=false",
        "ckpt_path=auto",
    ]


def _finished(run: Path) -> tuple[Path, dict[str, Any]] | None:
    """(best checkpoint, metrics) of a finished training run in `run`, else None."""
    record = rundir.read_record(run, strict=False)
    metrics = rundir.read_metrics(run, strict=False)
    if not record or record.get("status") != "finished" or metrics is None:
        return None
    best = rundir.best_checkpoint(run, metrics.get("best_model_path"))
    return None if best is None else (best, metrics)


def train_fold(overrides: list[str], run: Path) -> tuple[Path, dict[str, Any], bool]:
    """Train (or reuse) one fold run: (best checkpoint, metrics.json, reused)."""
    done = _finished(run)
    if done is not None:
        log.info("Reusing the finished fold run %s", run)
        return done[0], done[1], True
    from seglab.train import train  # noqa: PLC0415 - Lightning's import, when it trains

    train(compose(overrides, output_dir=run))
    done = _finished(run)
    if done is None:
        raise SeglabError(f"the fold run {run} ended without a checkpoint; see its train.log")
    return done[0], done[1], False


def _held_out_names(datamodule: Any, count: int, fold: int) -> list[str]:
    """The held-out images' names: their paths relative to data.root for file datasets,
    "train/<i>" or "val/<i>" for generated ones (`split_files`), else `fold<k>/<i>`."""
    names = getattr(datamodule, "split_files", None)
    listed = names().get("val") if callable(names) else None
    if listed is not None and len(listed) == count:
        return list(listed)
    return [f"fold{fold}/{i}" for i in range(count)]


def _batches(dataset: Any, batch_size: int) -> Iterator[list[tuple[int, torch.Tensor, Any]]]:
    """(index, image, mask) of consecutive samples, batched while they share a size."""
    batch: list[tuple[int, torch.Tensor, Any]] = []
    for i in range(len(dataset)):
        image, mask = dataset[i][:2]
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((i, image, mask))
    if batch:
        yield batch


def collect_fold(
    checkpoint: Path, fold: int, path: Path, oof_size: int, device: torch.device
) -> dict[str, Any]:
    """Predict fold `fold`'s held-out images with `checkpoint` and store them at `path`
    (`FoldWriter`); returns the fold's index. Reused when `path` holds this checkpoint's
    probabilities at this `oof_size`."""
    from tqdm import tqdm  # noqa: PLC0415

    from seglab.checkpoint import load_run  # noqa: PLC0415
    from seglab.data.base import from_input  # noqa: PLC0415

    previous = read_index(path)
    if previous and previous["checkpoint"] == str(checkpoint) and previous["oof_size"] == oof_size:
        log.info("Reusing the out-of-fold probabilities %s", path)
        return previous
    run = load_run(checkpoint, map_location=device)
    module = run.module.to(device)
    datamodule = run.datamodule
    datamodule.setup("validate")
    dataset = datamodule.val_set
    names = _held_out_names(datamodule, len(dataset), fold)
    mean, std = datamodule.mean, datamodule.std
    entries: list[dict[str, Any]] = []
    writer = FoldWriter(path)
    try:
        bar = tqdm(total=len(dataset), desc=f"out-of-fold probabilities, fold {fold}", unit="img")
        for batch in _batches(dataset, int(run.cfg.data.get("batch_size", 8))):
            images = torch.stack([image for _, image, _ in batch]).to(device)
            with torch.inference_mode():
                probs = module.predict_logits(images).float().softmax(dim=1)
            for (i, image, mask), p in zip(batch, probs, strict=True):
                height, width = mask.shape[-2:]
                size = grid_size(height, width, oof_size)
                raw = torch.from_numpy(from_input(image, mean, std)).permute(2, 0, 1)
                q, m, thumb = downsample(p, mask, raw, size)
                writer.add(len(entries), q, m, thumb)
                entries.append(
                    {"name": names[i], "fold": fold, "height": int(height), "width": int(width),
                     "stored": list(size)}
                )  # fmt: skip
            bar.update(len(batch))
        bar.close()
        index = {"checkpoint": str(checkpoint), "oof_size": oof_size, "entries": entries}
        writer.close(index)
    except BaseException:
        writer.abort()
        raise
    return index


# --- Ranking ----------------------------------------------------------------------------


class Dequantised:
    """A uint8 (N, K, H, W) array seen as float32 probabilities: cleanlab slices it batch
    by batch, and each slice is dequantised when read."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape = values.shape
        self.ndim = values.ndim

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, key: Any) -> np.ndarray:
        return dequantise(self.values[key])


def _on_grid(q: np.ndarray, mask: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """A stored record resized to the ranking grid (for data of several sizes)."""
    if q.shape[-2:] == grid:
        return q, mask
    probs = F.interpolate(torch.from_numpy(dequantise(q))[None], size=grid, mode="bilinear")[0]
    probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-6)
    labels = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=grid, mode="nearest")
    return quantise(probs.numpy()), labels[0, 0].numpy().astype(np.uint8)


def stack(
    oof: list[Path], entries: list[dict[str, Any]], num_classes: int, ignore_index: int, work: Path
) -> tuple[np.ndarray, np.ndarray]:
    """All stored records on one grid (the most common stored size): uint8 probabilities
    (N, K, H, W) memory-mapped at `work`, labels uint8 (N, H, W) with `ignore_index`
    pixels given the predicted class."""
    grid = Counter(tuple(e["stored"]) for e in entries).most_common(1)[0][0]
    probs = np.lib.format.open_memmap(
        work, mode="w+", dtype=np.uint8, shape=(len(entries), num_classes, *grid)
    )
    labels = np.empty((len(entries), *grid), np.uint8)
    row = 0
    for path in oof:
        with np.load(path, allow_pickle=False) as stored:
            for i in range(len(json.loads(stored["index"].item())["entries"])):
                q, mask = _on_grid(stored[f"probs_{i}"], stored[f"mask_{i}"], grid)
                void = mask >= num_classes  # ignore_index, or a value no class has
                if void.any():
                    mask = np.where(void, q.argmax(0), mask).astype(np.uint8)
                probs[row], labels[row] = q, mask
                row += 1
    probs.flush()
    return probs, labels


def rank(
    probs: np.ndarray, labels: np.ndarray, temperature: float, pixel_batch: int, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab.segmentation on uint8 probabilities (N, K, H, W) and labels (N, H, W).

    Returns:
        image label quality (N,) from `get_label_quality_scores` (softmin, lower is
        worse; computed `chunk` images at a time: an image's score depends on its own
        pixels only), the pixel issues (N, H, W) bool of `find_label_issues`, and their
        share per image (N,).
    """
    from cleanlab.segmentation.filter import find_label_issues  # noqa: PLC0415
    from cleanlab.segmentation.rank import get_label_quality_scores  # noqa: PLC0415

    view = Dequantised(probs)
    scores = np.empty(len(labels))
    for start in range(0, len(labels), chunk):
        part = slice(start, start + chunk)
        scores[part], _ = get_label_quality_scores(
            labels[part], view[part], method="softmin", temperature=temperature, verbose=False
        )
    issues = find_label_issues(labels, view, batch_size=pixel_batch, n_jobs=1, verbose=False)
    return scores, issues, issues.mean(axis=(1, 2))


def pixel_scores(probs: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """cleanlab's per-pixel label quality (N, H, W) of a few images: the out-of-fold
    probability of each pixel's given label."""
    from cleanlab.segmentation.rank import get_label_quality_scores  # noqa: PLC0415

    _, pixels = get_label_quality_scores(
        labels, dequantise(probs), method="softmin", temperature=temperature, verbose=False
    )
    return pixels


def order(scores: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Image indices worst first: lowest label quality, then the larger suspect share."""
    return np.lexsort((-shares, scores))


# --- The command ------------------------------------------------------------------------


def check_settings(cfg: DictConfig) -> Any:
    """Refuse what the audit cannot do before anything trains; returns the datamodule
    the config builds (no data is read)."""
    folds = cfg.get("folds")
    if not isinstance(folds, int) or folds < 2:
        raise SeglabError(
            f"folds={folds}: the audit needs a cross-validation of at least 2 folds (each image "
            "scored by a model that did not train on it), e.g. folds=3"
        )
    if int(cfg.top) < 1 or int(cfg.oof_size) < 8:
        raise SeglabError(
            f"top={cfg.top} and oof_size={cfg.oof_size}: show at least 1 image (top=20) and "
            "store at least 8 pixels per side (oof_size=128)"
        )
    if cfg.data.get("folds") is not None:
        raise SeglabError(
            f"data.folds={cfg.data.folds} is set; the audit sets each fold run's data.folds "
            "itself: give folds=K instead"
        )
    require_cleanlab()
    datamodule = instantiate(cfg.data)
    if getattr(datamodule, "task", None) != "segmentation":
        raise SeglabError(
            f"data={type(datamodule).__name__} is {getattr(datamodule, 'task', '?')} data; "
            "seglab-audit audits segmentation masks (choose a segmentation data option, "
            "e.g. data=folder)"
        )
    return datamodule


def _task_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra run: a config composed by hand carries no overrides
        return []


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Fold runs, out-of-fold probabilities, ranking, outputs (module docstring);
    returns audit.json's content."""
    started = time.monotonic()
    datamodule = check_settings(cfg)
    task = _task_overrides()  # before compose() replaces Hydra's config
    run_dir = Path(cfg.paths.output_dir)
    folds, oof_size = int(cfg.folds), int(cfg.oof_size)
    previous = rundir.read_json(run_dir / AUDIT_JSON, strict=True) or {}
    overrides = [fold_overrides(task, folds, k) for k in range(folds)]
    if previous and previous.get("fold_overrides") != overrides:
        raise SeglabError(
            f"{run_dir} holds an audit with other training settings "
            f"({previous.get('fold_overrides', [[]])[0]}); give the same ones, or another run_name"
        )
    state: dict[str, Any] = {
        "status": "running",
        "settings": {"folds": folds, "oof_size": oof_size, "top": int(cfg.top),
                     "temperature": float(cfg.temperature), "method": "softmin",
                     "pixel_batch": int(cfg.pixel_batch)},
        "fold_overrides": overrides,
        "class_names": list(datamodule.class_names),
        "palette": [list(c) for c in datamodule.palette],
        "ignore_index": int(datamodule.ignore_index),
        "optimized_metric": str(cfg.optimized_metric),
    }  # fmt: skip
    rundir.write_json(run_dir / AUDIT_JSON, state)
    try:
        oof = _folds(cfg, run_dir, overrides, state)
        state["train_s"] = round(time.monotonic() - started, 1)
        return write_outputs(run_dir, state, oof, started)
    except BaseException as err:
        stopped = isinstance(err, KeyboardInterrupt) or getattr(err, "exit_code", 1) > 128
        state["status"] = "stopped" if stopped else "failed"
        state["error"] = str(err)[:500]
        rundir.write_json(run_dir / AUDIT_JSON, state)
        raise


def _folds(
    cfg: DictConfig, run_dir: Path, overrides: list[list[str]], state: dict[str, Any]
) -> list[Path]:
    """Train (or reuse) each fold run and store its out-of-fold probabilities; the
    fold files, in fold order."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state["folds"], oof = [], []
    for k, fold in enumerate(overrides):
        run = run_dir / "folds" / f"fold_{k}"
        log.info("Fold run %d/%d: %s", k + 1, len(overrides), run)
        checkpoint, metrics, reused = train_fold(fold, run)
        score = metrics["metrics"].get(f"best/{cfg.optimized_metric}")
        state["folds"].append({"run_dir": str(run), "checkpoint": str(checkpoint),
                               "reused": reused, "score": score})  # fmt: skip
        path = run_dir / OOF_DIR / f"fold_{k}.npz"
        collect_fold(checkpoint, k, path, int(cfg.oof_size), device)
        oof.append(path)
    return oof


def write_outputs(
    run_dir: Path, state: dict[str, Any], oof: list[Path], started: float | None = None
) -> dict[str, Any]:
    """Rank the images of the fold files `oof` (in this order) and write
    label_issues.csv, suspects.npz, audit.json (`state`, completed) and report.html;
    `state` holds the settings, class names, palette and ignore_index."""
    settings = state["settings"]
    temperature = float(settings["temperature"])
    entries = [e for path in oof for e in read_index(path)["entries"]]
    work = run_dir / OOF_DIR / ".ranking.npy"
    try:
        probs, labels = stack(oof, entries, len(state["class_names"]), state["ignore_index"], work)
        scores, issues, shares = rank(probs, labels, temperature, int(settings["pixel_batch"]))
        ranked = order(scores, shares)
        top = ranked[: int(settings["top"])]
        pixels = pixel_scores(probs[top], labels[top], temperature)
        np.savez_compressed(
            run_dir / SUSPECTS, rows=top, pixel_scores=pixels.astype(np.float16), issues=issues[top]
        )
        del probs
    finally:
        work.unlink(missing_ok=True)
    write_csv(run_dir / ISSUES_CSV, entries, scores, shares, ranked)
    stored = sum(p.stat().st_size for p in oof)
    state.update(
        status="finished",
        images=len(entries),
        grid=list(labels.shape[1:]),
        flagged_images=int((shares > 0).sum()),
        flagged_pixels=int(issues.sum()),
        oof={"files": [str(p) for p in oof], "bytes": stored,
             "bytes_per_image": round(stored / max(1, len(entries)))},
        paths={"csv": str(run_dir / ISSUES_CSV), "suspects": str(run_dir / SUSPECTS),
               "report": str(run_dir / "report.html")},
        wall_s=None if started is None else round(time.monotonic() - started, 1),
    )  # fmt: skip
    rundir.write_json(run_dir / AUDIT_JSON, state)
    from seglab.report.audit import write_audit_report  # noqa: PLC0415

    page = write_audit_report(run_dir)
    log.info(
        "Audit of %d images: %d with suspect pixels; worst %s (label quality %.4f); %s, %s",
        len(entries), state["flagged_images"], entries[ranked[0]]["name"], scores[ranked[0]],
        run_dir / ISSUES_CSV, page,
    )  # fmt: skip
    return state


@command("audit")
def main(cfg: DictConfig) -> None:
    audit(cfg)


if __name__ == "__main__":
    main()
