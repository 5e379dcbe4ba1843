"""Credentials never reach a file seglab writes.

A database URL with a password (`postgresql://user:SECRET@host/db`) may come in through a
config value or a command-line override; `redact` replaces the password in every string
of a config, a record or a command line before it is saved:

    redact({"storage": "postgresql://u:SECRET@h/db"}) == {"storage": "postgresql://u:***@h/db"}

Pass passwords outside the command line instead (`PGPASSWORD`, `~/.pgpass`, or an
interpolation such as `${oc.env:SEGLAB_STORAGE}`), so that no file ever sees them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

MASK = "***"

# scheme://user:password@host: the password is everything after the first ':' of the
# user-info part up to the last '@' before the host (passwords may hold '@' and ':').
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^\s/?#]*)@"
)


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""

    def mask(match: re.Match[str]) -> str:
        password = match.group("password")
        if not password or password == MASK:
            return match.group(0)
        return f"{match.group('head')}{MASK}@"

    return _URL_PASSWORD.sub(mask, text)


def redact(value: Any) -> Any:
    """A copy of `value` (nested dicts, lists, tuples, strings) with every URL's password
    replaced by `***`; other values are returned as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    return value


def redact_file(path: Path) -> None:
    """Rewrite the text file `path` with every URL's password masked (left alone when it
    holds none, so that its time stamp says when it was written)."""
    text = path.read_text()
    masked = redact_text(text)
    if masked != text:
        path.write_text(masked)


class RedactHydraFiles(Callback):
    """Hydra callback masking passwords in the files Hydra writes: a job's
    `.hydra/{config,hydra,overrides}.yaml` (Hydra's run_job saves them just before it calls
    `on_job_start`) and a sweep's `multirun.yaml`. Registered in conf/hydra/default.yaml
    as `hydra.callbacks.redact`."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir is None:  # hydra.output_subdir=null: Hydra saved nothing
            return
        folder = Path(config.hydra.runtime.output_dir) / str(subdir)
        for path in sorted(folder.glob("*.yaml")):
            redact_file(path)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._redact_multirun(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra's basic sweeper writes multirun.yaml inside sweep(), after the start.
        self._redact_multirun(config)

    @staticmethod
    def _redact_multirun(config: DictConfig) -> None:
        path = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        if path.is_file():
            redact_file(path)
