"""Where seglab's Hydra configs live, the user's config directories that add to them, and
composing them from plain Python.

The configs are written in `conf/` at the top of the repository and ship inside the
wheel as `seglab/conf` (see pyproject.toml); an editable install reads the checkout's.
A project of the user's adds its own groups and options, or replaces packaged ones of
the same name, from directories named in `SEGLAB_CONFIG_PATH` (separated like `PATH`)
or with `--config-dir` on the command line (`seglab.cli`); both come before the packaged
configs in Hydra's search path (`hydra_plugins/seglab_searchpath`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from seglab.errors import SeglabError
from seglab.rundir import register_resolvers

USER_CONFIG_ENV = "SEGLAB_CONFIG_PATH"


def _packaged_config_dir() -> Path:
    packaged = Path(str(resources.files("seglab") / "conf"))
    if packaged.is_dir():  # an installed wheel
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "conf"  # src/seglab -> conf
    if checkout.is_dir():  # an editable install of a checkout
        return checkout
    raise RuntimeError(f"seglab's configs are missing: neither {packaged} nor {checkout} exists")


CONFIG_DIR = _packaged_config_dir()
# The configs name run directories with seglab's resolver (conf/hydra/default.yaml): known
# before any of them is composed, by the command line (seglab.cli imports this module)
# or by `compose`.
register_resolvers()


def user_config_dirs() -> list[Path]:
    """The directories `SEGLAB_CONFIG_PATH` names, first ones first.

    Raises:
        SeglabError: an entry is not a directory.
    """
    dirs = []
    for entry in os.environ.get(USER_CONFIG_ENV, "").split(os.pathsep):
        if not entry:
            continue
        path = Path(entry).expanduser().resolve()
        if not path.is_dir():
            raise SeglabError(
                f"{USER_CONFIG_ENV} names {entry}, which is not a directory; point it at "
                "your config folder (the one holding data/, experiment/, ...)"
            )
        dirs.append(path)
    return dirs


def add_user_config_dir(path: str | Path) -> None:
    """Put `path` first among the user's config directories, for this process and the
    processes it starts (sweep workers, DDP ranks)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise SeglabError(f"--config-dir {path} is not a directory")
    current = os.environ.get(USER_CONFIG_ENV, "").split(os.pathsep)
    entries = [str(resolved), *(p for p in current if p and p != str(resolved))]
    os.environ[USER_CONFIG_ENV] = os.pathsep.join(entries)


def compose(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    config_name: str = "train",
) -> DictConfig:
    """Compose a config as the command line would, for notebooks and tests (the user's
    config directories in `SEGLAB_CONFIG_PATH` included).

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
