"""SegmentationMetrics / metrics_from_confusion against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from seglab.metrics import SegmentationMetrics, metrics_from_confusion

IGNORE = 255
NAMES = ["background", "one", "pred_only", "absent"]
NUM_CLASSES = len(NAMES)

# Two 4x5 images. Class 2 ("pred_only") occurs only in the prediction, class 3 ("absent")
# occurs nowhere once void pixels are dropped: the prediction at every void (255) pixel is
# class 3, so counting a void pixel anywhere would make class 3 appear.
TARGET = torch.tensor(
    [
        [
            [0, 0, 0, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 0, 1, IGNORE],
            [IGNORE, IGNORE, 0, 0, 0],
        ],
        [
            [1, 1, 1, 0, 0],
            [1, 1, 0, 0, 0],
            [IGNORE, 0, 0, 0, 0],
            [0, 0, 0, 1, 1],
        ],
    ]
)
PRED = torch.tensor(
    [
        [
            [0, 0, 1, 1, 1],
            [0, 2, 1, 1, 0],
            [0, 0, 0, 1, 3],
            [3, 3, 0, 2, 0],
        ],
        [
            [1, 1, 0, 0, 0],
            [1, 2, 0, 0, 0],
            [3, 0, 0, 0, 2],
            [0, 0, 0, 1, 0],
        ],
    ]
)

# Rows = target class, columns = predicted class, counted by hand from the masks above.
CONFMAT_IMAGE0 = [
    [8, 1, 2, 0],
    [1, 5, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
]
CONFMAT_IMAGE1 = [
    [11, 0, 1, 0],
    [2, 4, 1, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
]
CONFMAT = [
    [19, 1, 3, 0],
    [3, 9, 1, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
]
NAN = float("nan")

# From CONFMAT and the definitions in seglab.metrics' docstring:
#   target counts (TP + FN) = [23, 13, 0, 0], prediction counts (TP + FP) = [22, 10, 4, 0].
#   IoU: 19 / (23 + 22 - 19), 9 / (13 + 10 - 9), 0 / (0 + 4 - 0), NaN (union 0).
#   Acc: 19 / 23, 9 / 13, NaN, NaN (classes 2 and 3 are not in the target).
#   Dice: 2 * 19 / (23 + 22), 2 * 9 / (13 + 10), 0, NaN.
EXPECTED = {
    "mIoU": (19 / 26 + 9 / 14 + 0.0) / 3,
    "acc": 28 / 36,
    "mAcc": (19 / 23 + 9 / 13) / 2,
    "mDice": (38 / 45 + 18 / 23 + 0.0) / 3,
    "IoU/background": 19 / 26,
    "IoU/one": 9 / 14,
    "IoU/pred_only": 0.0,
    "IoU/absent": NAN,
    "Acc/background": 19 / 23,
    "Acc/one": 9 / 13,
    "Acc/pred_only": NAN,
    "Acc/absent": NAN,
}
# The same for each image on its own (for the "mean of per-batch values" counter-example).
EXPECTED_IMAGE0 = {"mIoU": (8 / 12 + 5 / 7 + 0.0) / 3, "acc": 13 / 17}
EXPECTED_IMAGE1 = {"mIoU": (11 / 14 + 4 / 7 + 0.0) / 3, "acc": 15 / 19}


def _count_confusion(target: torch.Tensor, pred: torch.Tensor) -> list[list[int]]:
    """Plain-python confusion matrix: rows target, columns prediction, void dropped."""
    counts = [[0] * NUM_CLASSES for _ in range(NUM_CLASSES)]
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != IGNORE:
            counts[t][p] += 1
    return counts


def _assert_metrics(result: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(result) == set(expected)
    for key, value in expected.items():
        got = result[key]
        assert got.ndim == 0, key
        if math.isnan(value):
            assert torch.isnan(got), key
        else:
            assert got.item() == pytest.approx(value, rel=1e-6, abs=1e-7), key


def _logits_for(pred: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Float logits (N, C, H, W) whose argmax over C is `pred`."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(pred.shape[0], NUM_CLASSES, *pred.shape[1:], generator=gen)
    one_hot = torch.nn.functional.one_hot(pred, NUM_CLASSES).permute(0, 3, 1, 2).float()
    return noise - 1.0 + 3.0 * one_hot  # chosen class in [2, 3), the others in [-1, 0)


@pytest.fixture
def metric() -> SegmentationMetrics:
    return SegmentationMetrics(NAMES, ignore_index=IGNORE)


def test_hand_counted_confusion_matches_loops():
    # Guards the literal matrices the other tests rely on.
    assert _count_confusion(TARGET[0], PRED[0]) == CONFMAT_IMAGE0
    assert _count_confusion(TARGET[1], PRED[1]) == CONFMAT_IMAGE1
    assert _count_confusion(TARGET, PRED) == CONFMAT
    assert sum(map(sum, CONFMAT)) == int((TARGET != IGNORE).sum())


def test_confusion_matrix_drops_void_pixels(metric):
    metric.update(PRED, TARGET)
    torch.testing.assert_close(metric.confmat, torch.tensor(CONFMAT), check_dtype=False)


def test_compute_matches_hand_computed_metrics(metric):
    metric.update(PRED, TARGET)
    _assert_metrics(metric.compute(), EXPECTED)


def test_absent_class_is_nan_and_left_out_of_means(metric):
    metric.update(PRED, TARGET)
    result = metric.compute()
    assert torch.isnan(result["IoU/absent"]) and torch.isnan(result["Acc/absent"])
    # Counting the absent class as IoU 0 would give a different (smaller) mean.
    assert result["mIoU"].item() != pytest.approx((19 / 26 + 9 / 14) / 4, rel=1e-4)
    # A class only predicted has IoU 0 and pulls mIoU down, but stays out of mAcc.
    assert result["IoU/pred_only"].item() == 0.0
    assert torch.isnan(result["Acc/pred_only"])
    assert result["mIoU"].item() == pytest.approx((19 / 26 + 9 / 14) / 3, rel=1e-6)
    assert result["mAcc"].item() == pytest.approx((19 / 23 + 9 / 13) / 2, rel=1e-6)


def test_metrics_from_confusion_on_literal_matrix():
    _assert_metrics(metrics_from_confusion(torch.tensor(CONFMAT), NAMES), EXPECTED)


def test_metrics_from_confusion_of_empty_matrix_is_all_nan():
    result = metrics_from_confusion(torch.zeros(NUM_CLASSES, NUM_CLASSES), NAMES)
    assert all(torch.isnan(v) for v in result.values())


def test_outputs_are_float32_scalars(metric):
    metric.update(PRED, TARGET)
    assert all(v.dtype == torch.float32 and v.shape == () for v in metric.compute().values())


def test_two_batches_accumulate_over_the_epoch(metric):
    metric.update(PRED[:1], TARGET[:1])
    metric.update(PRED[1:], TARGET[1:])
    torch.testing.assert_close(metric.confmat, torch.tensor(CONFMAT), check_dtype=False)
    _assert_metrics(metric.compute(), EXPECTED)

    single = SegmentationMetrics(NAMES, ignore_index=IGNORE)
    single.update(PRED, TARGET)
    for key, value in single.compute().items():
        torch.testing.assert_close(metric.compute()[key], value, equal_nan=True)


@pytest.mark.parametrize("key", ["mIoU", "acc"])
def test_epoch_value_is_not_the_mean_of_batch_values(key):
    per_batch = []
    for i in range(2):
        m = SegmentationMetrics(NAMES, ignore_index=IGNORE)
        m.update(PRED[i : i + 1], TARGET[i : i + 1])
        per_batch.append(m.compute()[key].item())
    assert per_batch == pytest.approx([EXPECTED_IMAGE0[key], EXPECTED_IMAGE1[key]], rel=1e-6)

    mean_of_batches = (EXPECTED_IMAGE0[key] + EXPECTED_IMAGE1[key]) / 2
    assert abs(mean_of_batches - EXPECTED[key]) > 5e-4  # the data do tell the two apart

    epoch = SegmentationMetrics(NAMES, ignore_index=IGNORE)
    epoch.update(PRED[:1], TARGET[:1])
    epoch.update(PRED[1:], TARGET[1:])
    value = epoch.compute()[key].item()
    assert value == pytest.approx(EXPECTED[key], rel=1e-6)
    assert value != pytest.approx(mean_of_batches, rel=1e-6, abs=1e-5)


def test_logits_give_the_same_result_as_indices(metric):
    logits = _logits_for(PRED)
    assert torch.equal(logits.argmax(1), PRED)
    metric.update(logits, TARGET)
    from_indices = SegmentationMetrics(NAMES, ignore_index=IGNORE)
    from_indices.update(PRED, TARGET)
    assert torch.equal(metric.confmat, from_indices.confmat)
    _assert_metrics(metric.compute(), EXPECTED)


def test_names_are_the_compute_keys(metric):
    metric.update(PRED, TARGET)
    assert metric.names == list(metric.compute())
    assert metric.names == list(EXPECTED)


def test_reset_clears_the_state(metric):
    metric.update(PRED, TARGET)
    assert metric.confmat.sum() == 36
    metric.reset()
    assert metric.confmat.sum() == 0
    metric.update(PRED[1:], TARGET[1:])
    torch.testing.assert_close(metric.confmat, torch.tensor(CONFMAT_IMAGE1), check_dtype=False)
    result = metric.compute()
    assert result["acc"].item() == pytest.approx(EXPECTED_IMAGE1["acc"], rel=1e-6)
    assert result["mIoU"].item() == pytest.approx(EXPECTED_IMAGE1["mIoU"], rel=1e-6)


def test_classification_metrics_match_hand_counts():
    from seglab.metrics import ClassificationMetrics

    names = [f"c{i}" for i in range(6)]
    # Rows: logits for 4 images; targets 0, 1, 1, 5.
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # top-1 0 (right)
            [0.0, 1, 9, 8, 7, 6],  # top-1 2 (wrong); top-5 = 2,3,4,5,1 holds 1
            [0.0, 9, 1, 2, 3, 4],  # top-1 1 (right)
            [9.0, 8, 7, 6, 5, 0],  # top-1 0 (wrong); 5 is last: not in top-5
        ]
    )
    target = torch.tensor([0, 1, 1, 5])
    metric = ClassificationMetrics(names)
    metric.update(logits[:2], target[:2])  # two batches: epoch-wide counts
    metric.update(logits[2:], target[2:])
    result = metric.compute()
    assert result["acc"].item() == pytest.approx(2 / 4)
    assert result["acc_top5"].item() == pytest.approx(3 / 4)
    # Per-class recall: c0 1/1, c1 1/2, c5 0/1; classes never in the target are NaN.
    assert result["Acc/c0"].item() == 1.0
    assert result["Acc/c1"].item() == pytest.approx(0.5)
    assert result["Acc/c5"].item() == 0.0
    assert torch.isnan(result["Acc/c2"])
    assert result["mAcc"].item() == pytest.approx((1 + 0.5 + 0) / 3)
    assert list(result) == metric.names
    assert metric.last_confusion[1].tolist() == [0, 1, 1, 0, 0, 0]


def test_classification_metrics_have_no_top5_with_five_classes_or_fewer():
    from seglab.metrics import ClassificationMetrics

    metric = ClassificationMetrics(["a", "b", "c"])
    metric.update(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]), torch.tensor([0, 1]))
    result = metric.compute()
    assert "acc_top5" not in result and result["acc"].item() == 0.5
