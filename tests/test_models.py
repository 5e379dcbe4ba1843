"""Segmentation networks (seglab's FCN and smp nets from config) and the SimpleCNN classifier."""

from __future__ import annotations

import hydra
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.config import compose
from seglab.models import FCN, SimpleCNN

BATCH = 2


def _from_config(overrides: list[str], tmp_path) -> nn.Module:
    cfg = compose(overrides, output_dir=tmp_path)
    assert cfg.model.encoder_weights is None  # no download
    return hydra.utils.instantiate(cfg.model)


class _SegmentationNetTest:
    """Shared checks; a subclass sets `num_classes` and implements `make_model`."""

    num_classes: int

    def make_model(self, tmp_path) -> nn.Module:
        raise NotImplementedError

    def _model(self, tmp_path, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.make_model(tmp_path)

    @pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 128)])
    def test_forward_shape(self, tmp_path, height, width):
        model = self._model(tmp_path).eval()
        with torch.no_grad():
            out = model(torch.randn(BATCH, 3, height, width))
        assert out.shape == (BATCH, self.num_classes, height, width)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()

    def test_backward_gives_finite_grads(self, tmp_path):
        model = self._model(tmp_path).train()
        x = torch.randn(BATCH, 3, 64, 64)
        target = torch.randint(0, self.num_classes, (BATCH, 64, 64))
        F.cross_entropy(model(x), target).backward()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert params
        missing = [n for n, p in params if p.grad is None]
        assert not missing, f"no gradient for {missing}"
        bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
        assert not bad, f"non-finite gradient for {bad}"
        assert sum(p.grad.abs().sum() for _, p in params) > 0

    def test_state_dict_round_trip(self, tmp_path):
        model = self._model(tmp_path, seed=0)
        with torch.no_grad():  # move BatchNorm running stats off their initial values
            model.train()(torch.randn(BATCH, 3, 64, 64))
        path = tmp_path / "weights.pt"
        torch.save(model.state_dict(), path)

        fresh = self._model(tmp_path, seed=1).eval()
        model.eval()
        x = torch.randn(BATCH, 3, 64, 64)
        with torch.no_grad():
            expected = model(x)
            assert not torch.allclose(fresh(x), expected)  # differs before loading
            fresh.load_state_dict(torch.load(path, weights_only=True))
            torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)

    def test_eval_mode_is_deterministic(self, tmp_path):
        model = self._model(tmp_path).eval()
        x = torch.randn(BATCH, 3, 64, 64)
        with torch.no_grad():
            first = model(x)
            second = model(x)
        assert torch.equal(first, second)


class _FCNTest(_SegmentationNetTest):
    num_classes = 5
    variant: str

    def make_model(self, tmp_path):
        return FCN(
            num_classes=self.num_classes,
            encoder_name="resnet18",
            encoder_weights=None,
            variant=self.variant,
        )


class TestFCN8s(_FCNTest):
    variant = "8s"


class TestFCN16s(_FCNTest):
    variant = "16s"


class TestFCN32s(_FCNTest):
    variant = "32s"


class TestSmpUnet(_SegmentationNetTest):
    num_classes = 4  # data.num_classes of the default data config

    def make_model(self, tmp_path):
        return _from_config(["model=unet"], tmp_path)


class TestSmpFPN(_SegmentationNetTest):
    num_classes = 4

    def make_model(self, tmp_path):
        return _from_config(["model=smp"], tmp_path)


def test_config_models_have_the_expected_types(tmp_path):
    import segmentation_models_pytorch as smp

    assert type(_from_config(["model=unet"], tmp_path)) is smp.Unet
    assert type(_from_config(["model=smp"], tmp_path)) is smp.FPN
    fcn = _from_config(["model=fcn"], tmp_path)
    assert type(fcn) is FCN and fcn.skip_strides == (16, 8)


# --- FCN specifics ----------------------------------------------------------------------


def test_fcn_unknown_variant_raises():
    with pytest.raises(ValueError, match="4s"):
        FCN(num_classes=3, variant="4s")


@pytest.mark.parametrize(("variant", "strides"), [("8s", (16, 8)), ("16s", (16,)), ("32s", ())])
def test_fcn_skip_layers_start_at_zero(variant, strides):
    torch.manual_seed(0)
    model = FCN(num_classes=5, variant=variant)
    assert model.skip_strides == strides
    assert len(model.skip_scores) == len(strides)
    # resnet18 channels: 128 at stride 8, 256 at stride 16.
    channels = {8: 128, 16: 256}
    for stride, score in zip(strides, model.skip_scores, strict=True):
        assert score.in_channels == channels[stride] and score.out_channels == 5
        assert torch.count_nonzero(score.weight) == 0 and torch.count_nonzero(score.bias) == 0


