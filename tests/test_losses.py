"""seglab.losses and the loss configs of conf/loss/."""

from __future__ import annotations

import hydra
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.config import compose
from seglab.losses import CrossEntropyLoss, WeightedSumLoss

IGNORE = 255
NUM_CLASSES = 4
LOSS_CONFIGS = ["ce", "dice", "focal", "ce_dice"]


def _batch(shape=(2, NUM_CLASSES, 3, 5), seed=0):
    """Random logits and a target with a few void pixels (and their mask)."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    logits = torch.randn(shape, generator=gen)
    target = torch.randint(0, c, (n, h, w), generator=gen)
    void = torch.rand(n, h, w, generator=gen) < 0.3
    void[0, 0, 0] = True  # at least one void pixel
    void[0, 0, 1] = False  # and at least one labelled one
    target[void] = IGNORE
    return logits, target, void


def _perturb_void(logits: torch.Tensor, void: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """`logits` with new, large values at the void pixels only."""
    gen = torch.Generator().manual_seed(seed)
    changed = logits.detach().clone()
    noise = 50 * torch.randn(changed.shape, generator=gen)
    mask = void.unsqueeze(1).expand_as(changed)
    changed[mask] = noise[mask]
    return changed


def _hand_ce(logits, target, weight=None):
    """Mean (or weight-normalised) CE over the labelled pixels via log_softmax + gather."""
    logp = torch.log_softmax(logits.double(), dim=1)
    keep = target != IGNORE
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)[keep]
    if weight is None:
        return nll.mean()
    w = torch.as_tensor(weight, dtype=torch.double)[target[keep]]
    return (w * nll).sum() / w.sum()


def _loss_and_grad(loss_fn, logits, target):
    x = logits.detach().clone().requires_grad_(True)
    value = loss_fn(x, target)
    value.backward()
    return value.detach(), x.grad


# --- CrossEntropyLoss -------------------------------------------------------------------


def test_ce_is_mean_over_labelled_pixels():
    logits, target, void = _batch()
    assert void.any() and (~void).any()
    loss = CrossEntropyLoss(ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(loss.double(), _hand_ce(logits, target))
    # A mean over all pixels (void counted as class 0) would differ.
    as_zero = torch.where(void, torch.zeros_like(target), target)
    assert not torch.allclose(loss.double(), _hand_ce(logits, as_zero))


def test_ce_void_pixels_change_nothing_and_get_zero_gradient():
    logits, target, void = _batch()
    loss_fn = CrossEntropyLoss(ignore_index=IGNORE)
    value, grad = _loss_and_grad(loss_fn, logits, target)
    changed = _perturb_void(logits, void)
    assert not torch.equal(changed, logits)
    value2, grad2 = _loss_and_grad(loss_fn, changed, target)

    torch.testing.assert_close(value2, value)
    keep = (~void).unsqueeze(1).expand_as(grad)
    torch.testing.assert_close(grad2[keep], grad[keep])
    assert grad[keep].abs().sum() > 0
    void_mask = void.unsqueeze(1).expand_as(grad)
    assert torch.all(grad[void_mask] == 0) and torch.all(grad2[void_mask] == 0)


def test_ce_list_weights_match_torch_with_tensor_weights():
    weight = [0.5, 2.0, 1.0, 3.0]
    logits, target, _ = _batch(seed=3)
    ours = CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
    assert isinstance(ours.weight, torch.Tensor)
    torch.testing.assert_close(ours.weight, torch.tensor(weight))
    reference = nn.CrossEntropyLoss(weight=torch.tensor(weight), ignore_index=IGNORE)
    torch.testing.assert_close(ours(logits, target), reference(logits, target))
    torch.testing.assert_close(ours(logits, target).double(), _hand_ce(logits, target, weight))
    # The weights really matter: unweighted CE is a different number.
    unweighted = CrossEntropyLoss(ignore_index=IGNORE)(logits, target)
    assert not torch.allclose(ours(logits, target), unweighted)


def test_ce_weight_is_a_buffer_that_follows_to():
    loss = CrossEntropyLoss(weight=(1.0, 2.0, 3.0, 4.0), ignore_index=IGNORE)
    assert "weight" in dict(loss.named_buffers())
    assert "weight" in loss.state_dict()
    loss = loss.to(torch.float64)
    assert loss.weight.dtype == torch.float64
    assert loss.to("meta").weight.device.type == "meta"


def test_ce_without_weight_has_none():
    assert CrossEntropyLoss().weight is None


def test_ce_label_smoothing_is_passed_through():
    logits, target, _ = _batch(seed=4)
    ours = CrossEntropyLoss(ignore_index=IGNORE, label_smoothing=0.1)(logits, target)
    ref = F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=0.1)
    torch.testing.assert_close(ours, ref)


# --- WeightedSumLoss --------------------------------------------------------------------


class _MeanSquare(nn.Module):
    def forward(self, logits, target):
        return (logits**2).mean()


def test_weighted_sum_missing_weight_defaults_to_one():
    logits, target, _ = _batch(seed=5)
    a = CrossEntropyLoss(ignore_index=IGNORE)
    b = _MeanSquare()
    total = WeightedSumLoss(losses={"a": a, "b": b}, weights={"a": 2.0})
    expected = 2 * _hand_ce(logits, target) + (logits.double() ** 2).mean()
    torch.testing.assert_close(total(logits, target).double(), expected)
    assert total.weights == {"a": 2.0, "b": 1.0}


def test_weighted_sum_without_weights_is_plain_sum():
    logits, target, _ = _batch(seed=6)
    total = WeightedSumLoss({"a": CrossEntropyLoss(ignore_index=IGNORE), "b": _MeanSquare()})
    expected = _hand_ce(logits, target) + (logits.double() ** 2).mean()
    torch.testing.assert_close(total(logits, target).double(), expected)


def test_weighted_sum_registers_submodules():
    total = WeightedSumLoss({"ce": CrossEntropyLoss(weight=[1.0, 2.0])})
    assert "losses.ce.weight" in total.state_dict()


def test_weighted_sum_unknown_weight_name_raises():
    with pytest.raises(ValueError, match="typo"):
        WeightedSumLoss(losses={"a": _MeanSquare()}, weights={"a": 1.0, "typo": 2.0})


# --- conf/loss/*.yaml -------------------------------------------------------------------


def _instantiate_loss(name: str, tmp_path) -> nn.Module:
    cfg = compose([f"loss={name}"], output_dir=tmp_path)
    assert cfg.data.ignore_index == IGNORE and cfg.data.num_classes == NUM_CLASSES
    return hydra.utils.instantiate(cfg.loss)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ce", "seglab.losses.CrossEntropyLoss"),
        ("dice", "segmentation_models_pytorch.losses.dice.DiceLoss"),
        ("focal", "segmentation_models_pytorch.losses.focal.FocalLoss"),
        ("ce_dice", "seglab.losses.WeightedSumLoss"),
    ],
)
def test_loss_config_instantiates(name, cls, tmp_path):
    loss = _instantiate_loss(name, tmp_path)
    assert f"{type(loss).__module__}.{type(loss).__name__}" == cls


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_loss_config_is_finite_and_backpropagates(name, tmp_path):
    torch.manual_seed(0)
    loss_fn = _instantiate_loss(name, tmp_path)
    logits, target, void = _batch(shape=(2, NUM_CLASSES, 16, 16))
    value, grad = _loss_and_grad(loss_fn, logits, target)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    assert torch.isfinite(grad).all()
    assert grad[(~void).unsqueeze(1).expand_as(grad)].abs().sum() > 0


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_loss_config_ignores_void_pixels(name, tmp_path):
    loss_fn = _instantiate_loss(name, tmp_path)
    logits, target, void = _batch(shape=(2, NUM_CLASSES, 16, 16))
    value, grad = _loss_and_grad(loss_fn, logits, target)
    value2, grad2 = _loss_and_grad(loss_fn, _perturb_void(logits, void), target)
    torch.testing.assert_close(value2, value)
    void_mask = void.unsqueeze(1).expand_as(grad)
    assert torch.all(grad[void_mask] == 0) and torch.all(grad2[void_mask] == 0)


def test_ce_config_matches_hand_ce(tmp_path):
    logits, target, _ = _batch(shape=(2, NUM_CLASSES, 16, 16))
    value = _instantiate_loss("ce", tmp_path)(logits, target)
    torch.testing.assert_close(value.double(), _hand_ce(logits, target))


def test_ce_dice_config_is_ce_plus_dice(tmp_path):
    logits, target, _ = _batch(shape=(2, NUM_CLASSES, 16, 16))
    combined = _instantiate_loss("ce_dice", tmp_path)
    assert set(combined.losses) == {"ce", "dice"}
    assert combined.weights == {"ce": 1.0, "dice": 1.0}
    dice = _instantiate_loss("dice", tmp_path)(logits, target)
    torch.testing.assert_close(
        combined(logits, target).double(), _hand_ce(logits, target) + dice.double()
    )
