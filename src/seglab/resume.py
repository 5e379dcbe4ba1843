"""`ckpt_path=auto`: a run resumes from its run directory's last.ckpt when there is one,
after checking that it was written by the same configuration. (Stopping on a signal:
`seglab.stop`; atomic checkpoint files: `seglab.checkpoint.AtomicCheckpointIO`.)"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seglab.checkpoint import read_checkpoint
from seglab.errors import SeglabError
from seglab.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT

log = logging.getLogger(__name__)

# Parts of the config a resumed run must share with the run that wrote its checkpoint.
# Trainer limits (more epochs), loggers, callbacks and paths may change between restarts.
RESUME_KEYS = ("data", "model", "loss", "optimizer", "scheduler", "module", "seed")
# Data options that change how fast data is read, not which data: free to change.
_FREE_DATA_KEYS = ("num_workers", "pin_memory", "persistent_workers", "cache", "cache_dir")


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The settings in `RESUME_KEYS` where `current` differs from the `stored` config a
    checkpoint was written with, as "key: stored -> current". Data loading speed options
    and classes the current config leaves to be found on disk are not differences."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for key in RESUME_KEYS:
        before.update(_flatten(stored.get(key), key))
        after.update(_flatten(current.get(key), key))
    differences = []
    for key in sorted(set(before) | set(after)):
        parts = key.split(".")
        if parts[0] == "data" and len(parts) > 1 and parts[1] in _FREE_DATA_KEYS:
            continue
        if key in ("data.class_names", "data.num_classes") and after.get(key) is None:
            continue  # found on disk, as the stored run did
        if key.startswith("data.class_names.") and "data.class_names" in after:
            continue
        old, new = before.get(key, "<unset>"), after.get(key, "<unset>")
        if old != new:
            differences.append(f"{key}: {old} -> {new}")
    return differences


def _readable(path: Path) -> dict[str, Any] | None:
    try:
        return read_checkpoint(path)
    except SeglabError:
        return None


def resolve_resume(
    ckpt_path: Any, output_dir: Path, config: Mapping[str, Any], fallback: bool = False
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint a run starts from, read and checked before anything is built.

    `ckpt_path` is "auto" (this run directory's last.ckpt when there is one, else a fresh
    start), "last" (that file, which must exist), or a path. A checkpoint that cannot be
    read is a one-line error naming it; with `fallback`, "auto" then takes the newest
    readable checkpoint of the directory instead. "auto" also refuses a checkpoint written
    with another configuration (`config_differences`), naming what differs.

    Returns:
        the checkpoint's path and its contents, or (None, None) for a fresh start.
    """
    if ckpt_path is None:
        return None, None
    directory = output_dir / CHECKPOINT_DIR
    if ckpt_path in ("auto", "last"):
        path = directory / LAST_CHECKPOINT
        if not path.exists():
            if ckpt_path == "auto":
                return None, None
            raise SeglabError(
                f"ckpt_path=last but {path} does not exist; ckpt_path=auto starts afresh "
                "when there is nothing to resume"
            )
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise SeglabError(
                f"ckpt_path={ckpt_path} does not exist; give a checkpoint a run wrote "
                "(<run dir>/checkpoints/last.ckpt), or ckpt_path=auto with that run's "
                "directory (hydra.run.dir or run_name)"
            )
    try:
        checkpoint = read_checkpoint(path)
    except SeglabError as err:
        if ckpt_path != "auto" or not fallback:
            hint = (
                "; ckpt_fallback=true resumes from the newest readable checkpoint of "
                f"{directory} instead"
                if ckpt_path == "auto"
                else ""
            )
            raise SeglabError(f"cannot resume: {err}{hint}") from err
        candidates = sorted(
            (p for p in directory.glob("*.ckpt") if p != path),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for candidate in candidates:
            if (checkpoint := _readable(candidate)) is not None:
                log.warning("%s cannot be read (%s); resuming from %s", path, err, candidate)
                path = candidate
                break
        else:
            raise SeglabError(
                f"cannot resume: {err}; and {directory} holds no other readable checkpoint"
            ) from err
    if ckpt_path == "auto":
        stored = checkpoint["seglab"]["config"]
        if differences := config_differences(stored, config):
            shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
            raise SeglabError(
                f"ckpt_path=auto: {path} was written with another configuration ({shown}); "
                "run with the same settings to continue it, or give this run its own "
                "directory (run_name=... or hydra.run.dir=...)"
            )
    return path, checkpoint
