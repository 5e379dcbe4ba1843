"""Whole-image, sliding-window, flip and multi-scale inference."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.inference import SegmentationInference
from seglab.modules import SegmentationModule


class _ShapeCheckingNet(nn.Module):
    """A fixed random 3x3 conv (3 -> 4 classes) that insists on sizes divisible by 32."""

    def __init__(self, divisor: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.divisor == 0 and x.shape[-1] % self.divisor == 0, x.shape
        return self.conv(x)


def _pointwise() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 1)


def test_slide_with_window_equal_to_image_equals_whole():
    net = _ShapeCheckingNet()
    images = torch.randn(2, 3, 64, 96)
    whole = SegmentationInference()(net, images)
    slide = SegmentationInference(mode="slide", window=(64, 96), stride=(32, 32))(net, images)
    assert whole.shape == (2, 4, 64, 96)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)


def test_whole_pads_to_the_divisor_and_crops_back():
    """A 50x70 image is padded to 64x96 for the net; the logits come back at 50x70 and
    equal the net's on the padded image, cropped."""
    net = _ShapeCheckingNet()
    images = torch.randn(1, 3, 50, 70)
    logits = SegmentationInference()(net, images)
    assert logits.shape == (1, 4, 50, 70)
    expected = net(F.pad(images, (0, 26, 0, 14)))[..., :50, :70]
    torch.testing.assert_close(logits, expected)


def test_overlapping_windows_are_averaged_not_summed():
    """A pointwise net gives the same logits in every window, so any tiling that covers
    each pixel and divides by its count reproduces the whole-image logits."""
    net = _pointwise()
    images = torch.randn(2, 3, 50, 70)
    whole = net(images)
    for window, stride in [((24, 24), (10, 10)), ((32, 48), (16, 40)), ((64, 80), (8, 8))]:
        slide = SegmentationInference(mode="slide", window=window, stride=stride, size_divisor=1)(
            net, images
        )
        assert slide.shape == whole.shape
        torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


def test_sliding_windows_cover_the_last_rows_and_columns():
    """Windows must reach the bottom/right edges even when the stride does not divide the
    image; a net returning ones counted per window shows every pixel covered."""

    class Counter(nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 1, *x.shape[-2:])

    inference = SegmentationInference(
        mode="slide", window=(16, 16), stride=(15, 15), size_divisor=1
    )
    seen = inference(Counter(), torch.zeros(1, 3, 50, 70))
    assert torch.equal(seen, torch.ones(1, 1, 50, 70))


def test_flip_averages_with_the_mirrored_prediction():
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 3, padding=1)  # not mirror-symmetric
    images = torch.randn(1, 3, 32, 32)
    expected = (net(images) + net(images.flip(-1)).flip(-1)) / 2
    got = SegmentationInference(flip=True)(net, images)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, net(images))


def test_multi_scale_resizes_and_averages():
    net = _pointwise()
    images = torch.randn(1, 3, 32, 32)
    half = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    back = F.interpolate(net(half), size=(32, 32), mode="bilinear", align_corners=False)
    expected = (back + net(images)) / 2
    got = SegmentationInference(scales=[0.5, 1.0], size_divisor=1)(net, images)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "tiles"}, "'whole' or 'slide'"),
        ({"mode": "slide"}, "needs a window"),
        ({"scales": [0.0, 1.0]}, "positive"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationInference(**kwargs)


def test_default_stride_is_two_thirds_of_the_window():
    assert SegmentationInference(mode="slide", window=96).stride == (64, 64)


def test_module_logits_go_through_its_inference_when_set():
    """`predict_logits` (validation, test, predict, TensorBoard samples): the net alone
    without an inference, `inference(net, images)` with one; training always the net."""
    net = _pointwise()
    module = SegmentationModule(
        net,
        nn.CrossEntropyLoss(),
        partial(torch.optim.SGD, lr=0.1),
        class_names=list("abcd"),
        ignore_index=255,
    )
    images = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(module.predict_logits(images), net(images))
    module.inference = SegmentationInference(flip=True, size_divisor=1)
    expected = (net(images) + net(images.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(module.predict_logits(images), expected)
    torch.testing.assert_close(module(images), net(images))
