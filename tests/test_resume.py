"""Runs that survive being stopped: a signal mid-epoch checkpoints where the run stands,
`ckpt_path=auto` continues it to the same result as an uninterrupted run, checkpoints are
written atomically, SLURM jobs requeue themselves, and time budgets size schedules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seglab.budget import TimeBudgetSchedule, parse_max_time, timer_of
from seglab.checkpoint import AtomicCheckpointIO, read_checkpoint
from seglab.errors import SeglabError
from seglab.resume import config_differences
from seglab.stop import StopOnSignal, Stopped
from seglab.train import train

# A run of 3 epochs of 6 batches, deterministic, logging every step to TensorBoard.
COMMON = [
    "data.num_train=24",
    "data.num_val=8",
    "data.num_test=4",
    "data.batch_size=4",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.images=null",
    "ckpt_path=auto",
]


class SignalAt(L.Callback):
    """Sends this process `signum` while batch `batch` of epoch `epoch` trains: what a
    scheduler's kill does, delivered to the real handler."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGTERM) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_sigterm_mid_epoch_then_auto_ends_like_an_uninterrupted_run(make_cfg, tmp_path):
    whole = train(make_cfg(*COMMON, output_dir=tmp_path / "whole"))
    # last.ckpt follows every epoch, also those that do not improve the best score
    last_whole = read_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    assert last_whole["global_step"] == 18

    run_dir = tmp_path / "stopped"
    killer = [f"+callbacks.kill._target_={__name__}.SignalAt", "+callbacks.kill.epoch=1"]
    with pytest.raises(Stopped) as stopped:
        train(make_cfg(*COMMON, *killer, "+callbacks.kill.batch=2", output_dir=run_dir))
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM at epoch 1, batch 3/6" in str(stopped.value)
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6 + 3  # the step in progress finished, none after
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "stopped" and "SIGTERM" in info["error"]

    resumed = train(make_cfg(*COMMON, output_dir=run_dir))

    for name in ("val/loss", "val/mIoU", "test/loss", "test/mIoU", "train/loss_epoch"):
        assert resumed[name] == pytest.approx(whole[name], rel=1e-6, abs=1e-7), name
    curves, reference = _scalars(run_dir), _scalars(tmp_path / "whole")
    for tag in ("train/loss_step", "val/loss", "train/loss_epoch"):
        steps = [step for step, _ in curves[tag]]
        assert steps == sorted(set(steps)), f"{tag} steps repeat or go back: {steps}"
        assert steps == [step for step, _ in reference[tag]], tag
        for (_, ours), (_, theirs) in zip(curves[tag], reference[tag], strict=True):
            assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-7), tag
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    assert not list((run_dir / "tensorboard").glob("version_*")), "a second TensorBoard run"

    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "finished"
    [restart] = info["restarts"]
    assert restart["previous_status"] == "stopped" and restart["step"] == 9
    assert restart["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")


def test_a_signal_at_an_epoch_end_resumes_at_the_next_epoch(make_cfg, tmp_path):
    whole = train(make_cfg(*COMMON, output_dir=tmp_path / "whole"))
    run_dir = tmp_path / "stopped"
    killer = [f"+callbacks.kill._target_={__name__}.SignalAt", "+callbacks.kill.epoch=0"]
    with pytest.raises(Stopped):  # during the epoch's last batch
        train(make_cfg(*COMMON, *killer, "+callbacks.kill.batch=5", output_dir=run_dir))
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6
    resumed = train(make_cfg(*COMMON, output_dir=run_dir))
    for name in ("val/loss", "test/loss", "train/loss_epoch"):
        assert resumed[name] == pytest.approx(whole[name], rel=1e-6, abs=1e-7), name


