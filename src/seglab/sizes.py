"""Image sizes as written in configs: one int (a square) or [height, width]."""

from __future__ import annotations

from collections.abc import Sequence


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or [height, width] (a plain list or an OmegaConf ListConfig) -> (H, W)."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))
