"""CIFAR-10 from its python pickles: exact pixels, seeded stratified split, augmentation on
train only, clear errors, and the Keras-tutorial recipe training end to end.

The batches written here have the real format (python-2 style bytes keys, uint8 rows of
R, G and B planes) but 20 images each, so torchvision's md5 check would refuse them."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from seglab.config import CONFIG_DIR
from seglab.data.base import to_input
from seglab.data.cifar10 import CLASS_NAMES, CIFAR10DataModule, read_batch
from seglab.errors import SeglabError
from seglab.train import train

PER_BATCH = 20
NUM_TRAIN = 5 * PER_BATCH


def _images(first: int, labels: list[int]) -> np.ndarray:
    """uint8 [N, 3, 32, 32], random but tagged: the top-left pixel's red value is the
    label, its green and blue values the image's global index (so a sample found in any
    split tells which written image it is)."""
    images = np.random.default_rng(first).integers(0, 256, (len(labels), 3, 32, 32), np.uint8)
    ids = np.arange(first, first + len(labels))
    images[:, 0, 0, 0] = labels
    images[:, 1, 0, 0] = ids % 256
    images[:, 2, 0, 0] = ids // 256
    return images


def _write(path: Path, content: object) -> None:
    with path.open("wb") as f:
        pickle.dump(content, f, protocol=2)  # the official files are protocol-2 pickles


def write_cifar(root: Path, class_names=CLASS_NAMES) -> dict[str, np.ndarray]:
    """Five training batches and a test batch of 20 images, and batches.meta, under
    root/cifar-10-batches-py; returns the written images and labels per file group."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name, first in [(f"data_batch_{i + 1}", i * PER_BATCH) for i in range(5)] + [
        ("test_batch", 1000)
    ]:
        labels = [(first + i) % 10 for i in range(PER_BATCH)]
        images = _images(first, labels)
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images.reshape(PER_BATCH, 3072),  # row = R plane, G plane, B plane
            b"filenames": [f"{first + i}.png".encode() for i in range(PER_BATCH)],
        }
        _write(folder / name, batch)
        written[name] = (images, np.array(labels))
    _write(
        folder / "batches.meta",
        {b"label_names": [n.encode() for n in class_names], b"num_vis": 3072},
    )
    return written


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_cifar(tmp_path / "cifar10")
    return tmp_path / "cifar10"


def _datamodule(root: Path, **kwargs) -> CIFAR10DataModule:
    datamodule = CIFAR10DataModule(root=root, **{"val_size": 10, **kwargs})
    datamodule.setup("fit")
    return datamodule


def _ids(dataset) -> list[int]:
    """Global indices of the written images in a split of stored (uint8) images."""
    return [
        int(dataset[i][0][1, 0, 0]) + 256 * int(dataset[i][0][2, 0, 0]) for i in range(len(dataset))
    ]


def test_config_root_is_under_the_data_dir():
    cfg = OmegaConf.load(CONFIG_DIR / "data" / "cifar10.yaml")
    assert OmegaConf.to_container(cfg)["root"] == "${paths.data_dir}/cifar10"


def test_batches_are_read_pixel_for_pixel(tmp_path):
    """Images come back exactly as written: R, G, B planes in that order, rows then
    columns; labels in file order."""
    written = write_cifar(tmp_path)
    images, labels = read_batch(tmp_path / "cifar-10-batches-py" / "data_batch_2", 10)
    assert images.dtype == torch.uint8 and images.shape == (PER_BATCH, 3, 32, 32)
    assert torch.equal(images, torch.from_numpy(written["data_batch_2"][0]))
    assert labels.dtype == torch.int64
    assert labels.tolist() == written["data_batch_2"][1].tolist()

    # Through the datamodule: the test split in file order, normalised with CIFAR's stats.
    datamodule = _datamodule(tmp_path)
    test_images, test_labels = written["test_batch"]
    assert len(datamodule.test_set) == PER_BATCH
    for i in (0, 7):
        image, label = datamodule.test_set[i]
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        expected = to_input(test_images[i].transpose(1, 2, 0), datamodule.mean, datamodule.std)
        assert torch.allclose(image, expected, atol=1e-5)
        assert label == int(test_labels[i]) and isinstance(label, int)
    red = datamodule.test_set[3][0][0] * datamodule.std[0] + datamodule.mean[0]
    assert torch.allclose(red, torch.from_numpy(test_images[3, 0]).float(), atol=1e-3)


def test_validation_is_a_seeded_stratified_holdout(root):
    datamodule = _datamodule(root)
    splits, problems = datamodule.check_splits()
    assert problems == []
    assert {k: len(v) for k, v in splits.items()} == {"train": 90, "val": 10, "test": 20}
    train_ids, val_ids = _ids(splits["train"]), _ids(splits["val"])
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == list(range(NUM_TRAIN))
    assert _ids(splits["test"]) == list(range(1000, 1020))
    # The label stays with its image, and val holds each class once (10 images per class).
    for dataset in splits.values():
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
            assert label == int(image[0, 0, 0])
    assert sorted(splits["val"][i][1] for i in range(10)) == list(range(10))
    # The sets training uses are the same split.
    assert len(datamodule.train_set) == 90 and len(datamodule.val_set) == 10
    assert torch.allclose(
        datamodule.val_set[4][0],
        to_input(splits["val"][4][0].permute(1, 2, 0).numpy(), datamodule.mean, datamodule.std),
    )
    again = _ids(_datamodule(root).check_splits()[0]["val"])
    other = _ids(_datamodule(root, split_seed=1).check_splits()[0]["val"])
    assert again == val_ids and other != val_ids


