"""seglab's commands as Hydra applications: `@command("train")` turns `run(cfg)` into a
console entry point that composes `conf/train.yaml` (packaged, plus the user's config
directories), and prints a `SeglabError` as one line with a non-zero exit.

A user's config directory is given with `--config-dir DIR` (`-cd DIR`) or in
`SEGLAB_CONFIG_PATH`; either way it comes before the packaged configs, so its files add
options to the built-in groups or replace packaged ones of the same name.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    InterpolationKeyError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from seglab.config import CONFIG_DIR, add_user_config_dir, user_config_dirs
from seglab.errors import SeglabError, exit_message, one_line, seglab_cause
from seglab.run_log import to_log_files_once

Run = Callable[[DictConfig], Any]


def quiet() -> None:
    """Silence what a user cannot act on: Lightning's advertisement for its cloud logger
    (one INFO line per Trainer) and torch's `_pytree` deprecation warning that libraries
    trigger on import."""
    # Lightning's copy of torch's pytree helpers builds the deprecated `LeafSpec`.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

    class _NoAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoAdverts())


def _choices() -> dict[str, str]:
    try:
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()}
    except ValueError:  # no Hydra run (tests calling a command's function directly)
        return {}


def config_error(err: BaseException, cfg: DictConfig | None = None) -> SeglabError | None:
    """One line with the fix for a config that cannot be resolved, or None when `err`
    is no such error: a key left `???` (`ckpt_path`, `data.class_names`), an
    interpolation to a key the chosen options lack (`model=cnn` with `data=folder`)."""
    if not isinstance(err, OmegaConfBaseException):
        return None
    key = getattr(err, "full_key", None) or "?"
    choices = _choices()
    if isinstance(err, InterpolationToMissingValueError | MissingMandatoryValue):
        match = re.search(r"Missing mandatory value: ?([\w.]+)", str(err))
        missing = [match.group(1) if match else key]
        group = missing[0].split(".")[0]
        node = cfg.get(group) if cfg is not None and group in cfg else None
        if isinstance(node, DictConfig):  # every key of that group still ???, not the first
            missing = [f"{group}.{k}" for k in node if OmegaConf.is_missing(node, k)] or missing
        several = len(missing) > 1
        chosen = choices.get(group) if "." in missing[0] else None
        them = "them" if several else "it"
        needs = f" ({group}={chosen} has no default for {them})" if chosen else ""
        return SeglabError(
            f"{', '.join(missing)} ha{'ve' if several else 's'} no value{needs}; give {them} "
            "on the command line: " + " ".join(f"{k}=..." for k in missing)
        )
    if isinstance(err, InterpolationKeyError):
        match = re.search(r"Interpolation key '([\w.]+)' not found", str(err))
        target = match.group(1) if match else "?"
        group = target.split(".")[0]
        chosen = ", ".join(f"{g}={choices[g]}" for g in (key.split(".")[0], group) if g in choices)
        return SeglabError(
            f"{key} refers to {target}, which the chosen config does not have"
            + (
                f" ({chosen} do not go together: pick a model and data of the same task,"
                " e.g. model=cnn with data=shapes_cls, model=unet with data=folder)"
                if chosen
                else ""
            )
            + f"; set it yourself ({key}=...) or choose matching options"
        )
    return None


# Hydra plugin options and the seglab extra that installs each (pyproject.toml).
_EXTRAS = {
    ("hydra/launcher", "joblib"): "launchers",
    ("hydra/launcher", "submitit"): "launchers",
    ("hydra/sweeper", "optuna"): "sweeps",
}


def composition_error(err: BaseException, argv: Sequence[str]) -> SeglabError | None:
    """One line for Hydra's multi-line composition errors: an override it cannot parse
    (an unquoted path with spaces), an unknown key, an unknown option of a group."""
    if isinstance(err, OverrideParseException):
        hint = ""
        if "=" not in err.override:
            hint = (
                f"; '{err.override}' is no key=value: a value with spaces must be quoted, "
                "e.g. \"data.root='/data/my photos'\""
            )
        return SeglabError(f"cannot read the override {err.override!r}: {one_line(err)}{hint}")
    if isinstance(err, MissingConfigException):
        wanted = err.missing_cfg_file or "?"
        group, _, option = wanted.rpartition("/")
        extra = _EXTRAS.get((group, option.split("_")[0]))
        if extra is not None:
            return SeglabError(
                f"{group}={option} comes with a plugin that is not installed; install it: "
                f"pip install 'seglab[{extra}]'"
            )
        if err.options:
            return SeglabError(
                f"{group}={option} is no option of the {group} group; choose one of "
                f"{', '.join(err.options)} (or add {group}/{option}.yaml to your --config-dir)"
            )
        return SeglabError(f"{one_line(err).split(' Config search path:')[0]}")
    if isinstance(err, ConfigCompositionException):
        text = one_line(err)
        cause = err.__cause__
        if cause is not None and "not in struct" in str(cause):
            match = re.search(r"Could not override '([^']+)'", text)
            name = match.group(1) if match else "?"
            given = next((a for a in argv if a.split("=", 1)[0] == name), name)
            return SeglabError(
                f"{name} is no key of this config; check its spelling (--cfg job prints "
                f"every key), or add it as a new key: +{given}"
            )
        return SeglabError(text + (f": {one_line(cause)}" if cause is not None else ""))
    return None


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
                cause = seglab_cause(err) or config_error(err, cfg)
                if cause is None:
                    raise
                if HydraConfig.get().mode == RunMode.MULTIRUN:
                    if cause is err or seglab_cause(err) is not None:
                        raise
                    raise cause from err
                code = getattr(cause, "exit_code", 1)
                if code != 1:  # an expected end: pruned (0), stopped by a signal (128 + n)
                    print(f"seglab: {cause}", file=sys.stderr)
                    raise SystemExit(code) from None
                # One line, no traceback, also in the command's log file (evaluate.log).
                to_log_files_once(logging.ERROR, exit_message(cause))
                raise SystemExit(exit_message(cause)) from None

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
            quiet()
            # Hydra prints its composition errors over several lines and exits; raised
            # to here instead, they become one line (an unexpected error's traceback is
            # then printed whole, which is what a bug report needs).
            os.environ.setdefault("HYDRA_FULL_ERROR", "1")
            try:
                return hydra_main()
            except Exception as err:
                cause = composition_error(err, sys.argv[1:]) or config_error(err)
                if cause is None:
                    raise
                raise SystemExit(exit_message(cause)) from None

        return main

    return decorate
