"""Who owns a run directory: its name, its lock, the refusal to write over another run,
and every file of it that more than one module reads (run_info.json, metrics.json, the
checkpoints).

- Naming: `${seglab.run_dir:<parent>,<run_name>,<time>}` (conf/hydra/default.yaml) is
  `<parent>/<run_name>` when a run is named, else `<parent>/<time>`, claimed with an
  atomic `mkdir` so that two runs started in the same second get `<time>` and
  `<time>_2` (a sub-second time would only make a collision unlikely; `mkdir` makes it
  impossible, also between machines sharing the file system, and keeps the README's
  `<date>_<time>` names). The resolver is cached in the config (OmegaConf's
  `use_cache`), so every later read of `hydra.run.dir` in the run (Lightning's DDP
  launcher hands it to the other ranks) gets the directory claimed first.
- The lock: `claim(run_dir, ckpt_path)` takes an `fcntl.flock` on `run.lock` in the
  directory for as long as the run goes on; the kernel drops it when the process dies,
  however it dies (a SIGKILLed run resumes with `ckpt_path=auto`). A second process
  meeting a held lock stops with one line naming the holder (pid, host, since when).
- Another run's record: a directory holding `run_info.json` or checkpoints is refused
  unless this run restarts it (`ckpt_path=auto`, `last`, or one of its checkpoints).
- Stale files: with the lock held, every `.*.partial-<pid>` checkpoint left by a process
  killed while writing is removed.

Only the launching process (global rank 0) claims: the other DDP ranks are started by it
with its `hydra.run.dir` and write nothing of their own there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from seglab.errors import SeglabError, exit_message

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
RECORD_FILE = "run_info.json"
METRICS_FILE = "metrics.json"
PRUNED_FILE = "pruned.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
HYDRA_CONFIG = ".hydra/config.yaml"
# The summary metrics of a run or an evaluation, by their names after `<split>/`.
SUMMARY_METRICS = ("mIoU", "acc", "mAcc", "mDice", "acc_top5", "loss")
RESOLVER = "seglab.run_dir"
# ckpt_path values that continue the run of the run directory itself.
RESTART_CKPT_NAMES = ("auto", "last")


def run_dir(parent: str, name: Any, stamp: str) -> str:
    """`parent/name` for a named run; else `parent/stamp`, created here so that no other
    run can take it (`parent/stamp_2`, `_3`, ... when it is taken)."""
    if name is not None and str(name) != "":
        return f"{parent}/{name}"
    Path(parent).mkdir(parents=True, exist_ok=True)
    candidate, suffix = stamp, 1
    while True:
        try:
            os.mkdir(Path(parent) / candidate)
            return f"{parent}/{candidate}"
        except FileExistsError:
            suffix += 1
            candidate = f"{stamp}_{suffix}"


def register_resolvers() -> None:
    """Make `${seglab.run_dir:...}` known to OmegaConf (before Hydra resolves its run
    directory; `seglab.config` does it on import)."""
    OmegaConf.register_new_resolver(RESOLVER, run_dir, use_cache=True, replace=True)


def launching_rank() -> bool:
    """Whether this process is global rank 0 (the one started by the user)."""
    # Lightning costs 2.5 s to import: Hydra loads this module for every command's config.
    from lightning.pytorch.utilities import rank_zero_only  # noqa: PLC0415

    return getattr(rank_zero_only, "rank", 0) == 0


def held_by(directory: Path) -> dict[str, Any]:
    """The holder of `directory`'s lock as it wrote itself down (pid, host, since); empty
    when unreadable."""
    try:
        return json.loads((directory / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def recorded_run(directory: Path) -> dict[str, Any] | None:
    """The run `directory` holds: its run_info.json (`{}` when only checkpoints are
    left), or None for a directory no run has written into."""
    record = directory / RECORD_FILE
    if record.is_file():
        try:
            return json.loads(record.read_text())
        except (OSError, ValueError):
            return {}
    if any((directory / CHECKPOINT_DIR).glob("*.ckpt")):
        return {}
    return None


def last_checkpoint(directory: str | Path) -> Path:
    """The run's `checkpoints/last.ckpt` (whether or not it exists)."""
    return Path(directory) / CHECKPOINT_DIR / LAST_CHECKPOINT


def write_atomically(path: Path, text: str) -> Path:
    """`text` at `path`, written whole or not at all (a temporary file in the same
    directory, renamed over it): a reader, a kill or a job ending beside this one never
    sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}-{threading.get_ident()}")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    return write_atomically(path, json.dumps(document, indent=2) + "\n")


def read_json(path: Path, strict: bool) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if not strict:  # a page or a summary says what is missing instead
            return None
        raise SeglabError(f"{path} cannot be read ({err}); remove it or run again") from None
    return document if isinstance(document, dict) or strict else None


def write_record(directory: str | Path, record: Mapping[str, Any]) -> Path:
    """The run's `run_info.json` (seglab.checkpoint.RunRecord keeps it)."""
    return write_json(Path(directory) / RECORD_FILE, record)


def read_record(directory: str | Path, strict: bool = True) -> dict[str, Any] | None:
    """The run's `run_info.json`; None when it has none (or, not `strict`, when it cannot
    be read: a run killed while writing it)."""
    return read_json(Path(directory) / RECORD_FILE, strict)


def write_metrics(directory: str | Path, metrics: Mapping[str, Any], **fields: Any) -> Path:
    """`metrics.json` of a run (`optimized_metric`, `best_model_path`) or an evaluation
    (`ckpt_path`, `split`, `inference`, `per_class`): one schema, `{"metrics": {...},
    **fields}`."""
    return write_json(
        Path(directory) / METRICS_FILE, {"metrics": dict(sorted(metrics.items())), **fields}
    )


def read_metrics(directory: str | Path, strict: bool = True) -> dict[str, Any] | None:
    """The `metrics.json` of `directory`; None when it has none (or, not `strict`, when
    it cannot be read)."""
    return read_json(Path(directory) / METRICS_FILE, strict)


def write_pruned(directory: str | Path, note: Mapping[str, Any]) -> Path:
    """`pruned.json`: the trial, epoch, metric and value a pruned sweep trial stopped at."""
    return write_json(Path(directory) / PRUNED_FILE, note)


def read_pruned(directory: str | Path) -> dict[str, Any] | None:
    """The run's `pruned.json`; None when the run was not pruned."""
    return read_json(Path(directory) / PRUNED_FILE, strict=True)


def is_run_dir(path: Path) -> bool:
    """A training run's directory: it holds run_info.json, metrics.json or .hydra/."""
    return any((path / name).exists() for name in (RECORD_FILE, METRICS_FILE, HYDRA_CONFIG))


def best_checkpoint(directory: Path, recorded: str | None = None) -> Path | None:
    """The run's best checkpoint: `recorded` (metrics.json's `best_model_path`; looked up
    in `checkpoints/` when the directory moved), else the newest `best*.ckpt`, else
    `last.ckpt`; None without any."""
    checkpoints = directory / CHECKPOINT_DIR
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if recorded and (checkpoints / Path(recorded).name).is_file():
        return checkpoints / Path(recorded).name
    best = sorted(checkpoints.glob("best*.ckpt"))
    if best:
        return best[-1]
    last = last_checkpoint(directory)
    return last if last.is_file() else None


def is_restart(ckpt_path: Any, directory: Path) -> bool:
    """Whether `ckpt_path` continues the run of `directory` (auto, last, or one of its own
    checkpoints)."""
    if ckpt_path is None:
        return False
    if str(ckpt_path) in RESTART_CKPT_NAMES:
        return True
    own = (directory / CHECKPOINT_DIR).resolve()
    return Path(str(ckpt_path)).resolve().parent == own


class _Lock:
    """One open `run.lock` with its flock, shared by every claim of this process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.claims = 0
        path = directory / LOCK_FILE
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            # The holder writes itself down just after it took the lock: give it a moment.
            deadline = time.monotonic() + 5
            while not (holder := held_by(directory)) and time.monotonic() < deadline:
                time.sleep(0.05)
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
                if holder
                else "another process"
            )
            raise SeglabError(
                f"{directory} is in use by a running run ({who}); wait for it to end, or "
                "give this run another run_name"
            ) from None

    def write_holder(self) -> None:
        """Write down who holds the lock, for the refusal another process prints (after
        the checks: a refused run leaves the directory as it found it)."""
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(self.fd, 0)
        # At offset 0: a second claim of this process writes it again, and the descriptor's
        # offset (past the first write) would leave NUL bytes before it, unreadable JSON.
        os.pwrite(self.fd, (json.dumps(holder) + "\n").encode(), 0)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# Locks this process holds, by resolved directory: the Hydra callback and train() claim
# the same directory, and a second flock on another descriptor would refuse ourselves.
_HELD: dict[Path, _Lock] = {}


def _acquire(directory: Path) -> _Lock:
    key = directory.resolve()
    lock = _HELD.get(key)
    if lock is None:
        lock = _HELD[key] = _Lock(directory)
    lock.claims += 1
    return lock


def _release(directory: Path) -> None:
    key = directory.resolve()
    lock = _HELD.get(key)
    if lock is None:
        return
    lock.claims -= 1
    if lock.claims <= 0:
        del _HELD[key]
        lock.release()


def remove_stale_partials(directory: Path) -> list[Path]:
    """Delete the half-written checkpoints (`.<name>.partial-<pid>`, see
    `seglab.checkpoint.AtomicCheckpointIO`) of processes killed while saving. Only the lock's
    holder may call it: then no process of this run is writing one."""
    removed = []
    for partial in (directory / CHECKPOINT_DIR).glob(".*.partial-*"):
        partial.unlink(missing_ok=True)
        removed.append(partial)
        log.info("Removed %s, left by a process killed while writing it", partial)
    return removed


def acquire(directory: str | Path, ckpt_path: Any = None) -> None:
    """Claim `directory` for this run (global rank 0 only; a no-op on the other ranks):
    lock it, refuse another run's record unless `ckpt_path` restarts that run, remove
    stale partial checkpoints. Release with `release(directory)`.

    Raises:
        SeglabError: a running process holds the directory, or it holds another run.
    """
    if not launching_rank():
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = _acquire(directory)
    try:
        previous = recorded_run(directory)
        if previous is not None and not is_restart(ckpt_path, directory):
            facts = ", ".join(
                f"{key} {previous[key]}" for key in ("started", "status") if previous.get(key)
            )
            raise SeglabError(
                f"{directory} already holds a run{f' ({facts})' if facts else ''}; give this "
                "run another run_name, or ckpt_path=auto to continue that run"
            )
        lock.write_holder()
        remove_stale_partials(directory)
    except BaseException:
        _release(directory)
        raise


def release(directory: str | Path) -> None:
    """End this process's claim of `directory` (the lock goes with the last claim)."""
    if launching_rank():
        _release(Path(directory))


@contextmanager
def claimed(directory: str | Path, ckpt_path: Any = None) -> Iterator[Path]:
    """`acquire` for the duration of a `with` block."""
    acquire(directory, ckpt_path)
    try:
        yield Path(directory)
    finally:
        release(directory)


class ClaimRunDir(Callback):
    """Hydra callback: claims a single run's directory before Hydra writes into it (its
    `.hydra/` files and the log), so that a refused run leaves another run's files as
    they were; prints the refusal as one line and exits 1. A multirun's job directories
    are new ones under the sweep directory; `seglab.train` claims those itself."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        directory = str(config.hydra.run.dir)
        try:
            acquire(directory, OmegaConf.select(config, "ckpt_path", throw_on_missing=False))
        except SeglabError as err:
            # Hydra turns a callback's Exception into a warning and goes on.
            raise SystemExit(exit_message(err)) from None
        self._directory = directory

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if getattr(self, "_directory", None) is not None:
            release(self._directory)