def test_val_size_zero_validates_on_test_and_too_large_is_refused(root):
    datamodule = _datamodule(root, val_size=0)
    assert len(datamodule.train_set) == NUM_TRAIN and datamodule.val_set is datamodule.test_set
    assert set(datamodule.check_splits()[0]) == {"train", "val"}  # test = val, listed once
    with pytest.raises(SeglabError, match=rf"val_size={NUM_TRAIN} .* only {NUM_TRAIN}"):
        _datamodule(root, val_size=NUM_TRAIN)


def _training_draws(datamodule: CIFAR10DataModule, index: int, count: int) -> list:
    """`count` training views of sample `index`: per sample, or (with a cache) a batch of
    copies through the batch augmentation."""
    if datamodule.train_batch_transform is None:
        return [datamodule.train_set[index][0] for _ in range(count)]
    batch = datamodule.train_set.__getitems__([index] * count)
    images, _ = datamodule.train_batch_transform(batch, torch.Generator().manual_seed(0))
    return list(images)


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_augmentation_on_train_only(root, cache):
    datamodule = _datamodule(root, augment=True, cache=cache)
    assert (datamodule.train_batch_transform is None) == (cache == "none")
    stored = datamodule.check_splits()[0]
    torch.manual_seed(0)
    draws = _training_draws(datamodule, 0, 10)
    assert all(d.shape == (3, 32, 32) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    plain = to_input(
        stored["train"][0][0].permute(1, 2, 0).numpy(), datamodule.mean, datamodule.std
    )
    assert any(not torch.allclose(d, plain) for d in draws)
    for split in ("val", "test"):
        dataset = getattr(datamodule, f"{split}_set")
        expected = to_input(
            stored[split][2][0].permute(1, 2, 0).numpy(), datamodule.mean, datamodule.std
        )
        for _ in range(5):
            assert torch.allclose(dataset[2][0], expected, atol=1e-5)
    # Switched off, training images are the stored ones too.
    off = _datamodule(root, augment=False, cache=cache)
    assert all(torch.allclose(d, plain, atol=1e-5) for d in _training_draws(off, 0, 5))


def test_other_image_size_resizes(root):
    datamodule = _datamodule(root, image_size=40)
    assert datamodule.input_size == (40, 40)
    assert datamodule.train_set[0][0].shape == (3, 40, 40)
    assert datamodule.test_set[0][0].shape == (3, 40, 40)


def test_class_names_must_match_batches_meta(tmp_path):
    names = list(CLASS_NAMES)
    names[3], names[5] = names[5], names[3]  # dog and cat swapped
    write_cifar(tmp_path, class_names=names)
    with pytest.raises(SeglabError, match=r"'cat', 'deer', 'dog'.*'dog', 'deer', 'cat'") as err:
        _datamodule(tmp_path)
    assert "batches.meta" in str(err.value)


def test_missing_data_says_where_and_how_to_get_it(tmp_path, root):
    missing = tmp_path / "nowhere"
    with pytest.raises(SeglabError, match=rf"{missing} does not exist.*data.download=true"):
        _datamodule(missing)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SeglabError, match=r"data_batch_3 is missing.*data.download=true"):
        _datamodule(root)


class _RunsCode:
    """Unpickling this would create a folder: what a tampered pickle could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a pickle at all", r"data_batch_2 is not a CIFAR-10 pickle"),
        ({b"data": np.zeros((20, 3000), np.uint8), b"labels": [0] * 20}, r"\(20, 3000\)"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19}, r"labels' of shape"),
        ({b"labels": [0] * 20}, r"no 'data' array"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19 + [10]}, r"label 10"),
        ("runs code", r"refusing to load posix.mkdir"),
    ],
    ids=["garbage", "wrong-shape", "label-count", "no-data", "label-range", "code"],
)
def test_bad_batch_file_is_named(root, content, message):
    path = root / "cifar-10-batches-py" / "data_batch_2"
    if content == "runs code":
        content = _RunsCode(root / "pwned")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _write(path, content)
    with pytest.raises(SeglabError, match=message) as err:
        _datamodule(root)
    assert str(path) in str(err.value)
    assert not (root / "pwned").exists()
    # The data checker gets the problem and the rest of the data.
    splits, problems = CIFAR10DataModule(root=root, val_size=10).check_splits()
    assert len(problems) == 1 and str(path) in problems[0]
    assert len(splits["train"]) + len(splits["val"]) == NUM_TRAIN - PER_BATCH


def test_experiment_is_the_keras_tutorial_recipe(make_cfg):
    cfg = make_cfg("experiment=cifar10_cnn", tiny=False)
    assert cfg.data._target_ == "seglab.data.cifar10.CIFAR10DataModule"
    assert cfg.model._target_ == "seglab.models.SimpleCNN" and cfg.model.input_size == 32
    assert cfg.model.num_classes == 10
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.loss._target_ == "seglab.losses.CrossEntropyLoss"
    assert cfg.scheduler is None
    assert cfg.trainer.max_epochs == 10
    assert cfg.data.batch_size == 32 and cfg.data.augment is False
    assert cfg.data.download is False and cfg.data.root == "data/cifar10"
    assert cfg.optimized_metric == "val/acc"


def test_experiment_trains_one_batch(make_cfg, root, fast_run):
    cfg = make_cfg(
        "experiment=cifar10_cnn",
        f"data.root={root}",
        "data.val_size=10",
        *fast_run,
        tiny=False,
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert math.isfinite(metrics["test/loss"])
    assert "test/acc_top5" in metrics  # 10 classes: top-5 accuracy is logged too
