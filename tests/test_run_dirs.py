"""Every run gets its own directory, holds it while it runs, and never writes into
another run's: the README's commands as written (no hydra.run.dir), run twice, in a
fresh working directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from omegaconf import OmegaConf

from seglab.errors import SeglabError
from seglab.rundir import LOCK_FILE, acquire, held_by, release
from seglab.train import train

TESTS = Path(__file__).resolve().parent
# The README's quick check.
README_TRAIN = ["trainer.fast_dev_run=true"]
TIME_NAME = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(_\d+)?")


def _start(module: str, *args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """The command as a user types it; its output in `log` (a file: a pipe nobody reads
    while the run goes on would block it)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _run(module: str, *args: str, cwd: Path, timeout: float = 300) -> tuple[int, str]:
    log = cwd / f"log-{time.monotonic_ns()}.txt"
    process = _start(module, *args, cwd=cwd, log=log)
    return process.wait(timeout=timeout), log.read_text()


def _run_dirs(cwd: Path, task: str) -> list[Path]:
    runs = cwd / "outputs" / task / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def test_the_run_dir_resolver_claims_a_new_directory_for_each_run(tmp_path):
    """Two configs resolving the same start time get two directories (the second with
    _2), each created on the spot; one config reads its own directory back (what the DDP
    launcher hands to the other ranks); a named run is just parent/name."""
    parent = tmp_path / "runs"
    pattern = {"dir": f"${{seglab.run_dir:{parent},${{name}},2026-01-02_03-04-05}}", "name": None}
    first, second = OmegaConf.create(pattern), OmegaConf.create(pattern)
    assert first.dir == f"{parent}/2026-01-02_03-04-05"
    assert second.dir == f"{parent}/2026-01-02_03-04-05_2"
    assert first.dir == f"{parent}/2026-01-02_03-04-05"  # read again: the same, no _3
    assert sorted(p.name for p in parent.iterdir()) == [
        "2026-01-02_03-04-05",
        "2026-01-02_03-04-05_2",
    ]
    named = OmegaConf.create({**pattern, "name": "x"})
    assert named.dir == f"{parent}/x" and not (parent / "x").exists()


def test_a_second_run_into_a_directory_holding_a_run_is_refused(make_cfg, tmp_path, fast_run):
    run_dir = tmp_path / "x"
    train(make_cfg(*fast_run, output_dir=run_dir))
    record = (run_dir / "run_info.json").read_text()
    with pytest.raises(
        SeglabError,
        match=r"x already holds a run \(started .*, status finished\); "
        r"give this run another run_name, or ckpt_path=auto",
    ):
        train(make_cfg(*fast_run, output_dir=run_dir))
    assert (run_dir / "run_info.json").read_text() == record  # left as it was
    train(make_cfg(*fast_run, "ckpt_path=auto", output_dir=run_dir))  # its own restart


def test_the_command_line_refuses_before_hydra_writes_anything(tmp_path):
    """The refusal comes before Hydra writes the run's .hydra/ config and train.log, so
    the other run's files stay as they were."""
    run_dir = tmp_path / "outputs" / "train" / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "run_info.json").write_text(
        json.dumps({"started": "2026-01-01T00:00:00+00:00", "status": "finished"})
    )
    code, output = _run("seglab.train", *README_TRAIN, "run_name=x", cwd=tmp_path)
    assert code == 1
    assert output.strip().splitlines()[-1] == (
        "seglab: error: outputs/train/runs/x already holds a run (started "
        "2026-01-01T00:00:00+00:00, status finished); give this run another run_name, or "
        "ckpt_path=auto to continue that run"
    ), output
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock", "run_info.json"]
    assert (run_dir / LOCK_FILE).read_text() == ""  # not even a holder written down


