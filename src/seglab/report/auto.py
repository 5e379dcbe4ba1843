"""seglab-auto's page: the fingerprint, the candidates with their fold scores, why the
winner won, and the winner's test metrics, read from the run directory's auto.json (and
the final run's metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seglab import rundir
from seglab.report.html import REPORT_NAME, render
from seglab.summary import describe


def auto_page(run_dir: Path) -> dict[str, Any]:
    """The template's context for the seglab-auto run in `run_dir`."""
    state = json.loads((run_dir / "auto.json").read_text())
    print_ = state["fingerprint"]
    winner = state.get("winner") or {}
    candidates = []
    for c in state.get("candidates", []):
        scores = [s for s in c.get("scores", []) if s is not None]
        stats = describe(scores) if scores else {"mean": None, "std": None}
        mean, std = stats["mean"], stats["std"]
        candidates.append({
            "name": c["name"],
            "change": c["change"],
            "images_per_s": c["images_per_s"],
            "scores": c.get("scores", []),
            "mean": mean,
            "std": std,
            "winner": c["name"] == winner.get("name"),
            "decisions": {d["key"]: d["value"] for d in c["plan"]["decisions"]},
        })  # fmt: skip
    final = state.get("final") or {}
    metrics = final.get("metrics", {})
    class_names = [c["name"] for c in print_["classes"]]
    per_class = [
        {"name": n, "iou": metrics.get(f"test/IoU/{n}"), "acc": metrics.get(f"test/Acc/{n}")}
        for n in class_names
    ]
    final_dir = run_dir / "final"
    final_page = final_dir / REPORT_NAME
    budget_s = float(state["budget_s"])
    wall = state.get("wall_s", state.get("spent_s"))
    return {
        "title": f"auto {run_dir.name}",
        "writer": "seglab-auto",
        "run_dir": str(run_dir),
        "state": state,
        "budget_s": budget_s,
        "wall_s": wall,
        "overshoot": None if wall is None else 100 * (float(wall) - budget_s) / budget_s,
        "print": print_,
        "candidates": candidates,
        "schedule": state.get("schedule"),
        "winner": winner,
        "metrics": metrics,
        "headline": [(k, metrics.get(k)) for k in ("test/mIoU", "test/acc", "test/mDice")],
        "per_class": per_class,
        "final_link": final_page.relative_to(run_dir).as_posix() if final_page.exists() else None,
        "best_checkpoint": (rundir.read_metrics(final_dir, strict=False) or {}).get(
            "best_model_path"
        ),
    }  # fmt: skip


def write_auto_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` for a seglab-auto run."""
    run_dir = Path(run_dir)
    page = run_dir / REPORT_NAME
    rundir.write_atomically(page, render("auto.html", auto_page(run_dir)))
    return page
