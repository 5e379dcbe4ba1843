"""Where seglab's Hydra configs live, and composing them from plain Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# conf/ sits at the top of the source checkout (src/seglab/config.py -> ../../conf).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    config_name: str = "train",
) -> DictConfig:
    """Compose a config as the command line would, for notebooks and tests.

    `${hydra:...}` interpolations resolve as in a real run; `paths.output_dir` is set to
    `output_dir` (there is no Hydra run directory outside a Hydra run).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg
