"""Callbacks seglab adds to every training run."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

_PACKAGES = (
    "seglab",
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "segmentation-models-pytorch",
    "timm",
    "numpy",
)


def _git_state(path: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git checkout holding `path`, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(seed: int | None) -> dict[str, Any]:
    """What, besides the config, it takes to repeat a run: seed, code and environment."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "seed": seed,
        "command": sys.argv,
        "cwd": str(Path.cwd()),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git": _git_state(Path(__file__).resolve().parent),
    }


class RunRecord(L.Callback):
    """Writes `run_info.json` into the run directory when fitting starts, and stores the
    composed config and run info in every checkpoint (under the key "seglab"), so a
    checkpoint alone can rebuild its model (`seglab.checkpoint.load_module`).

    Args:
        config: the composed, resolved config as plain containers.
        output_dir: the run directory.
    """

    def __init__(self, config: dict[str, Any], output_dir: str | Path) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.info = run_info(config.get("seed"))

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "run_info.json").write_text(json.dumps(self.info, indent=2) + "\n")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["seglab"] = {
            "task": getattr(pl_module, "task", None),
            "config": self.config,
            "run_info": self.info,
        }
