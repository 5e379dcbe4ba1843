"""Shared fixtures: configs composed like the command line's, shrunk to run in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from seglab.config import compose

# Small, fast variants of the embedded datasets and a CPU trainer without logs.
TINY = [
    "data.num_train=8",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
    "data.image_size=64",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_model_summary=false",
]


@pytest.fixture
def tiny() -> list[str]:
    """Overrides that shrink a run to seconds (for command-line runs)."""
    return list(TINY)


@pytest.fixture
def make_cfg(tmp_path: Path):
    """`make_cfg(*overrides)` -> the composed train config, tiny, writing into tmp_path
    (or `output_dir=`)."""

    def _make(*overrides: str, tiny: bool = True, output_dir: Path | None = None) -> DictConfig:
        return compose(
            overrides=[*(TINY if tiny else []), *overrides], output_dir=output_dir or tmp_path
        )

    return _make
