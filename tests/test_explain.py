"""Grad-CAM class activation maps (seglab.explain): where they point, their shape and
range on odd-sized images, the state they leave behind, class names and the overlay."""

from __future__ import annotations

import sys

import captum  # noqa: F401, E402  (a dev dependency: missing, the tests fail, never skip)
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from matplotlib import colormaps
from torch import nn

from seglab.errors import SeglabError
from seglab.explain import class_activation_maps, overlay_heatmap, resolve_class, target_layer
from seglab.inference import class_indices
from seglab.models import FCN, SimpleCNN
from seglab.modules import build_module

HEIGHT, WIDTH = 45, 70  # multiples of neither 32 nor 2


class TwoRegionNet(nn.Module):
    """Class 1's evidence is input channel 0, class 0's is channel 1, read through a
    1x1 conv `features` (the Grad-CAM layer) that copies them. Segmentation: per-pixel
    logits; classification: the logits' spatial means."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        self.head = nn.Conv2d(2, 3, 1)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(2, 3).view(2, 3, 1, 1))
            # class 0 <- channel 1, class 1 <- channel 0, class 2 never wins (channel 0 - 10)
            self.head.weight.copy_(torch.tensor([[0.0, 1], [1, 0], [1, 0]]).view(3, 2, 1, 1))
            self.head.bias.copy_(torch.tensor([0.0, 0, -10]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))  # (N, 3, H, W)
        return logits if self.task == "segmentation" else logits.mean(dim=(2, 3))


def _two_region_images() -> torch.Tensor:
    """Channel 0 bright on the left half, channel 1 on the right, channel 2 noise."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 40) * 0.1
    images[:, 0, :, :20] += 1.0
    images[:, 1, :, 20:] += 1.0
    return images


@pytest.mark.parametrize("task", ["segmentation", "classification"])
@pytest.mark.parametrize(("target", "bright"), [(1, "left"), (0, "right")])
def test_map_is_high_where_the_class_evidence_is(task, target, bright):
    net = TwoRegionNet(task).eval()
    cam = class_activation_maps(net, _two_region_images(), target, task, layer=net.features)
    left, right = cam[..., :20].mean(dim=(1, 2)), cam[..., 20:].mean(dim=(1, 2))
    high, low = (left, right) if bright == "left" else (right, left)
    assert (high > 0.8).all() and (low < 0.2).all(), (left, right)


def test_classification_target_none_explains_each_images_prediction():
    net = TwoRegionNet("classification").eval()
    images = _two_region_images()
    images[0, 1] *= 0.5  # image 0: more class-1 evidence, predicted as class 1
    images[1, 0] *= 0.5  # image 1: more class-0 evidence, predicted as class 0
    assert net(images).argmax(dim=1).tolist() == [1, 0]
    cam = class_activation_maps(net, images, None, "classification", layer=net.features)
    assert cam[0, :, :20].mean() > cam[0, :, 20:].mean()  # class 1: the left
    assert cam[1, :, 20:].mean() > cam[1, :, :20].mean()  # class 0: the right


def test_segmentation_class_never_predicted_uses_all_pixels():
    # Class 2 wins no pixel; explained over all pixels its map is class 1's (channel 0),
    # where an empty pixel set would give no gradient and an all-zero map.
    net = TwoRegionNet("segmentation").eval()
    images = _two_region_images()
    assert not (class_indices(net(images)) == 2).any()
    cam = class_activation_maps(net, images, 2, "segmentation", layer=net.features)
    assert (cam[..., :20].mean(dim=(1, 2)) > 0.8).all()


