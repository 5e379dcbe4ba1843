"""Errors reach the user as one line naming the problem, wherever they were raised."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from seglab.errors import SeglabError, exit_message


class _Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise SeglabError(f"cannot read image /data/{index}.png (train split): truncated")


def test_error_from_a_loader_worker_prints_the_original_message_only():
    loader = DataLoader(_Broken(), batch_size=2, num_workers=1)
    with pytest.raises(SeglabError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # torch's re-raise carries the worker traceback
    line = exit_message(info.value)
    assert line == (
        "seglab: error: cannot read image /data/0.png (train split): truncated "
        "(raised in a DataLoader worker)"
    )


def test_error_from_the_main_process_is_printed_as_is():
    err = SeglabError("data.root=/nowhere does not exist")
    assert exit_message(err) == "seglab: error: data.root=/nowhere does not exist"
