"""seglab-audit's page: the top suspects, each as image | given mask | out-of-fold
prediction | label-issue heat map, read from the run directory (audit.json,
label_issues.csv, suspects.npz and the out-of-fold probabilities in oof/)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from seglab import rundir
from seglab.oof import AUDIT_JSON, ISSUES_CSV, SUSPECTS, read_csv, read_index
from seglab.report.html import REPORT_NAME, data_uri, render

# The heat map's colours: 0 (the given label is what the model predicts) dark, 1 bright.
HEAT_MAP = "inferno"
VOID_COLOUR = (255, 255, 255)  # ignore_index pixels of the given mask


def png(array: np.ndarray) -> str:
    """A uint8 (H, W, 3) array as a PNG data URI."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="png")
    return data_uri(buffer.getvalue())


def colour_mask(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """Class indices (H, W) -> RGB (H, W, 3); values without a colour are white."""
    colours = np.array([*palette, *[VOID_COLOUR] * (256 - len(palette))], np.uint8)
    return colours[mask]


def heat(pixel_scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """1 - cleanlab's pixel label quality (H, W), coloured, at `size` (the stored size)."""
    picture = colormaps[HEAT_MAP](np.clip(1 - pixel_scores.astype(np.float32), 0, 1))
    rgb = (picture[..., :3] * 255).round().astype(np.uint8)
    if rgb.shape[:2] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.NEAREST))
    return rgb


def audit_page(run_dir: Path) -> dict[str, Any]:
    """The template's context for the seglab-audit run in `run_dir`."""
    state = json.loads((run_dir / AUDIT_JSON).read_text())
    rows = read_csv(run_dir / ISSUES_CSV)
    palette = state["palette"]
    # The fold files' entries in the order audit.py stacked them: row i of suspects.npz.
    files = [Path(f) for f in state["oof"]["files"]]
    where = [(path, i) for path in files for i in range(_count(path))]
    suspects = []
    with np.load(run_dir / SUSPECTS, allow_pickle=False) as stored:
        picked, pixels, issues = stored["rows"], stored["pixel_scores"], stored["issues"]
    by_path: dict[Path, Any] = {}
    try:
        together = zip(picked, pixels, issues, strict=True)
        for rank, (row, scores, flagged) in enumerate(together, start=1):
            path, i = where[int(row)]
            if path not in by_path:
                by_path[path] = np.load(path, allow_pickle=False)
            fold = by_path[path]
            image, mask, probs = fold[f"image_{i}"], fold[f"mask_{i}"], fold[f"probs_{i}"]
            size = mask.shape
            csv_row = rows[rank - 1]
            suspects.append({
                "rank": rank,
                "name": csv_row["image"],
                "fold": csv_row["fold"],
                "label_quality": csv_row["label_quality"],
                "share": csv_row["suspect_pixel_share"],
                "flagged": int(flagged.sum()),
                "image": png(image),
                "mask": png(colour_mask(mask, palette)),
                "prediction": png(colour_mask(probs.argmax(0).astype(np.uint8), palette)),
                "heat": png(heat(scores, size)),
                "height": size[0],
                "width": size[1],
            })  # fmt: skip
    finally:
        for opened in by_path.values():
            opened.close()
    legend = [
        {"name": name, "colour": "#" + "".join(f"{v:02x}" for v in palette[i])}
        for i, name in enumerate(state["class_names"])
    ]
    return {
        "title": f"audit {run_dir.name}",
        "writer": "seglab-audit",
        "run_dir": str(run_dir),
        "state": state,
        "settings": state["settings"],
        "suspects": suspects,
        "legend": legend,
        "folds": state.get("folds", []),
        "csv": ISSUES_CSV,
    }


def _count(path: Path) -> int:
    index = read_index(path)
    return 0 if index is None else len(index["entries"])


def write_audit_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` for a seglab-audit run."""
    run_dir = Path(run_dir)
    page = run_dir / REPORT_NAME
    rundir.write_atomically(page, render("audit.html", audit_page(run_dir)))
    return page