def _seg_grad_cam_by_hand(net: nn.Module, images: torch.Tensor, target: int) -> torch.Tensor:
    """Seg-Grad-CAM on an smp net's decoder output, without Captum or hooks."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, -width % 32, 0, -height % 32))
    with torch.no_grad():
        acts = net.decoder(net.encoder(padded))  # (N, K, h, w)
    acts.requires_grad_(True)
    logits = net.segmentation_head(acts)[..., :height, :width]
    chosen = logits.argmax(dim=1) == target
    chosen |= ~chosen.flatten(1).any(dim=1).view(-1, 1, 1)
    (grads,) = torch.autograd.grad((logits[:, target] * chosen).sum(), acts)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=padded.shape[-2:], mode="bilinear")[:, 0, :height, :width]
    peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak, 0.0)


@pytest.fixture
def unet_module(make_cfg):
    """The repo's default segmentation module (shapes data, smp Unet), untrained, in
    train mode."""
    cfg = make_cfg()
    torch.manual_seed(0)
    module = build_module(
        instantiate(cfg.data),
        instantiate(cfg.model),
        instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
    )
    return module.train()


def test_unet_module_on_odd_sized_images_matches_seg_grad_cam_by_hand(unet_module):
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    target = 1
    with torch.inference_mode():  # as seglab.predict runs
        cam = class_activation_maps(unet_module, images, target)
    assert cam.shape == (2, HEIGHT, WIDTH) and cam.dtype == torch.float32
    assert cam.min() >= 0 and cam.max() <= 1
    assert torch.allclose(cam.amax(dim=(1, 2)), torch.ones(2))  # normalised per image
    net = unet_module.net
    states = {name: sub.training for name, sub in net.named_modules()}
    net.eval()
    expected = _seg_grad_cam_by_hand(net, images, target)
    for name, sub in net.named_modules():
        sub.training = states[name]
    torch.testing.assert_close(cam, expected, atol=1e-4, rtol=1e-4)


def _hook_count(net: nn.Module) -> int:
    return sum(
        len(sub._forward_hooks) + len(sub._forward_pre_hooks) + len(sub._backward_hooks)
        for sub in net.modules()
    )


def test_leaves_no_grads_hooks_or_mode_changes(unet_module):
    net = unet_module.net
    net.encoder.eval()  # a mixed state (as a frozen encoder has) must come back as it was
    states = {name: sub.training for name, sub in net.named_modules()}
    hooks = _hook_count(net)
    weights = {name: p.detach().clone() for name, p in net.state_dict().items()}
    class_activation_maps(unet_module, torch.randn(1, 3, 40, 33), 2)
    assert all(p.grad is None for p in unet_module.parameters())
    assert {name: sub.training for name, sub in net.named_modules()} == states
    assert _hook_count(net) == hooks
    # eval mode inside: BatchNorm running statistics unchanged
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, weights[name], msg=name)
    # the same after a failure inside Captum's forward (a class the net does not have)
    with pytest.raises(SeglabError, match="target class 9 is out of range"):
        class_activation_maps(unet_module, torch.randn(1, 3, 40, 33), 9)
    assert _hook_count(net) == hooks
    assert {name: sub.training for name, sub in net.named_modules()} == states


def test_cnn_classifier_on_odd_sized_images():
    torch.manual_seed(0)
    net = SimpleCNN(num_classes=5, input_size=(37, 45)).train()
    images = torch.randn(3, 3, 37, 45)
    cam = class_activation_maps(net, images, None, "classification")
    assert cam.shape == (3, 37, 45) and cam.dtype == torch.float32
    assert cam.min() >= 0 and cam.max() <= 1
    assert net.training and all(p.grad is None for p in net.parameters())
    assert not torch.equal(cam, class_activation_maps(net, images, 0, "classification"))


@pytest.mark.parametrize(
    ("net", "layer_name"),
    [
        (FCN(num_classes=3), "head.2"),
        (SimpleCNN(num_classes=3), "features"),
    ],
    ids=["fcn", "cnn"],
)
def test_target_layer_of_seglab_nets(net, layer_name):
    assert target_layer(net) is net.get_submodule(layer_name)


def test_target_layer_of_smp_nets(unet_module):
    assert target_layer(unet_module.net) is unet_module.net.decoder


def test_fcn_maps_on_odd_sized_images():
    torch.manual_seed(0)
    cam = class_activation_maps(
        FCN(num_classes=3), torch.randn(1, 3, HEIGHT, WIDTH), 1, "segmentation"
    )
    assert cam.shape == (1, HEIGHT, WIDTH) and cam.min() >= 0 and cam.max() <= 1


def test_unknown_net_and_bad_arguments_are_refused():
    with pytest.raises(SeglabError, match="no Grad-CAM layer known for Linear"):
        target_layer(nn.Linear(2, 2))
    net = TwoRegionNet("segmentation")
    images = _two_region_images()
    with pytest.raises(SeglabError, match="need a target class"):
        class_activation_maps(net, images, None, "segmentation", layer=net.features)
    with pytest.raises(SeglabError, match="a bare net does not say its task"):
        class_activation_maps(net, images, 1, layer=net.features)


def test_missing_captum_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import raises ImportError
    net = TwoRegionNet("segmentation")
    with pytest.raises(SeglabError, match=r"pip install 'seglab\[explain\]'"):
        class_activation_maps(net, _two_region_images(), 1, "segmentation", layer=net.features)


NAMES = ["background", "cat", "7"]


@pytest.mark.parametrize(
    ("given", "index"), [("cat", 1), ("1", 1), (0, 0), (" background ", 0), ("7", 2), ("2", 2)]
)
def test_resolve_class(given, index):
    assert resolve_class(given, NAMES) == index


@pytest.mark.parametrize("given", ["dog", "3", "-1", ""])
def test_resolve_class_refuses_unknown_classes_listing_them(given):
    with pytest.raises(SeglabError, match="the classes are 0=background, 1=cat, 2=7"):
        resolve_class(given, NAMES)


@pytest.mark.parametrize("cmap", ["jet", "inferno"])
def test_overlay_at_alpha_0_is_the_image_and_at_1_the_colormap(cmap):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cam = rng.random((5, 7))
    assert np.array_equal(overlay_heatmap(image, cam, alpha=0.0, cmap=cmap), image)
    colour = np.rint(colormaps[cmap](cam)[..., :3] * 255).astype(np.uint8)
    out = overlay_heatmap(image, torch.from_numpy(cam), alpha=1.0, cmap=cmap)
    assert out.dtype == np.uint8 and np.array_equal(out, colour)
    half = overlay_heatmap(image, cam, alpha=0.5, cmap=cmap).astype(int)
    assert np.abs(half - (image.astype(int) + colour) / 2).max() <= 1


def test_overlay_refuses_mismatched_inputs():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    with pytest.raises(SeglabError, match="must match"):
        overlay_heatmap(image, np.zeros((6, 4)))
    with pytest.raises(SeglabError, match="uint8"):
        overlay_heatmap(image.astype(np.float32), np.zeros((4, 6)))
    with pytest.raises(SeglabError, match="alpha"):
        overlay_heatmap(image, np.zeros((4, 6)), alpha=1.5)
