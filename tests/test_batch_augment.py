"""The augmentation of each task (`seglab.data.transforms`): the same distribution of
crops, scales and flips as torchvision's v2 pipelines, deterministic in its generator,
exact where nothing is random, its per-sample path exactly its batch path for the same
generator, and applied by the datamodule hook to training batches only, seeded so a
resumed run repeats the uninterrupted one."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import TensorDataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from seglab.data.base import SeglabDataModule, batch_seed
from seglab.data.transforms import (
    ClassificationAugment,
    SegmentationAugment,
    color_jitter_transform,
)

# Identity normalisation: outputs keep the 0-255 values, so crops can be read back.
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
MEAN, STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
IGNORE = 255
SAMPLES = 2000


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> str:
    """The device the cached batch lies on (the training device)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    return request.param


def assert_same_distribution(a: Sequence[Hashable], b: Sequence[Hashable], what: str) -> None:
    """Pearson's chi-square test that two samples come from one discrete distribution,
    at about the 0.05% level (the critical value from the Wilson-Hilferty approximation);
    the seeds are fixed, so the outcome is too."""
    count_a, count_b = Counter(a), Counter(b)
    categories = sorted(set(count_a) | set(count_b))
    n_a, n_b = len(a), len(b)
    stat = 0.0
    for category in categories:
        total = count_a[category] + count_b[category]
        for count, n in ((count_a[category], n_a), (count_b[category], n_b)):
            expected = total * n / (n_a + n_b)
            stat += (count - expected) ** 2 / expected
    dof = max(1, len(categories) - 1)
    critical = dof * (1 - 2 / (9 * dof) + 3.29 * math.sqrt(2 / (9 * dof))) ** 3
    assert stat < critical, (
        f"{what}: chi2={stat:.1f} >= {critical:.1f} (dof {dof}); "
        f"batch {sorted(count_a.items())} vs per-sample {sorted(count_b.items())}"
    )