def _fcn_pair():
    torch.manual_seed(0)
    fcn8 = FCN(num_classes=5, variant="8s").eval()
    torch.manual_seed(1)
    fcn32 = FCN(num_classes=5, variant="32s").eval()
    result = fcn32.load_state_dict(fcn8.state_dict(), strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == [
        "skip_scores.0.bias",
        "skip_scores.0.weight",
        "skip_scores.1.bias",
        "skip_scores.1.weight",
    ]
    return fcn8, fcn32


def test_fresh_fcn8s_is_the_stride32_head_upsampled_through_the_skip_resolutions():
    # The zero-initialised skip layers contribute nothing: FCN-8s at init is exactly the
    # stride-32 head's scores, resized 1/32 -> 1/16 -> 1/8 -> 1 (computed here by hand).
    fcn8, fcn32 = _fcn_pair()
    x = torch.randn(BATCH, 3, 96, 128)
    with torch.no_grad():
        coarse = fcn32.head(fcn32.encoder(x)[5])
        assert coarse.shape == (BATCH, 5, 3, 4)
        expected = coarse
        for size in [(6, 8), (12, 16), (96, 128)]:
            expected = F.interpolate(expected, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(fcn8(x), expected, rtol=0, atol=1e-6)
        # ... and FCN-32s is the same head resized in one step.
        direct = F.interpolate(coarse, size=(96, 128), mode="bilinear", align_corners=False)
        torch.testing.assert_close(fcn32(x), direct, rtol=0, atol=1e-6)


def test_fresh_fcn8s_equals_fcn32s_when_the_head_map_is_one_pixel():
    # 32x32 input: the stride-32 scores are 1x1, every resize is a broadcast.
    fcn8, fcn32 = _fcn_pair()
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fcn8(x), fcn32(x), rtol=0, atol=1e-6)


# --- SimpleCNN --------------------------------------------------------------------------


def _dense_in(size: int) -> int:
    # conv3 (valid) -> pool2 -> conv3 -> pool2 -> conv3
    return ((size - 2) // 2 - 2) // 2 - 2


def _expected_params(height: int, width: int, classes: int, channels: int = 3) -> int:
    convs = (channels * 9 + 1) * 32 + (32 * 9 + 1) * 64 + (64 * 9 + 1) * 64
    dense = (64 * _dense_in(height) * _dense_in(width) + 1) * 64 + (64 + 1) * classes
    return convs + dense


class TestSimpleCNN:
    @pytest.mark.parametrize(("input_size", "classes"), [(32, 10), ((40, 48), 7), (18, 3)])
    def test_output_shape(self, input_size, classes):
        torch.manual_seed(0)
        model = SimpleCNN(num_classes=classes, input_size=input_size)
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        out = model(torch.randn(BATCH, 3, h, w))
        assert out.shape == (BATCH, classes)
        assert model.input_size == (h, w)

    def test_tutorial_parameter_count(self):
        model = SimpleCNN(in_channels=3, num_classes=10, input_size=32)
        assert sum(p.numel() for p in model.parameters()) == 122_570
        assert _expected_params(32, 32, 10) == 122_570

    def test_rectangular_input_parameter_count(self):
        model = SimpleCNN(num_classes=7, input_size=(40, 48))
        # 40 -> 38 -> 19 -> 17 -> 8 -> 6 rows, 48 -> 46 -> 23 -> 21 -> 10 -> 8 columns
        assert model.classifier[1].in_features == 64 * 6 * 8
        assert sum(p.numel() for p in model.parameters()) == _expected_params(40, 48, 7)

    def test_backward(self):
        torch.manual_seed(0)
        model = SimpleCNN()
        loss = F.cross_entropy(model(torch.randn(BATCH, 3, 32, 32)), torch.tensor([1, 7]))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    @pytest.mark.parametrize(
        ("input_size", "shape", "match"),
        [
            (32, (28, 28), "32x32.*28x28"),
            ((40, 48), (48, 40), "40x48.*48x40"),
        ],
    )
    def test_wrong_input_size_raises(self, input_size, shape, match):
        model = SimpleCNN(input_size=input_size)
        with pytest.raises(ValueError, match=match):
            model(torch.randn(1, 3, *shape))

    @pytest.mark.parametrize("input_size", [17, (17, 32), (32, 10), 1])
    def test_input_size_below_18_raises(self, input_size):
        with pytest.raises(ValueError, match="at least 18"):
            SimpleCNN(input_size=input_size)