def test_a_held_directory_is_refused_and_names_its_holder(tmp_path):
    """The lock is the kernel's (flock): another process meeting it stops in one line
    naming pid, host and since when; ranks > 0 of a DDP run never take it."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from seglab.rundir import acquire; "
            f"acquire({str(run_dir)!r}, 'auto'); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            SeglabError,
            match=rf"run is in use by a running run \(pid {holder.pid} on \S+, since \S+\); wait",
        ):
            acquire(run_dir, "auto")
        assert held_by(run_dir)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    acquire(run_dir, "auto")  # the kernel released it with the killed process
    release(run_dir)


def test_other_ranks_do_not_claim(tmp_path):
    """A DDP rank > 0 (Lightning starts it with LOCAL_RANK and the parent's hydra.run.dir)
    goes into the directory its rank 0 holds, though that one holds a run record too."""
    run_dir = tmp_path / "run"
    acquire(run_dir, "auto")
    (run_dir / "run_info.json").write_text("{}")
    try:
        rank1 = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from seglab.rundir import acquire; acquire({str(run_dir)!r}, None)",
            ],
            env={**os.environ, "LOCAL_RANK": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rank1.returncode == 0, rank1.stderr
    finally:
        release(run_dir)


@pytest.mark.slow
def test_the_readme_train_command_twice_makes_two_run_directories(tmp_path):
    for _ in range(2):
        code, output = _run("seglab.train", *README_TRAIN, cwd=tmp_path)
        assert code == 0, output[-3000:]
    runs = _run_dirs(tmp_path, "train")
    assert len(runs) == 2, runs
    for run in runs:
        assert TIME_NAME.fullmatch(run.name), run.name
        info = json.loads((run / "run_info.json").read_text())
        assert info["status"] == "finished" and "restarts" not in info
        assert (run / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path):
    processes = [
        _start(
            "seglab.train", *README_TRAIN, "report=false", cwd=tmp_path, log=tmp_path / f"{i}.txt"
        )
        for i in range(2)
    ]
    for i, process in enumerate(processes):
        assert process.wait(timeout=300) == 0, (tmp_path / f"{i}.txt").read_text()[-3000:]
    runs = _run_dirs(tmp_path, "train")
    assert len(runs) == 2, runs
    assert all((run / "run_info.json").is_file() for run in runs)
    starts = {json.loads((run / "run_info.json").read_text())["cwd"] for run in runs}
    assert starts == {str(tmp_path)}


@pytest.mark.slow
def test_the_readme_eval_command_twice_makes_two_run_directories(make_cfg, tmp_path):
    train(
        make_cfg(
            "trainer.max_epochs=1", "logger=none", "test=false", output_dir=tmp_path / "trained"
        )
    )
    [ckpt] = (tmp_path / "trained" / "checkpoints").glob("best-*.ckpt")
    for _ in range(2):
        code, output = _run("seglab.evaluate", f"ckpt_path={ckpt}", cwd=tmp_path)
        assert code == 0, output[-3000:]
    runs = _run_dirs(tmp_path, "eval")
    assert len(runs) == 2 and all(TIME_NAME.fullmatch(r.name) for r in runs), runs
    assert all((run / "metrics.json").is_file() for run in runs)


@pytest.mark.slow
def test_a_second_process_with_the_same_run_name_and_auto_is_refused(tmp_path, tiny):
    """Two processes at once with run_name=x ckpt_path=auto: one runs, the other stops in
    one line naming the first; then a SIGKILL of the runner (the kernel drops its lock)
    and the same command continues the run."""
    command = [*tiny, "scheduler=none", "run_name=x", "ckpt_path=auto", "logger=none"]
    start = [*command, "trainer.max_epochs=1000"]
    processes = [
        _start("seglab.train", *start, cwd=tmp_path, log=tmp_path / f"{i}.txt") for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        [refused] = [i for i, p in enumerate(processes) if p.poll() is not None]
        runner = processes[1 - refused]
        assert processes[refused].returncode == 1
        last = (tmp_path / f"{refused}.txt").read_text().strip().splitlines()[-1]
        assert re.fullmatch(
            rf"seglab: error: outputs/train/runs/x is in use by a running run \(pid {runner.pid} "
            r"on \S+, since \S+\); wait for it to end, or give this run another run_name",
            last,
        ), last
        run_dir = tmp_path / "outputs" / "train" / "runs" / "x"
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
    # the run continues where it was killed, to a shorter end (it may be past it already)
    code, output = _run("seglab.train", *command, "trainer.max_epochs=2", cwd=tmp_path)
    assert code == 0, output[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "finished"
    assert [r["previous_status"] for r in info["restarts"]] == ["running"]


class KillWhileSaving(L.Callback):
    """SIGKILLs this process halfway through writing its `save`-th checkpoint (its state is
    pickled into the file being written): a kill during a checkpoint write, exactly."""

    def __init__(self, save: int) -> None:
        self.save, self.saves = save, 0

    def state_dict(self) -> dict:
        self.saves += 1
        return {"bomb": _Bomb()} if self.saves == self.save else {}


class _Bomb:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_kill_while_writing_a_checkpoint_leaves_no_partial_file_or_duplicate_best(
    make_cfg, tmp_path, tiny
):
    """Killed while writing epoch 1's last.ckpt (after its best-epoch001.ckpt): the resumed
    run removes the half-written file and writes epoch 1's best over its own, without a
    best-epoch001-v1.ckpt beside it."""
    run_dir = tmp_path / "run"
    common = [
        "trainer.max_epochs=2",
        "logger=none",
        "callbacks.images=null",
        "ckpt_path=auto",
        "test=false",
        "callbacks.model_checkpoint.monitor=step",
    ]
    # every epoch is the best by step: two saves per epoch, best first, then last.ckpt
    code, output = _run(
        "seglab.train",
        *tiny,
        *common,
        f"hydra.run.dir={run_dir}",
        "+callbacks.kill._target_=test_run_dirs.KillWhileSaving",
        "+callbacks.kill.save=4",
        cwd=tmp_path,
    )
    assert code == -signal.SIGKILL, output[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in checkpoints.glob(".last.ckpt.partial-*")], "no partial file to clean"
    assert (checkpoints / "best-epoch001.ckpt").is_file()

    train(make_cfg(*common, output_dir=run_dir))
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["best-epoch001.ckpt", "last.ckpt"], names
    info = json.loads((run_dir / "run_info.json").read_text())
    assert [r["previous_status"] for r in info["restarts"]] == ["running"]


@pytest.mark.slow
def test_a_ddp_run_without_a_name_keeps_every_rank_in_one_directory(tmp_path):
    """Lightning starts rank 1 with the launching process's hydra.run.dir: the directory
    rank 0 claimed (not a second claim), which rank 1 enters though rank 0 holds it."""
    code, output = _run(
        "seglab.train",
        *README_TRAIN,
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "report=false",
        cwd=tmp_path,
    )
    assert code == 0, output[-3000:]
    [run] = _run_dirs(tmp_path, "train")
    assert json.loads((run / "run_info.json").read_text())["status"] == "finished"
    assert (run / "metrics.json").is_file()


@pytest.mark.slow
def test_the_readme_precision_auto_option_says_what_it_chose(tmp_path):
    # README "Scale out": trainer.precision=auto picks bf16-mixed where the device
    # computes bf16 natively, else 32-true, and train.log says which and why.
    from seglab.lightning_compat import auto_precision

    chosen, why = auto_precision(on_cpu=True)
    code, output = _run("seglab.train", *README_TRAIN, "trainer.precision=auto", cwd=tmp_path)
    assert code == 0, output[-3000:]
    (run,) = _run_dirs(tmp_path, "train")
    log = (run / "train.log").read_text()
    assert f"trainer.precision=auto: {chosen} ({why})" in log
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished"


def test_the_holder_reads_back_after_a_second_claim_of_the_same_process(tmp_path):
    # The refusal another process prints names the holder from run.lock; a second claim
    # (train() inside a claimed command) rewrote it after NUL bytes, unreadable JSON.
    directory = tmp_path / "run"
    acquire(directory)
    acquire(directory)
    try:
        assert held_by(directory)["pid"] == os.getpid()
        assert b"\0" not in (directory / LOCK_FILE).read_bytes()
    finally:
        release(directory)
        release(directory)
