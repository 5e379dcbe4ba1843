"""Masks that would train silently wrong: a class no train pixel holds, or a share of
`ignore_index` pixels far beyond what void borders explain. Binary masks saved as 0/255
(what most tools write) are both: 255 is the default `ignore_index`, so the foreground is
ignored and the model learns background only (foreground IoU 0, no error).

`label_problem` turns a train split's label histogram into the one line that says what
the masks hold and the fix; `ImageMaskDataModule.setup` raises it, `seglab.check_data`
lists it as a problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

# Void borders (VOC, Cityscapes) are 5-15% of the pixels; half the pixels void is no border.
VOID_SHARE = 0.5
# Without a cache, setup reads this many train masks (evenly spaced) to count labels.
SAMPLED_MASKS = 256


def histogram(masks: Iterable[np.ndarray]) -> np.ndarray:
    """Pixels per 8-bit label value over `masks`: int64 [256]."""
    counts = np.zeros(256, np.int64)
    for mask in masks:
        counts += np.bincount(np.asarray(mask, np.uint8).ravel(), minlength=256)
    return counts


def _values(counts: np.ndarray, total: int, most: int = 6) -> str:
    order = [int(v) for v in np.argsort(-counts, kind="stable") if counts[v] > 0]
    shown = ", ".join(f"{v} ({100 * counts[v] / total:.1f}%)" for v in order[:most])
    return shown + (f" and {len(order) - most} more" if len(order) > most else "")


def label_problem(
    counts: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int,
    where: str,
    label_map: dict[int, int] | None = None,
) -> str | None:
    """The problem a train split's decoded labels show, or None.

    Args:
        counts: pixels per label value (int [256], `histogram`), after decoding.
        class_names: one per class, in label order.
        ignore_index: the void label.
        where: what was counted, e.g. "the 328 train masks of data.root=/data/horses".
        label_map: the label map in use, merged into the suggested one.

    Returns:
        one line: the values the masks hold and their shares, what is wrong, the fix.
    """
    total = int(counts.sum())
    if total == 0:
        return None
    num_classes = len(class_names)
    absent = [i for i in range(num_classes) if counts[i] == 0]
    void = int(counts[ignore_index]) if 0 <= ignore_index < 256 else 0
    share = void / total
    if not absent and share <= VOID_SHARE:
        return None
    held = f"{where} hold values {_values(counts, total)}"
    if absent:
        names = ", ".join(f"{class_names[i]!r} ({i})" for i in absent)
        several = len(absent) > 1
        wrong = f"class{'es' if several else ''} {names} ha{'ve' if several else 's'} no pixels"
    else:
        wrong = (
            f"{100 * share:.1f}% of the pixels are ignore_index={ignore_index}, "
            "far more than void borders"
        )
    if void:
        target = absent[0] if absent else num_classes - 1
        mapping = {**(label_map or {}), ignore_index: target}
        text = ",".join(f"{k}:{v}" for k, v in sorted(mapping.items()))
        fix = (
            f"if {ignore_index} marks {class_names[target]!r} (binary masks saved as "
            f"0/{ignore_index}), map it: data.label_map={{{text}}}"
        )
    else:
        fix = "check data.class_names and data.num_classes against the masks' values"
    return (
        f"{held}: {wrong}, so the model would never learn "
        f"{'them' if len(absent) > 1 else 'it' if absent else 'those pixels'}; {fix}; "
        "or data.check_labels=false to train on them as they are"
    )
