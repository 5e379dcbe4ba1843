"""seglab's commands as Hydra applications: `@command("train")` turns `run(cfg)` into a
console entry point that composes `conf/train.yaml` (packaged, plus the user's config
directories), and prints a `SeglabError` as one line with a non-zero exit.

A user's config directory is given with `--config-dir DIR` (`-cd DIR`) or in
`SEGLAB_CONFIG_PATH`; either way it comes before the packaged configs, so its files add
options to the built-in groups or replace packaged ones of the same name.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from seglab.config import CONFIG_DIR, add_user_config_dir, user_config_dirs
from seglab.errors import SeglabError, exit_message, seglab_cause

Run = Callable[[DictConfig], Any]


def config_dir_arguments(argv: Sequence[str]) -> list[str]:
    """The directories given with Hydra's `--config-dir`/`-cd` in `argv`, in order."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
    return dirs


def command(config_name: str) -> Callable[[Run], Callable[[], Any]]:
    """Decorator: `run(cfg)` as the command composing `config_name`.yaml.

    Single runs print a `SeglabError` as `seglab: error: ...` and exit 1 (or the error's
    `exit_code`: 0 for a pruned trial, 128 + n for a run stopped by signal n); in a multirun
    the error propagates, so the sweeper records the trial as failed and goes on.
    """

    def decorate(run: Run) -> Callable[[], Any]:
        @functools.wraps(run)
        def task(cfg: DictConfig) -> Any:
            try:
                return run(cfg)
            except Exception as err:
                # Also one raised while Hydra instantiated a config, which Hydra wraps.
                cause = seglab_cause(err)
                if cause is None or HydraConfig.get().mode == RunMode.MULTIRUN:
                    raise
                code = getattr(cause, "exit_code", 1)
                if code != 1:  # an expected end: pruned (0), stopped by a signal (128 + n)
                    print(f"seglab: {cause}", file=sys.stderr)
                    raise SystemExit(code) from None
                raise SystemExit(exit_message(cause)) from None  # one line, no traceback

        hydra_main = hydra.main(
            version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name
        )(task)

        @functools.wraps(run)
        def main() -> Any:
            # Hydra itself would put --config-dir after the packaged configs (adding
            # options, never replacing one); through SEGLAB_CONFIG_PATH it comes first,
            # here and in the processes a sweep or DDP starts.
            try:
                for path in reversed(config_dir_arguments(sys.argv[1:])):
                    add_user_config_dir(path)
                user_config_dirs()  # a bad entry is one line here, not Hydra's traceback
            except SeglabError as err:
                raise SystemExit(exit_message(err)) from None
            return hydra_main()

        return main

    return decorate