def test_auto_starts_afresh_without_a_checkpoint_and_refuses_another_config(make_cfg, tmp_path):
    cfg = make_cfg(*COMMON, "trainer.max_epochs=1", output_dir=tmp_path)
    train(cfg)  # nothing to resume: a fresh start
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns
    with pytest.raises(SeglabError, match=r"another configuration \(model.encoder_name: "):
        train(make_cfg(*COMMON, "model.encoder_name=resnet34", output_dir=tmp_path))
    assert last.stat().st_mtime_ns == before, "a refused resume overwrote last.ckpt"


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_resuming_a_run_schedule_with_another_length_is_one_line(make_cfg, tmp_path, scheduler):
    # One-cycle raised torch's "Tried to step 7 times" at its old end; cosine climbed
    # back up silently.
    run = [*COMMON, f"scheduler={scheduler}"]
    train(make_cfg(*run, "trainer.max_epochs=1", output_dir=tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(SeglabError, match=r"spans 6 steps .*this run is 12 steps long"):
        train(make_cfg(*run, "trainer.max_epochs=2", output_dir=tmp_path))
    assert last.read_bytes() == before, "a refused resume overwrote last.ckpt"


def test_config_differences_name_what_changed_and_ignore_loading_options():
    stored = {"data": {"root": "a", "num_workers": 2, "class_names": ["x", "y"]}, "seed": 1}
    current = {"data": {"root": "b", "num_workers": 8, "class_names": None}, "seed": 1}
    assert config_differences(stored, current) == ["data.root: a -> b"]
    assert config_differences(stored, {**current, "seed": 2})[-1] == "seed: 1 -> 2"


def test_a_truncated_last_checkpoint_is_one_line_or_falls_back_when_asked(make_cfg, tmp_path):
    train(make_cfg(*COMMON, "trainer.max_epochs=1", output_dir=tmp_path))
    checkpoints = tmp_path / "checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(SeglabError) as err:
        train(make_cfg(*COMMON, output_dir=tmp_path))
    message = str(err.value)
    assert "\n" not in message and str(last) in message and "ckpt_fallback=true" in message

    resumed = train(
        make_cfg(*COMMON, "trainer.max_epochs=1", "ckpt_fallback=true", output_dir=tmp_path)
    )
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert Path(info["restarts"][-1]["checkpoint"]).name.startswith("best-")
    assert resumed["test/loss"] is not None


def _slow_save_script(path: Path, started: Path) -> str:
    return f"""
import time, torch
from pathlib import Path
from seglab.checkpoint import AtomicCheckpointIO
real_save = torch.save
def slow_save(obj, file, *args, **kwargs):
    Path({str(started)!r}).touch()
    file.write(b"partial bytes")
    file.flush()
    time.sleep(60)
torch.save = slow_save
AtomicCheckpointIO().save_checkpoint({{"new": torch.ones(3)}}, {str(path)!r})
"""


def test_sigkill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"old": torch.zeros(3)}, path)
    started = tmp_path / "saving"
    process = subprocess.Popen([sys.executable, "-c", _slow_save_script(path, started)])
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert torch.equal(torch.load(path, weights_only=True)["old"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] != []  # the debris
    AtomicCheckpointIO().save_checkpoint({"new": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["new"], torch.ones(3))


def test_slurm_requeue_signal_checkpoints_then_requeues_the_job(make_cfg, tmp_path, monkeypatch):
    calls = []
    real_run = subprocess.run

    def fake_run(command, **kwargs):  # the scheduler's command, at the boundary
        if command[0] != "scontrol":
            return real_run(command, **kwargs)
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # Lightning: an interactive job
    killer = [
        f"+callbacks.kill._target_={__name__}.SignalAt",
        "+callbacks.kill.epoch=0",
        "+callbacks.kill.batch=1",
        "+callbacks.kill.signum=10",  # SIGUSR1, SLURM's warning signal (--signal=USR1@120)
    ]
    with pytest.raises(Stopped) as stopped:
        train(make_cfg(*COMMON, *killer, output_dir=tmp_path))
    assert stopped.value.exit_code == 128 + signal.SIGUSR1
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert calls == [["scontrol", "requeue", "4242"]]


def test_sigterm_under_slurm_checkpoints_without_requeueing(make_cfg, tmp_path, monkeypatch):
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda c, **k: calls.append(c) if c[0] == "scontrol" else real_run(c, **k),
    )
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    killer = [f"+callbacks.kill._target_={__name__}.SignalAt", "+callbacks.kill.epoch=0"]
    with pytest.raises(Stopped):
        train(make_cfg(*COMMON, *killer, "+callbacks.kill.batch=1", output_dir=tmp_path))
    assert calls == []


def test_a_previous_handler_runs_after_the_checkpoint(tmp_path):
    """A job scheduler's own handler (submitit's requeue on its timeout signal) still
    runs, after the checkpoint is saved."""
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        stopper = StopOnSignal(signals=["SIGUSR2"], checkpoint_dir=tmp_path)
        stopper.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stopper.received == signal.SIGUSR2 and seen == []  # only recorded
        stopper._after_save(signal.SIGUSR2)
        assert seen == [signal.SIGUSR2]
        stopper.uninstall()
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:01:30:05", 5405), ({"minutes": 2}, 120), (None, None)]
)
def test_max_time_parses_lightnings_formats(text, seconds):
    parsed = parse_max_time(text)
    assert (parsed.total_seconds() if parsed else None) == seconds


