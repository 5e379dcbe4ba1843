"""The embedded shapes datasets: deterministic, well-formed, and strict about bad config."""

from __future__ import annotations

import pytest
import torch

from seglab.data import ShapesClassificationDataModule, ShapesDataModule
from seglab.errors import SeglabError


def _module(**kwargs) -> ShapesDataModule:
    kwargs = {"num_train": 6, "num_val": 3, "num_test": 3, "image_size": 48, **kwargs}
    datamodule = ShapesDataModule(**kwargs)
    datamodule.setup()
    return datamodule


def test_samples_are_well_formed():
    datamodule = _module(image_size=(40, 56))
    image, mask = datamodule.train_set[0]
    assert image.dtype == torch.float32 and image.shape == (3, 40, 56)
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert mask.dtype == torch.long and mask.shape == (40, 56)
    values = torch.cat([datamodule.train_set[i][1].flatten() for i in range(6)]).unique()
    assert set(values.tolist()) <= {0, 1, 2, 3}
    assert 0 in values.tolist() and len(values) > 2  # background and several shapes


def test_same_seed_same_data_and_splits_differ():
    first, second = _module(seed=3), _module(seed=3)
    for split in ("train", "val", "test"):
        a, b = getattr(first, f"{split}_set")[1], getattr(second, f"{split}_set")[1]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(first.train_set[0][0], first.val_set[0][0])
    assert not torch.equal(first.train_set[0][0], _module(seed=4).train_set[0][0])


def test_growing_a_split_keeps_its_first_samples():
    small, large = _module(num_train=3), _module(num_train=6)
    for i in range(3):
        assert torch.equal(small.train_set[i][1], large.train_set[i][1])


def test_class_names_choose_the_shapes_drawn():
    datamodule = _module(class_names=["background", "triangle"], num_classes=2)
    values = torch.cat([datamodule.train_set[i][1].flatten() for i in range(6)]).unique()
    assert set(values.tolist()) == {0, 1}


def test_shape_pixels_differ_from_background():
    """Masks mark what is drawn: shape pixels' colours differ from the background's."""
    image, mask = _module(image_size=64).train_set[0]
    inside = image[:, mask > 0].mean(dim=1)
    outside = image[:, mask == 0].mean(dim=1)
    assert (inside - outside).abs().max() > 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 5}, r"num_classes=5 but data.class_names has 4"),
        ({"class_names": ["ellipse", "background"], "num_classes": 2}, r"start with 'background'"),
        ({"class_names": ["background", "star"], "num_classes": 2}, r"'star'"),
        ({"ignore_index": 2}, r"ignore_index=2 is a real class index"),
        ({"class_names": ["background", "ellipse", "ellipse"], "num_classes": 3}, "duplicates"),
    ],
)
def test_bad_class_config_is_refused(kwargs, message):
    with pytest.raises(SeglabError, match=message):
        ShapesDataModule(**kwargs)


def test_classification_labels_are_the_shape_drawn():
    datamodule = ShapesClassificationDataModule(num_train=60, num_val=3, num_test=3, image_size=32)
    datamodule.setup()
    labels = [datamodule.train_set[i][1] for i in range(60)]
    assert set(labels) == {0, 1, 2}
    assert min(labels.count(c) for c in range(3)) >= 10  # roughly balanced
    image, _ = datamodule.train_set[0]
    assert image.shape == (3, 32, 32)


def test_loaders_batch_and_drop_only_a_last_batch_of_one():
    datamodule = _module(num_train=9, batch_size=4)
    assert [len(b[0]) for b in datamodule.train_dataloader()] == [4, 4]
    datamodule = _module(num_train=6, batch_size=4)
    assert sorted(len(b[0]) for b in datamodule.train_dataloader()) == [2, 4]
    images, masks = next(iter(datamodule.val_dataloader()))
    assert images.shape == (3, 3, 48, 48) and masks.shape == (3, 48, 48)


def _trainer_on(device: str, devices: int):
    from types import SimpleNamespace

    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device(device)), num_devices=devices
    )


def test_loader_workers_default_to_none_on_cpu_and_share_cores_between_gpus(monkeypatch):
    from seglab.data.base import loader_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers(_trainer_on("cpu", 1), None) == 0
    assert loader_workers(_trainer_on("cuda", 1), None) == 8  # capped
    assert loader_workers(_trainer_on("cuda", 4), None) == 3  # 16 cores / 4 processes - 1
    assert loader_workers(_trainer_on("cuda", 16), None) == 0
    assert loader_workers(_trainer_on("cpu", 1), 3) == 3  # a given count is kept
    # Bound to 4 of the 16 cores (SLURM --cpus-per-task=4): those are this process's share.
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert loader_workers(_trainer_on("cuda", 4), None) == 3


def test_the_loader_uses_the_resolved_worker_count(make_cfg):
    from hydra.utils import instantiate

    datamodule = instantiate(make_cfg().data)
    datamodule.setup("fit")
    if not torch.cuda.is_available():  # no trainer: this machine's device decides
        assert datamodule.train_dataloader().num_workers == 0
    datamodule.num_workers = 1
    loader = datamodule.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers
