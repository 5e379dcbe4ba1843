"""Experiment trackers: logger=mlflow to its default SQLite store and to a real MLflow
tracking server started here (params, per-epoch metrics, artifacts and status read back
through MLflow's client; its UI in headless Chromium), a resumed run continuing its
MLflow run, logger=wandb offline (its run file read back), and several loggers at once."""

from __future__ import annotations

import glob
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seglab import rundir
from seglab.config import compose
from seglab.tensorboard import COLUMNS
from seglab.train import train

FAST = [
    "data.num_train=32",
    "data.num_val=16",
    "data.num_test=16",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "report=false",
]


def _client(uri: str):
    from mlflow import MlflowClient  # noqa: PLC0415

    return MlflowClient(uri)


def _only_run(client, experiment: str = "seglab"):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    (run,) = client.search_runs([found.experiment_id])
    return run


def _check_run(client, run, run_dir: Path, epochs: int) -> None:
    """What seglab promises of an MLflow run: the HParams choices as params, one
    val/mIoU point per epoch ending at metrics.json's, the best and test scores, the
    record, config and best checkpoint as artifacts, status FINISHED."""
    saved = rundir.read_metrics(run_dir)
    params = run.data.params
    assert [title for title, _ in COLUMNS if title not in params] == []
    assert params["model"] == "unet" and params["data"] == "shapes" and params["lr"] == "0.003"
    assert params["trainer.max_epochs"] == str(epochs)  # an override, as in HParams
    assert "logger" not in params and "paths.output_dir" not in params
    history = client.get_metric_history(run.info.run_id, "val/mIoU")
    assert len(history) == epochs
    assert history[-1].value == pytest.approx(saved["metrics"]["val/mIoU"])
    metrics = run.data.metrics
    assert metrics["test/mIoU"] == pytest.approx(saved["metrics"]["test/mIoU"])
    assert metrics["best/val/mIoU"] == pytest.approx(saved["metrics"]["best/val/mIoU"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "run_info.json", "checkpoints"} <= names
    (checkpoint,) = client.list_artifacts(run.info.run_id, "checkpoints")
    assert checkpoint.path == f"checkpoints/{Path(saved['best_model_path']).name}"
    assert checkpoint.file_size == Path(saved["best_model_path"]).stat().st_size
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name


def test_the_default_store_is_sqlite_in_outputs_and_a_resume_continues_the_run(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    # No schedule over the whole run: a longer resumed run is allowed.
    first_run = ["logger=mlflow", *FAST, "scheduler=none"]
    train(compose([*first_run, "trainer.max_epochs=1"], output_dir=run_dir))
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    client = _client(uri)
    first = _only_run(client)
    assert (tmp_path / "outputs" / "mlflow-artifacts").is_dir()
    assert client.get_run(first.info.run_id).info.artifact_uri.startswith(
        (tmp_path / "outputs" / "mlflow-artifacts").as_uri()
    )
    # Two more epochs from its last checkpoint: the same MLflow run, three points.
    train(compose([*first_run, "trainer.max_epochs=3", "ckpt_path=auto"], output_dir=run_dir))
    run = _only_run(client)
    assert run.info.run_id == first.info.run_id
    history = client.get_metric_history(run.info.run_id, "val/mIoU")
    assert len(history) == 3 and [h.step for h in history] == sorted(h.step for h in history)
    assert rundir.read_json(run_dir / "mlflow.json", strict=True)["run_id"] == run.info.run_id


def test_a_run_stopped_or_failed_ends_with_that_status(tmp_path, monkeypatch):
    """seglab's run status becomes MLflow's: stopped by a signal -> KILLED, failed ->
    FAILED; a tracker that cannot be reached at the end is a warning, not an error."""
    from seglab.trackers import MLflowLogger, end_runs  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = _client(uri)
    for status, expected in (("stopped", "KILLED"), ("failed", "FAILED")):
        run_dir = tmp_path / status
        logger = MLflowLogger(run_dir, tracking_uri=uri)
        logger.log_hyperparams({})  # starts the run, as Lightning does at fit start
        rundir.write_json(run_dir / "run_info.json", {"status": status})
        end_runs([logger], run_dir)
        assert client.get_run(logger.run_id).info.status == expected
    broken = MLflowLogger(tmp_path / "broken", tracking_uri=uri)
    broken.log_hyperparams({})
    monkeypatch.setattr(broken.experiment, "set_terminated", _unreachable)
    end_runs([broken], tmp_path / "broken")  # no exception


def _unreachable(*args, **kwargs):
    raise ConnectionError("tracking server unreachable")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` with a SQLite backend and proxied artifacts on a free port."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_run_logs_to_a_tracking_server_and_its_ui_shows_it(mlflow_server, tmp_path):
    from browser import non_blank, render  # noqa: PLC0415

    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "seglab.train", "logger=[tensorboard,mlflow]",
         f"logger.mlflow.tracking_uri={mlflow_server}", *FAST, "report=true",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # the server's store, not ours
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # both loggers
    client = _client(mlflow_server)
    run = _only_run(client)
    _check_run(client, run, run_dir, epochs=2)
    assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((tmp_path / "server-artifacts").rglob("best-epoch*.ckpt"))  # on the server
    url = f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    seen = render(url, screenshot=tmp_path / "mlflow.png", wait_ms=15000, height=1100)
    assert "Finished" in seen.dom and run_dir.name in seen.dom and "val/mIoU" in seen.dom
    assert seen.screenshot is not None and non_blank(seen.screenshot)


# --- Weights & Biases, offline ---------------------------------------------------------


def _wandb_records(path: Path):
    """The protobuf records of a W&B run file (a LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header: CRC, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb  # noqa: PLC0415

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # the block's zero padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_logs_offline_into_the_run_directory(tmp_path, monkeypatch):
    """No account, no network: the run lands in <run dir>/wandb/offline-run-*, its
    history holds one val/mIoU per epoch equal to metrics.json's last, its config the
    resolved config."""
    monkeypatch.chdir(tmp_path)
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    run_dir = tmp_path / "run"
    done = subprocess.run(  # W&B writes its run file out when the process ends
        [sys.executable, "-m", "seglab.train", "logger=[tensorboard,wandb]", *FAST,
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (run_file,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, config, exits = [], set(), 0
    for record in _wandb_records(Path(run_file)):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {
                item.key or "/".join(item.nested_key): item.value_json
                for item in record.history.item
            }
            if "val/mIoU" in items:
                history.append(float(items["val/mIoU"]))
        elif kind == "config":
            config |= {update.key for update in record.config.update}
        exits += kind == "exit"
    saved = rundir.read_metrics(run_dir)["metrics"]
    assert len(history) == 2 and history[-1] == pytest.approx(saved["val/mIoU"])
    assert {"model", "data", "optimizer", "trainer"} <= config and exits == 1
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