def test_a_bad_max_time_is_one_line(make_cfg, tmp_path):
    with pytest.raises(SeglabError, match=r"trainer.max_time='12h' is not a positive duration"):
        train(make_cfg("trainer.max_time=12h", output_dir=tmp_path))


def test_time_budget_schedule_follows_the_budget_to_its_end():
    now = [0.0]
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)

    def one_cycle(optimizer, steps):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)

    schedule = TimeBudgetSchedule(optimizer, one_cycle, lambda: now[0], budget=100.0)
    start = optimizer.param_groups[0]["lr"]
    lrs = []
    for second in range(1, 101):
        now[0] = second
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert start == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=1e-3) and lrs.index(max(lrs)) == 29  # 30%
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4, rel=1e-2)  # the final value, at 100 s
    now[0] = 150  # past the budget: stays at the end
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[-1])


class SlowFirstStep(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            time.sleep(1.5)


def test_a_budget_shorter_than_one_step_is_one_line(make_cfg, tmp_path):
    cfg = make_cfg(
        "trainer.max_time={seconds:1}",
        f"+callbacks.slow._target_={__name__}.SlowFirstStep",
        "logger=none",
        output_dir=tmp_path,
    )
    with pytest.raises(SeglabError, match=r"\(0:00:01\) is shorter than one training step"):
        train(cfg)
    with pytest.raises(SeglabError, match=r"is not a positive duration"):
        train(make_cfg("trainer.max_time={seconds:0}", output_dir=tmp_path / "zero"))


def test_a_run_without_an_end_needs_a_budget_for_its_schedule(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=-1", "logger=none", output_dir=tmp_path)
    with pytest.raises(SeglabError, match=r"spans the run, which has no end: set trainer"):
        train(cfg)


class StepEnds(L.Callback):
    """Records the budget's clock (Lightning's Timer) at the end of every training step:
    in the file `path`, one number a line."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as file:
            print(timer_of(trainer).time_elapsed("train"), file=file)


@pytest.mark.slow
def test_a_time_budget_ends_the_one_cycle_schedule_with_the_budget(make_cfg, tmp_path):
    ends = tmp_path / "step_ends.txt"
    cfg = make_cfg(
        "trainer.max_epochs=-1",
        "trainer.max_time={seconds:12}",
        "trainer.log_every_n_steps=1",
        "scheduler=onecycle",
        "optimizer.lr=0.01",
        "callbacks.images=null",
        f"+callbacks.ends._target_={__name__}.StepEnds",
        f"+callbacks.ends.path={ends}",
        output_dir=tmp_path,
    )
    started = time.monotonic()
    metrics = train(cfg)
    assert time.monotonic() - started < 120
    assert metrics["test/loss"] is not None  # the test still runs after the budget
    lrs = _scalars(tmp_path)["train/lr-AdamW"]
    assert len(lrs) > 20
    first, peak, last = lrs[0][1], max(v for _, v in lrs), lrs[-1][1]
    assert first == pytest.approx(0.01 / 25, rel=1e-3)
    assert peak == pytest.approx(0.01, rel=0.02)
    # The run stopped at the first step ending past the budget, and that step's rate was
    # set when the step before it ended: the schedule's point one step (the last one, with
    # any validation in it, as long as it took) before its end, or later.
    *_, before_last, at_end = (float(line) for line in ends.read_text().split())
    assert before_last < 12 <= at_end
    one_step = (at_end - before_last) / 12
    final = 0.01 / 25 / 1e4
    annealed = (
        final + (0.01 - final) * (1 + torch.cos(torch.tensor(torch.pi * (1 - one_step / 0.7)))) / 2
    )
    assert final <= last <= float(annealed) * 1.5, (last, float(annealed), one_step)


class AnnounceAt(L.Callback):
    """Creates `path` when batch `batch` of epoch `epoch` starts, then gives a test two
    seconds to send its signal from outside."""

    def __init__(self, path: str, epoch: int, batch: int) -> None:
        self.path, self.epoch, self.batch = Path(path), epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self.path.touch()
            time.sleep(2.0)


def _sigterm_at_epoch_1_batch_2(
    command: list[str], env: dict[str, str], ready: Path
) -> tuple[int, str]:
    """Start the training `command`, send it SIGTERM from outside while batch 2 of epoch 1
    trains (`AnnounceAt`); its exit status and stderr."""
    announce = [
        f"+callbacks.announce._target_={__name__}.AnnounceAt",
        f"+callbacks.announce.path={ready}",
        "+callbacks.announce.epoch=1",
        "+callbacks.announce.batch=2",
    ]
    # To a file: a pipe nobody reads while the run trains would block it once full.
    errors = ready.with_name(f"{ready.name}.stderr")
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [*command, *announce], env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
        try:
            deadline = time.monotonic() + 300
            while not ready.exists():
                assert process.poll() is None, errors.read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            process.kill()
    return process.returncode, errors.read_text()


@pytest.mark.slow
def test_the_command_killed_mid_epoch_exits_nonzero_and_the_same_command_continues(tiny, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "seglab.train",
        *tiny,
        *COMMON,
        "report=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    returncode, stderr = _sigterm_at_epoch_1_batch_2(command, env, tmp_path / "ready")
    assert returncode == 128 + signal.SIGTERM
    assert "seglab: stopped by SIGTERM at epoch 1, batch 3/6" in stderr
    assert "Traceback" not in stderr
    log = (run_dir / "train.log").read_text()
    assert "stopped by SIGTERM at epoch 1, batch 3/6 (step 9)" in log

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "stopped by SIGTERM" in log and "Run directory" in log  # one log, appended
    runs = {p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    assert runs - {run_dir / "tensorboard"} <= {  # the per-class runs only
        p for p in (run_dir / "tensorboard" / "classes").iterdir()
    }
    steps = [step for step, _ in _scalars(run_dir)["train/loss_step"]]
    assert steps == list(range(18))  # one curve: every step once, in order
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "finished" and info["restarts"][0]["step"] == 9


@pytest.mark.slow
def test_a_ddp_run_stops_on_every_rank_at_one_step_and_resumes(tiny, tmp_path):
    """SIGTERM to the launching process (rank 0): it forwards the signal to the rank it
    started, both stop after the same step, and the same command finishes the run."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "seglab.train",
        *tiny,
        *COMMON,
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "data.num_train=48",
        "report=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    returncode, stderr = _sigterm_at_epoch_1_batch_2(command, env, tmp_path / "ready")
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.count("stopped by SIGTERM at epoch 1, batch 3/6 (step 9)") == 2  # both ranks
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 9

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "finished" and info["restarts"][0]["step"] == 9
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 18
