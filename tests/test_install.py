"""seglab installed from its wheel into a fresh environment, used from a user's own
project with its own config directory: the way `pip install seglab` users meet it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A user's project: a data option and an experiment of their own, beside the packaged ones.
USER_DATA = """\
# A smaller variant of the embedded shapes data, as a user's own data option.
defaults:
  - shapes
  - _self_
num_train: 16
num_val: 8
num_test: 8
image_size: 32
batch_size: 8
"""
USER_EXPERIMENT = """\
# @package _global_
defaults:
  - override /data: my_shapes
  - override /model: unet
  - override /scheduler: none
model:
  encoder_name: resnet18
trainer:
  max_epochs: 1
  accelerator: cpu
  devices: 1
logger: null
"""


def _run(args: list[str], cwd: Path, env: dict[str, str], check: bool = True):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        raise AssertionError(f"{args} exited {result.returncode}:\n{output}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A new virtual environment with seglab installed from a freshly built wheel; its
    dependencies come from the test's own environment (no download)."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        cwd=root, env=dict(os.environ),
    )  # fmt: skip
    (wheel,) = wheels.glob("seglab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "seglab/conf/train.yaml" in names and "seglab/conf/data/shapes.yaml" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "conf/")) for name in names)

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root, env=dict(os.environ))
    python = str(venv / "bin" / "python")
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=root, env=dict(os.environ),
    ).stdout.strip()  # fmt: skip
    # torch and friends: this environment's packages, searched after the new one's own.
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=root, env=dict(os.environ),
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SEGLAB_CONFIG_PATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv, env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project directory holding only its own conf/."""
    conf = tmp_path / "my_project" / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "data" / "my_shapes.yaml").write_text(USER_DATA)
    (conf / "experiment" / "my_shapes_unet.yaml").write_text(USER_EXPERIMENT)
    return conf.parent


@pytest.mark.slow
def test_wheel_install_runs_a_user_experiment_then_evaluates_it(installed, project):
    venv, env = installed
    python = str(venv / "bin" / "python")
    where = _run(
        [python, "-c", "import seglab.config as c; print(c.__file__); print(c.CONFIG_DIR)"],
        cwd=project, env=env,
    ).stdout.split()  # fmt: skip
    # The installed copy, with its configs inside the package, not this checkout's.
    assert Path(where[0]).is_relative_to(venv), where
    assert Path(where[1]) == Path(where[0]).parent / "conf"  # site-packages/seglab/conf

    listed = _run(
        [str(venv / "bin" / "seglab-train"), "--config-dir", "conf", "--help"], cwd=project, env=env
    ).stdout
    assert "my_shapes_unet" in listed and "shapes_cnn" in listed  # user's and packaged
    assert "my_shapes" in listed

    run_dir = project / "outputs" / "run1"
    _run(
        [str(venv / "bin" / "seglab-train"), "--config-dir", "conf", "experiment=my_shapes_unet",
         f"hydra.run.dir={run_dir}"],
        cwd=project, env=env,
    )  # fmt: skip
    assert (run_dir / "metrics.json").is_file()
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")

    eval_dir = project / "outputs" / "eval1"
    _run(
        [str(venv / "bin" / "seglab-evaluate"), f"ckpt_path={best}", f"hydra.run.dir={eval_dir}",
         "trainer.accelerator=cpu"],
        cwd=project, env=env,
    )  # fmt: skip
    assert "mIoU" in (eval_dir / "metrics.json").read_text()


@pytest.mark.slow
def test_seglab_config_path_adds_and_replaces_options(installed, project):
    venv, env = installed
    # A user file named like a packaged option replaces it: here data/shapes_cls.yaml.
    (project / "conf" / "data" / "shapes_cls.yaml").write_text(
        textwrap.dedent("""\
            _target_: seglab.data.ShapesClassificationDataModule
            num_train: 123
            """)
    )
    env = {**env, "SEGLAB_CONFIG_PATH": str(project / "conf")}
    shown = _run(
        [str(venv / "bin" / "seglab-train"), "experiment=my_shapes_unet", "--cfg", "job",
         "--package", "data"],
        cwd=project.parent, env=env,
    ).stdout  # fmt: skip
    assert "num_train: 16" in shown and "image_size: 32" in shown
    replaced = _run(
        [str(venv / "bin" / "seglab-train"), "data=shapes_cls", "--cfg", "job", "--package",
         "data"],
        cwd=project.parent, env=env,
    ).stdout  # fmt: skip
    assert "num_train: 123" in replaced

    bad = _run(
        [str(venv / "bin" / "seglab-train"), "--cfg", "job"],
        cwd=project, env={**env, "SEGLAB_CONFIG_PATH": "no/such/dir"}, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "seglab: error: SEGLAB_CONFIG_PATH names no/such/dir, which is not a directory; point "
        "it at your config folder (the one holding data/, experiment/, ...)"
    ]
