"""seglab-plan: the plan follows the data (crop, evaluation, loss, encoder, augmentation),
the batch is measured against a memory limit, the experiment file runs as written, and a
planned run ends within its budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from seglab.config import compose
from seglab.errors import SeglabError
from seglab.fingerprint import fingerprint
from seglab.plan import BATCHES, choose_batch, plan

CLASSES = ["background", "ellipse", "rectangle", "triangle"]


def write_shapes(root: Path, sizes: list[tuple[int, int]], counts: dict[str, int]) -> None:
    """root/images/<split>/ and root/masks/<split>/ of `shapes` scenes, image i of a
    split drawn at sizes[i % len(sizes)]."""
    from seglab.data.shapes import SHAPES, render_scene  # noqa: PLC0415

    for s, (split, count) in enumerate(counts.items()):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([s, i])
            image, mask = render_scene(rng, sizes[i % len(sizes)], SHAPES, 3)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")


def write_rare(root: Path, count: int, size: tuple[int, int] = (64, 64)) -> None:
    """Binary-like scenes: class 1 covers a third of each image, class 2 a 2x2 patch in
    every other image (about 0.05% of the pixels)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(2, count // 5))):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mask = np.zeros(size, np.uint8)
            mask[:, : size[1] // 3] = 1
            if i % 2 == 0:
                mask[10:12, 40:42] = 2
            image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")


def run_plan(tmp_path: Path, root: Path, names, *extra: str) -> tuple[dict, dict]:
    """plan() as the command runs it; (plan.json's content, the experiment file parsed)."""
    cfg = compose(
        [
            "data=folder",
            f"data.root={root}",
            f"data.class_names=[{','.join(names)}]",
            f"data.num_classes={len(names)}",
            "num_workers=0",
            f"config_dir={tmp_path / 'conf'}",
            "overwrite=true",  # several plans per test
            *extra,
        ],
        output_dir=tmp_path / "out",
        config_name="plan",
    )
    result = plan(cfg)
    text = Path(result["experiment"]).read_text()
    return result, yaml.safe_load(text) | {"_text": text}


def decision(result: dict, key: str):
    return next(d for d in result["plan"]["decisions"] if d["key"] == key)


def test_small_images_give_a_small_crop_whole_evaluation_and_strong_augmentation(tmp_path):
    root = tmp_path / "small"
    write_shapes(root, [(96, 128)], {"train": 24, "val": 6})
    result, experiment = run_plan(tmp_path, root, CLASSES, "budget=00:00:30:00", "name=small")
    assert experiment["data"]["crop_size"] == 96  # the images' shorter side, not 512
    assert "inference=whole" in result["plan"]["evaluate"]
    assert experiment["model"]["encoder_name"] == "tu-resnet10t"  # 24 images
    assert experiment["data"]["scale_range"] == [0.5, 2.0]
    assert experiment["data"]["color_jitter"]["brightness"] == 0.3
    # Shapes' background outweighs a shape class under 50x: no class weights.
    shares = [c["pixel_share"] for c in result["fingerprint"]["classes"]]
    assert 10 < max(shares) / min(shares) < 50 and experiment["loss"]["weight"] is None
    # The user's data options are carried over, so the file runs as is.
    assert experiment["data"]["root"] == str(root)
    assert experiment["data"]["num_classes"] == 4
    assert experiment["data"]["class_names"] == CLASSES
    # Each decision's reason is written above its key.
    lines = experiment["_text"].splitlines()
    crop_line = next(i for i, line in enumerate(lines) if line.startswith("  crop_size:"))
    assert lines[crop_line - 1].startswith("  # the median image is 96x128")
    fp = result["fingerprint"]
    assert fp["height"]["median"] == 96 and fp["width"]["median"] == 128
    assert fp["samples"] == {"train": 24, "val": 6}


def test_wide_images_are_evaluated_by_sliding_window(tmp_path):
    root = tmp_path / "wide"
    write_shapes(root, [(160, 480)], {"train": 6, "val": 2})
    result, experiment = run_plan(tmp_path, root, CLASSES, "budget=00:00:30:00")
    crop = experiment["data"]["crop_size"]
    assert crop == 160
    assert result["plan"]["evaluate"] == (
        f"inference=slide inference.window=[{crop},{crop}] inference.stride=[106,106]"
    )


def test_a_rare_class_gets_a_dice_term_and_class_weights(tmp_path):
    root = tmp_path / "rare"
    write_rare(root, 10)
    result, experiment = run_plan(tmp_path, root, ["bg", "road", "sign"], "budget=00:00:30:00")
    assert "override /loss: ce_dice" in experiment["_text"]
    weights = experiment["loss"]["losses"]["ce"]["weight"]
    shares = [c["pixel_share"] for c in result["fingerprint"]["classes"]]
    # 2x2 pixels in 5 of 10 64x64 images; a third of the pixels are road.
    assert shares[2] == pytest.approx(20 / (10 * 64 * 64), abs=1e-6)
    assert shares[1] == pytest.approx(21 * 64 * 10 / (10 * 64 * 64), abs=1e-6)
    assert weights[2] == 10.0  # median-frequency weight, clipped
    assert weights[0] < weights[1] == 1.0 < weights[2]  # road's share is the median
    sign = result["fingerprint"]["classes"][2]
    assert sign["objects"] == 5 and sign["object_area"]["median"] == 4
    assert sign["object_extent"]["median"] == 2 and sign["image_share"] == 0.5


def test_balanced_binary_masks_keep_plain_cross_entropy(tmp_path):
    root = tmp_path / "binary"
    rng = np.random.default_rng(1)
    for split, n in (("train", 8), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((64, 64), np.uint8)
            mask[:, 32:] = 1
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{i}.png"
            )
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    _, experiment = run_plan(tmp_path, root, ["bg", "fg"], "budget=00:00:30:00")
    assert "  - override /loss: ce" in experiment["_text"].splitlines()
    assert experiment["loss"]["weight"] is None


def test_the_batch_is_the_one_measured_to_fit_the_memory_limit(tmp_path):
    root = tmp_path / "medium"
    write_shapes(root, [(224, 224)], {"train": 32, "val": 2})
    result, _ = run_plan(tmp_path, root, CLASSES, "budget=00:00:30:00")
    trials = result["plan"]["trials"]
    assert [t["batch"] for t in trials] == [b for b in BATCHES if b <= 20][: len(trials)]
    assert len(trials) >= 3
    peaks = [t["peak_bytes"] for t in trials]
    assert peaks[2] > peaks[1] > peaks[0] > 0  # more for larger batches: a measurement
    # A limit between batch 4's and batch 8's peaks: batch 8 and above do not fit.
    limit = (peaks[1] + peaks[2]) // 2
    batch, _ = choose_batch(trials, limit, gpu=True)
    assert batch == 4
    assert next(t for t in trials if t["batch"] == batch)["peak_bytes"] <= limit
    # Too small for any: an error naming the need and the fix.
    with pytest.raises(SeglabError, match=r"batch 2 needs .* GiB, more than .* \(memory=GiB\)"):
        choose_batch(trials, peaks[0] // 2, gpu=False)
    # Through the command: a limit in GiB under batch 8's peak plans a smaller batch.
    gib = limit / 2**30
    result, experiment = run_plan(tmp_path, root, CLASSES, "budget=00:00:30:00", f"memory={gib}")
    assert experiment["data"]["batch_size"] < 8
    chosen = next(
        t for t in result["plan"]["trials"] if t["batch"] == experiment["data"]["batch_size"]
    )
    assert chosen["peak_bytes"] <= limit * 1.2  # the same step measured again, within noise


def test_the_budget_is_split_into_training_time_and_the_rest(tmp_path):
    root = tmp_path / "small"
    write_shapes(root, [(64, 64)], {"train": 16, "val": 4})
    result, experiment = run_plan(tmp_path, root, CLASSES, "budget=00:00:10:00")
    estimate = result["plan"]["estimate"]
    d, h, m, s = map(int, experiment["trainer"]["max_time"].split(":"))
    fit_s = ((d * 24 + h) * 60 + m) * 60 + s
    assert fit_s == pytest.approx(estimate["fit_s"], abs=1)
    rest = estimate["startup_s"] + estimate["cache_s"] + estimate["test_and_report_s"]
    assert fit_s == pytest.approx(600 - rest - 0.05 * 600, abs=1.0)
    assert experiment["trainer"]["max_epochs"] == -1
    assert "override /scheduler: poly" in experiment["_text"]
    # A budget too short for two epochs: refused with the least budget that would do.
    with pytest.raises(
        SeglabError, match=r"budget=00:00:00:05 leaves .* give at least budget="
    ) as e:
        run_plan(tmp_path, root, CLASSES, "budget=00:00:00:05")
    least = str(e.value).rsplit("budget=", 1)[1]
    # The least budget named plans (with the margin of 10 s to spare for timing noise).
    d, h, m, s = map(int, least.split(":"))
    seconds = ((d * 24 + h) * 60 + m) * 60 + s + 10
    run_plan(tmp_path, root, CLASSES, f"budget=00:00:{seconds // 60:02d}:{seconds % 60:02d}")


def test_a_large_dataset_gets_a_deeper_encoder_and_milder_scaling(tmp_path):
    root = tmp_path / "large"
    write_shapes(root, [(32, 32)], {"train": 2100, "val": 10})
    result, experiment = run_plan(tmp_path, root, CLASSES, "budget=00:02:00:00", "limit=100")
    assert experiment["model"]["encoder_name"] == "resnet18"
    assert experiment["data"]["scale_range"] == [0.75, 1.5]
    assert result["fingerprint"]["read"] == 100  # evenly spaced, not all 2,100
    assert result["fingerprint"]["samples"]["train"] == 2100


def test_classification_data_is_refused_with_the_recipe_to_use(tmp_path):
    cfg = compose(
        ["data=shapes_cls", "budget=00:00:10:00"], output_dir=tmp_path, config_name="plan"
    )
    with pytest.raises(SeglabError, match=r"plans segmentation data.*experiment=folder_cnn"):
        plan(cfg)


def test_without_scipy_the_fingerprint_names_the_extra(tmp_path, monkeypatch):
    import seglab.fingerprint  # noqa: PLC0415

    monkeypatch.setattr(seglab.fingerprint, "ndimage", None)
    cfg = compose(["budget=00:00:10:00"], output_dir=tmp_path, config_name="plan")
    with pytest.raises(SeglabError, match=r"needs scipy .*: pip install 'seglab\[plan\]'"):
        plan(cfg)


README_PLAN = ["budget=00:00:01:30", "name=quick"]  # README "Plan an experiment"


def _plan_command(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seglab.plan", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_readme_shapes_plan_composes_into_a_training_config(tmp_path, monkeypatch):
    # The README's plan command as typed, in a temporary working directory: the file it
    # writes composes with seglab-train's config and sets what plan.json says.
    done = _plan_command(tmp_path, *README_PLAN)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "plan" / "runs").iterdir()
    planned = json.loads((run_dir / "plan.json").read_text())["plan"]
    monkeypatch.setenv("SEGLAB_CONFIG_PATH", str(tmp_path / "conf"))  # as --config-dir conf
    cfg = compose(["experiment=quick"], output_dir=tmp_path / "t")
    for d in planned["decisions"]:
        assert OmegaConf.select(cfg, d["key"]) == d["value"], d["key"]
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.PolynomialLR"
    # Typed again: the file (perhaps edited since) is kept, and the error says what to do.
    written = tmp_path / "conf" / "experiment" / "quick.yaml"
    written.write_text(written.read_text() + "# my edit\n")
    again = _plan_command(tmp_path, *README_PLAN)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        "seglab: error: conf/experiment/quick.yaml exists (an earlier plan, perhaps edited "
        "since); choose another name=..., or overwrite=true to replace it"
    )
    assert written.read_text().endswith("# my edit\n")
    assert _plan_command(tmp_path, *README_PLAN, "overwrite=true").returncode == 0
    assert "# my edit" not in written.read_text()


def test_the_fingerprint_of_shapes_matches_its_masks(tmp_path):
    cfg = compose(["data=shapes", "data.num_train=8", "data.num_val=2", "data.num_test=2",
                   "data.image_size=48"], output_dir=tmp_path, config_name="plan")  # fmt: skip
    datamodule = instantiate(cfg.data)
    found = fingerprint(datamodule, limit=None)
    datasets, _ = datamodule.check_splits()
    masks = np.stack([np.asarray(datasets["train"][i][1]) for i in range(8)])
    for c, printed in enumerate(found.classes):
        assert printed.pixel_share == pytest.approx((masks == c).mean(), abs=1e-6)
        assert printed.image_share == pytest.approx((masks == c).any(axis=(1, 2)).mean())
    assert found.max_size == [48, 48] and found.channels == 3


def _train_planned(cwd: Path, name: str) -> float:
    """`seglab.train --config-dir conf experiment=NAME` in `cwd`, the default run
    directory: its wall time, after checking it tested."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "seglab.train", "--config-dir", "conf", f"experiment={name}"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (cwd / "outputs" / "train" / "runs").iterdir()
    assert "test/mIoU" in json.loads((run_dir / "metrics.json").read_text())["metrics"]
    return wall


@pytest.mark.slow
def test_the_readme_plan_and_train_commands_end_within_the_budget(tmp_path):
    """The README's two `quick` commands exactly as written, in a temporary working
    directory with the default run directory: the training command's wall time is
    within 10% of the 90-second budget."""
    done = _plan_command(tmp_path, *README_PLAN)
    assert done.returncode == 0, done.stderr[-3000:]
    wall = _train_planned(tmp_path, "quick")
    assert abs(wall - 90) <= 9, f"ran {wall:.1f} s for a 90 s budget"


@pytest.mark.slow
def test_seglab_plan_then_train_runs_as_written_and_ends_within_its_budget(tmp_path):
    """The README's two commands, in a temporary working directory: the planned run's
    whole wall time is within 10% of the budget."""
    root = tmp_path / "data"
    write_shapes(root, [(64, 64)], {"train": 32, "val": 8, "test": 8})
    data = ["data=folder", f"data.root={root}", f"data.class_names=[{','.join(CLASSES)}]",
            "data.num_classes=4"]  # fmt: skip
    budget = 90
    done = subprocess.run(
        [sys.executable, "-m", "seglab.plan", *data, "budget=00:00:01:30", "name=mine"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "conf" / "experiment" / "mine.yaml").is_file()
    assert "seglab-train --config-dir conf experiment=mine" in done.stdout  # the next step
    wall = _train_planned(tmp_path, "mine")
    assert abs(wall - budget) <= 0.1 * budget, f"ran {wall:.1f} s for a {budget} s budget"


def test_on_a_cpu_the_smallest_batch_near_the_best_rate_is_chosen():
    trials = [
        {"batch": 2, "peak_bytes": 1, "step_s": 0.01},  # 200 images/s, but below batch 4
        {"batch": 4, "peak_bytes": 2, "step_s": 0.05},  # 80
        {"batch": 8, "peak_bytes": 3, "step_s": 0.085},  # 94: within 10% of 16's
        {"batch": 16, "peak_bytes": 4, "step_s": 0.16},  # 100
    ]
    assert choose_batch(trials, limit=10, gpu=False)[0] == 8
    assert choose_batch(trials, limit=3, gpu=False)[0] == 8  # 16 does not fit
    assert choose_batch(trials, limit=1, gpu=False)[0] == 2  # only 2 fits
    assert choose_batch(trials, limit=10, gpu=True)[0] == 16
