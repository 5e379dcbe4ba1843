"""The speed options: channels_last weights and inputs give the values NCHW gives, and
`trainer.precision=auto` picks bf16 only where the device computes it natively."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from seglab.errors import SeglabError
from seglab.lightning_compat import auto_precision
from seglab.models import SimpleCNN
from seglab.modules import ClassificationModule


def _module(memory_format: str) -> ClassificationModule:
    torch.manual_seed(0)
    return ClassificationModule(
        SimpleCNN(3, 4, 32),
        torch.nn.CrossEntropyLoss(),
        partial(torch.optim.Adam, lr=1e-3),
        class_names=list("abcd"),
        ignore_index=-100,
        memory_format=memory_format,
    )


def test_channels_last_gives_the_values_of_nchw_and_runs_in_nhwc():
    nhwc, nchw = _module("channels_last"), _module("contiguous")
    conv = next(m for m in nhwc.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    images = torch.randn(5, 3, 32, 32)
    assert nhwc.formatted(images).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc(images), nchw(images), rtol=1e-4, atol=1e-5)
    # The weights save and load across formats: a state dict holds values, not strides.
    nchw.load_state_dict(nhwc.state_dict())
    torch.testing.assert_close(nhwc(images), nchw(images), rtol=1e-4, atol=1e-5)


def test_an_unknown_memory_format_is_one_error_naming_the_choices():
    with pytest.raises(SeglabError, match="channels_last.*contiguous.*'nhwc'"):
        _module("nhwc")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    precision, why = auto_precision(on_cpu=True)
    assert precision == ("bf16-mixed" if native else "32-true")
    assert ("natively" in why) == native