def _plain(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
    plain = tuple(t.as_subclass(torch.Tensor) for t in tensors)
    return plain if len(plain) > 1 else plain[0]


def torchvision_classification(
    size: int, mean, std, train: bool, crop_padding: int = 4, hflip: float = 0.5
) -> Callable:
    """The reference: torchvision's v2 pipeline of the classification augmentation."""
    steps = [v2.RandomCrop(size, padding=crop_padding), v2.RandomHorizontalFlip(hflip)]
    normalise = [v2.ToDtype(torch.float32, scale=False), v2.Normalize(list(mean), list(std))]
    return v2.Compose([*(steps if train else []), *normalise, _plain])


def torchvision_segmentation(
    crop: int, ignore_index: int, mean, std, scale_range=(0.5, 2.0), hflip=0.5, color_jitter=None
) -> Callable:
    """The reference: torchvision's v2 pipeline of the segmentation augmentation."""
    jitter = color_jitter_transform(color_jitter)
    return v2.Compose(
        [
            v2.ScaleJitter(target_size=(crop, crop), scale_range=scale_range),
            v2.RandomCrop(
                crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
            ),
            v2.RandomHorizontalFlip(p=hflip),
            *([jitter] if jitter is not None else []),
            v2.ToDtype(
                {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=False
            ),
            v2.Normalize(mean=list(mean), std=list(std)),
            _plain,
        ]
    )


def _batched(
    augment: Callable, inputs: Callable[[int], tuple], batches: int = 10
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """SAMPLES augmented samples from `batches` batches, each with its own generator seed."""
    out = []
    for seed in range(batches):
        images, targets = augment(inputs(SAMPLES // batches), torch.Generator().manual_seed(seed))
        out += list(zip(images, targets, strict=True))
    return out


# Classification ---------------------------------------------------------------------------


def _coordinate_image(size: int = 32) -> torch.Tensor:
    """uint8 [3, size, size]: channel 0 holds row + 1, channel 1 column + 1, channel 2 is
    constant, so zero marks padding and every crop and flip can be read back."""
    rows = torch.arange(1, size + 1).view(-1, 1).expand(size, size)
    return torch.stack([rows, rows.T, torch.full_like(rows, 50)]).to(torch.uint8)


def _crop_and_flip(output: torch.Tensor, image: torch.Tensor, pad: int) -> tuple[int, int, bool]:
    """(top, left, flipped) of a classification output, checked to be exactly that crop of
    the zero-padded image, flipped or not."""
    row, col, next_col = int(output[0, 16, 16]), int(output[1, 16, 16]), int(output[1, 16, 17])
    flipped = next_col < col
    top, left = row - 1 - 16 + pad, col - 1 - (15 if flipped else 16) + pad
    expected = F.pad(image, (pad,) * 4)[:, top : top + 32, left : left + 32]
    expected = expected.flip(-1) if flipped else expected
    assert torch.equal(output, expected.float()), "not a zero-padded crop of the image"
    return top, left, flipped


def test_classification_crops_and_flips_are_distributed_like_torchvision():
    image, pad = _coordinate_image(), 4
    augment = ClassificationAugment(32, **RAW, crop_padding=pad, hflip=0.5)
    batched = _batched(
        augment, lambda n: (image.expand(n, -1, -1, -1).contiguous(), torch.zeros(n).long())
    )
    torch.manual_seed(0)
    per_sample = torchvision_classification(32, **RAW, train=True, crop_padding=pad)
    reference = [per_sample(tv_tensors.Image(image)) for _ in range(SAMPLES)]

    ours = [_crop_and_flip(output, image, pad) for output, _ in batched]
    theirs = [_crop_and_flip(output, image, pad) for output in reference]
    for k, what in enumerate(("crop top", "crop left", "flip")):
        assert_same_distribution([o[k] for o in ours], [t[k] for t in theirs], what)
    assert {o[0] for o in ours} == set(range(2 * pad + 1)) == {o[1] for o in ours}


def test_classification_without_augmentation_normalises_exactly_like_torchvision():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(5)
    expected = torch.stack(
        [
            torchvision_classification(32, MEAN, STD, train=False)(tv_tensors.Image(image))
            for image in images
        ]
    )
    generator = torch.Generator().manual_seed(0)
    for augment in (
        ClassificationAugment(32, MEAN, STD, augment=False),
        ClassificationAugment(32, MEAN, STD, crop_padding=0, hflip=0.0),
    ):
        out, out_labels = augment((images, labels), generator)
        assert out.dtype == torch.float32 and torch.equal(out, expected)
        assert out_labels is labels


def test_classification_is_a_function_of_the_generator_seed(device):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, device=device)
    augment = ClassificationAugment(32, MEAN, STD)

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(seed)
        out, _ = augment((images, torch.zeros(16, device=device).long()), generator)
        assert out.device == images.device and out.dtype == torch.float32
        return out

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_classification_refuses_images_of_another_size():
    augment = ClassificationAugment(32, MEAN, STD)
    images = torch.zeros(2, 3, 30, 32, dtype=torch.uint8)
    with pytest.raises(Exception, match=r"cached images are \[30, 32\].*crops \[32, 32\]"):
        augment((images, torch.zeros(2).long()), torch.Generator())


# Segmentation -----------------------------------------------------------------------------


def _segmentation_outputs(
    augment: SegmentationAugment, per_sample: Callable, image: torch.Tensor, mask: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """SAMPLES outputs of the batch path and of the per-sample path, each stacked as
    (images [N, 3, h, w], masks [N, h, w]), checked to hold only black or input pixels
    where padded and only `ignore_index` or the input mask's values (nearest)."""
    ours = _batched(augment, lambda n: ([image] * n, [mask] * n))
    torch.manual_seed(0)
    theirs = [per_sample(tv_tensors.Image(image), tv_tensors.Mask(mask)) for _ in range(SAMPLES)]
    stacked = []
    for outputs in (ours, theirs):
        images, masks = (torch.stack(t) for t in zip(*outputs, strict=True))
        assert images.dtype == torch.float32 and masks.dtype == torch.int64
        assert set(masks.unique().tolist()) <= {*mask.unique().tolist(), IGNORE}
        assert images.masked_fill((masks != IGNORE)[:, None], 0).eq(0).all(), "padding not black"
        stacked.append((images, masks))
    return stacked[0], stacked[1]


def _placement(masks: torch.Tensor) -> list[tuple[int, int, int, int, bool]]:
    """(height, width, top, left, flipped) of scaled images lying wholly inside their
    crops, read from masks whose left half is 3 and right half 7.

    Shape:
        masks: LongTensor[N, h, w] -> N tuples.
    """
    valid = masks != IGNORE
    rows, cols = valid.any(2), valid.any(1)  # (N, h), (N, w)
    height, width = rows.sum(1), cols.sum(1)
    top, left = rows.int().argmax(1), cols.int().argmax(1)
    assert torch.equal(valid.sum((1, 2)), height * width), "the image is not one rectangle"
    flipped = masks[torch.arange(len(masks)), top, left] == 7
    return list(zip(*(t.tolist() for t in (height, width, top, left, flipped)), strict=True))


def test_segmentation_scale_padding_and_flips_are_distributed_like_torchvision():
    # 12x18 scaled by (48/18) * [0.5, 0.9] fits the 48x48 crop: the whole scaled image is
    # visible, so its size and placement can be read back.
    image = torch.randint(1, 256, (3, 12, 18), dtype=torch.uint8)
    mask = torch.full((12, 18), 3, dtype=torch.uint8)
    mask[:, 9:] = 7
    kwargs = {"scale_range": (0.5, 0.9), "hflip": 0.5}
    (_, ours), (_, theirs) = _segmentation_outputs(
        SegmentationAugment(48, IGNORE, **RAW, **kwargs),
        torchvision_segmentation(48, IGNORE, **RAW, **kwargs),
        image,
        mask,
    )
    ours_p, theirs_p = _placement(ours), _placement(theirs)
    assert all(abs(1.5 * height - width) <= 1.5 for height, width, *_ in ours_p)  # aspect kept
    # Scaled sizes (in bins of 3 pixels), placements (in fifths of the free room), flips.
    for what, key in [
        ("scaled width", lambda p: p[1] // 3),
        ("scaled height", lambda p: p[0] // 3),
        ("top", lambda p: 5 * p[2] // (49 - p[0])),
        ("left", lambda p: 5 * p[3] // (49 - p[1])),
        ("flip", lambda p: p[4]),
    ]:
        assert_same_distribution([key(p) for p in ours_p], [key(p) for p in theirs_p], what)
    widths = [p[1] for p in ours_p]
    assert min(widths) <= 25 and max(widths) >= 42  # the whole scale range is drawn


def test_segmentation_resizes_image_and_mask_like_torchvision():
    # 60x90 shrunk by (48/90) * [0.3, 0.5] lies wholly inside the 48x48 crop: the image
    # must be resized bilinear with antialiasing, the mask nearest, exactly as v2 does.
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    mask = torch.full((60, 90), 3, dtype=torch.uint8)
    mask[:, 45:] = 7
    augment = SegmentationAugment(48, IGNORE, **RAW, scale_range=(0.3, 0.5))
    images, masks = augment(([image] * 16, [mask] * 16), torch.Generator().manual_seed(0))
    for out_image, out_mask, (height, width, top, left, flipped) in zip(
        images, masks, _placement(masks), strict=True
    ):
        region = (slice(top, top + height), slice(left, left + width))
        expected_image = TF.resize(image, [height, width])  # v2's defaults: bilinear, antialias
        expected_mask = TF.resize(tv_tensors.Mask(mask), [height, width])
        if flipped:
            expected_image, expected_mask = expected_image.flip(-1), expected_mask.flip(-1)
        assert torch.equal(out_image[:, region[0], region[1]], expected_image.float())
        assert torch.equal(out_mask[region], expected_mask.long())


def _crop_features(masks: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(padded fraction in eighths, first source column in sixths, flipped) of crops
    whose mask holds the source column index.

    Shape:
        masks: LongTensor[N, h, w] -> N tuples.
    """
    valid = masks != IGNORE
    padded = (8 * (~valid).float().mean((1, 2))).clamp(max=7).int()
    first = masks.masked_fill(~valid, IGNORE).amin((1, 2)) // 6
    # Along the fullest row the kept columns decrease when flipped.
    row = masks[torch.arange(len(masks)), valid.sum(2).argmax(1)]  # (N, w)
    flipped = row.masked_fill(row == IGNORE, -1).argmax(1) < row.argmin(1)
    return list(zip(*(t.tolist() for t in (padded, first, flipped)), strict=True))


def test_segmentation_crops_are_distributed_like_torchvision():
    # 40x60 scaled to a width of 32 * [0.5, 2]: sometimes padded, mostly cropped. The mask
    # holds the column index, so each crop shows which source columns it kept.
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    mask = torch.arange(60, dtype=torch.uint8).expand(40, 60).contiguous()
    (images, ours), (_, theirs) = _segmentation_outputs(
        SegmentationAugment(32, IGNORE, **RAW),
        torchvision_segmentation(32, IGNORE, **RAW),
        image,
        mask,
    )
    assert images.shape == (SAMPLES, 3, 32, 32) and ours.shape == (SAMPLES, 32, 32)
    ours_f, theirs_f = _crop_features(ours), _crop_features(theirs)
    for k, what in enumerate(("padded fraction", "first source column", "flip")):
        assert_same_distribution([f[k] for f in ours_f], [f[k] for f in theirs_f], what)


def test_segmentation_without_augmentation_normalises_exactly_like_torchvision():
    images = [torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8) for _ in range(3)]
    masks = [torch.randint(0, 5, (24, 24), dtype=torch.uint8) for _ in range(3)]
    # Scale 1 of an image the crop's size: no resize, no crop, no flip.
    kwargs = {"scale_range": (1.0, 1.0), "hflip": 0.0}
    per_sample = torchvision_segmentation(24, IGNORE, MEAN, STD, **kwargs)
    expected = [
        per_sample(tv_tensors.Image(i), tv_tensors.Mask(m))
        for i, m in zip(images, masks, strict=True)
    ]
    augment = SegmentationAugment(24, IGNORE, MEAN, STD, **kwargs)
    out_images, out_masks = augment((images, masks), torch.Generator().manual_seed(0))
    assert torch.equal(out_images, torch.stack([e[0] for e in expected]))
    assert torch.equal(out_masks, torch.stack([e[1] for e in expected]))


def test_segmentation_colour_jitter_is_distributed_like_torchvision_and_spares_the_mask():
    image = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    mask = torch.randint(0, 5, (8, 8), dtype=torch.uint8)
    kwargs = {"scale_range": (1.0, 1.0), "hflip": 0.0, "color_jitter": {"brightness": 0.5}}
    (ours, ours_masks), (theirs, _) = _segmentation_outputs(
        SegmentationAugment(8, IGNORE, **RAW, **kwargs),
        torchvision_segmentation(8, IGNORE, **RAW, **kwargs),
        image,
        mask,
    )
    assert ours_masks.eq(mask.long()).all()
    # A grey image stays uniform; its value is 100 * factor, factor uniform in [0.5, 1.5].
    assert_same_distribution(
        (ours[:, 0, 0, 0] // 10).tolist(), (theirs[:, 0, 0, 0] // 10).tolist(), "brightness"
    )


def test_segmentation_is_a_function_of_the_generator_seed(device):
    images = [torch.randint(0, 256, (3, 30 + i, 40), dtype=torch.uint8) for i in range(4)]
    masks = [torch.randint(0, 5, image.shape[1:], dtype=torch.uint8) for image in images]
    images, masks = [i.to(device) for i in images], [m.to(device) for m in masks]
    augment = SegmentationAugment(32, IGNORE, MEAN, STD, color_jitter={"hue": 0.1})

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = augment((images, masks), torch.Generator(device=device).manual_seed(seed))
        assert out[0].device == images[0].device == out[1].device
        return out

    (image_a, mask_a), (image_b, mask_b), (image_c, _) = run(1), run(1), run(2)
    assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)
    assert not torch.equal(image_a, image_c)


# One implementation, two paths --------------------------------------------------------------


def test_classification_samples_one_by_one_equal_the_batch_for_the_same_generator():
    """`sample` (the loader's path without a cache) is the batch path on a batch of one:
    samples augmented one after another from a generator equal the whole batch augmented
    from the same seed, bit for bit; without a generator it draws from the global one."""
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(24)
    augment = ClassificationAugment(32, MEAN, STD, crop_padding=4, hflip=0.5)
    batch, batch_labels = augment((images, labels), torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    one_by_one = [
        augment.sample(image, int(label), generator)
        for image, label in zip(images, labels, strict=True)
    ]
    assert torch.equal(torch.stack([image for image, _ in one_by_one]), batch)
    assert [label for _, label in one_by_one] == batch_labels.tolist()
    assert len({image.sum().item() for image, _ in one_by_one}) > 1  # really augmented
    torch.manual_seed(3)
    drawn = augment.sample(images[0], 0)
    assert torch.equal(drawn[0], augment.sample(images[0], 0, torch.Generator().manual_seed(3))[0])


def test_segmentation_samples_one_by_one_equal_the_batch_for_the_same_generator():
    images = [torch.randint(0, 256, (3, 20 + 3 * i, 30 - i), dtype=torch.uint8) for i in range(6)]
    masks = [torch.randint(0, 5, image.shape[1:], dtype=torch.uint8) for image in images]
    augment = SegmentationAugment(
        16, IGNORE, MEAN, STD, color_jitter={"brightness": 0.4, "hue": 0.1}
    )
    batch_images, batch_masks = augment((images, masks), torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    one_by_one = [augment.sample(i, m, generator) for i, m in zip(images, masks, strict=True)]
    assert torch.equal(torch.stack([image for image, _ in one_by_one]), batch_images)
    assert torch.equal(torch.stack([mask for _, mask in one_by_one]), batch_masks)
    assert batch_masks.dtype == torch.int64 and batch_images.shape == (6, 3, 16, 16)


# The datamodule hook ----------------------------------------------------------------------

SEED = 7


class _CachedData(SeglabDataModule):
    """12 uint8 training images (3 batches) augmented by the hook; float validation
    images, which the augmentation would refuse."""

    task = "classification"

    def __init__(self) -> None:
        super().__init__(
            class_names=["a", "b"],
            num_classes=2,
            ignore_index=IGNORE,
            input_size=4,
            batch_size=4,
            num_workers=0,
            pin_memory=False,
        )
        self.calls: list[tuple[str, int]] = []  # (trainer stage, generator seed)

    def setup(self, stage: str | None = None) -> None:
        images = torch.randint(0, 256, (12, 3, 4, 4), generator=torch.Generator().manual_seed(0))
        labels = torch.arange(12) % 2
        self.train_set = TensorDataset(images.to(torch.uint8), labels)
        self.val_set = TensorDataset(images[:4].float(), labels[:4])
        augment = ClassificationAugment(4, self.mean, self.std, crop_padding=1)

        def transform(batch, generator: torch.Generator):
            self.calls.append((self.trainer.state.stage.value, generator.initial_seed()))
            return augment(batch, generator)

        self.train_batch_transform = transform


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(48, 2)
        self.train_batches: list[tuple[int, int, torch.Tensor]] = []
        self.val_batches: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.train_batches.append((self.current_epoch, batch_idx, images.clone()))
        return F.cross_entropy(self.net(images.flatten(1)), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.val_batches.append(images.clone())
        self.log("val_loss", F.cross_entropy(self.net(images.flatten(1)), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _fit(
    root: Path, epochs: int, ckpt_path: Path | None = None, precision: str = "32-true"
) -> tuple[_Tiny, _CachedData]:
    L.seed_everything(SEED)
    module, data = _Tiny(), _CachedData()
    trainer = L.Trainer(
        max_epochs=epochs,
        precision=precision,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, data


def test_hook_augments_training_batches_only_seeded_by_seed_epoch_batch_and_rank(tmp_path):
    module, data = _fit(tmp_path, epochs=2)
    # 3 training batches per epoch went through the transform, nothing else did.
    assert [stage for stage, _ in data.calls] == ["train"] * 6
    assert [(e, i) for e, i, _ in module.train_batches] == [
        (e, i) for e in (0, 1) for i in (0, 1, 2)
    ]
    assert all(images.dtype == torch.float32 for *_, images in module.train_batches)
    # Validation (sanity check included) saw its float images untouched.
    untouched = data.val_set.tensors[0]
    assert len(module.val_batches) == 3 and all(
        torch.equal(v, untouched) for v in module.val_batches
    )
    # The generator of batch i of epoch e on rank 0 is seeded by (run seed, e, i, 0).
    expected = [batch_seed(SEED, e, i, 0) for e, i, _ in module.train_batches]
    assert [seed for _, seed in data.calls] == expected
    assert len(set(expected)) == 6


def test_resuming_at_an_epoch_boundary_repeats_the_augmented_batches(tmp_path):
    whole, _ = _fit(tmp_path / "whole", epochs=2)
    _fit(tmp_path / "parts", epochs=1)
    resumed, _ = _fit(
        tmp_path / "parts", epochs=2, ckpt_path=tmp_path / "parts/checkpoints/last.ckpt"
    )

    second_epoch = [b for b in whole.train_batches if b[0] == 1]
    assert [b[:2] for b in resumed.train_batches] == [b[:2] for b in second_epoch]
    for (*_, ours), (*_, theirs) in zip(resumed.train_batches, second_epoch, strict=True):
        assert torch.equal(ours, theirs)
    for name, weight in whole.state_dict().items():
        assert torch.equal(weight, resumed.state_dict()[name]), name


def test_hook_output_takes_the_true_half_precision_input_dtype(tmp_path):
    # Lightning converts float inputs to bf16 before the transfer; the augmentation turns
    # uint8 into float32 after it, so the hook converts again.
    module, _ = _fit(tmp_path, epochs=1, precision="bf16-true")
    assert {images.dtype for *_, images in module.train_batches} == {torch.bfloat16}
