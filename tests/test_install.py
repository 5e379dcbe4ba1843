"""seglab installed from its wheel into a fresh environment, used from a user's own
project with its own config directory: the way `pip install seglab` users meet it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import tomllib

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


# --- a lean core install (issue 20) ---------------------------------------------------

# Run as `python -c BLOCK <module or script.py> <args>`: the sweep extras (sweeps, dashboard,
# launchers) fail to import, as in an environment installed without them, then <module>
# runs as `python -m <module> <args>` would.
BLOCK_EXTRAS = """\
import runpy, sys
BLOCKED = ("optuna", "optuna_dashboard", "plotly")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
module, sys.argv = sys.argv[1], sys.argv[1:]
if module.endswith(".py"):
    runpy.run_path(module, run_name="__main__")
else:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
EXTRAS = {"sweeps": {"optuna", "plotly"}, "dashboard": {"optuna-dashboard"},
          "launchers": {"hydra-joblib-launcher", "hydra-submitit-launcher"},
          "plan": {"scipy"}}  # fmt: skip


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_sweep_packages_are_extras_not_core_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        assert packages <= _names(extras[extra]), extra
        assert not packages & core, f"{packages & core} are core dependencies"
    # `make install` (.[dev]) installs them all.
    dev = re.search(r"seglab\[(.*)\]", extras["dev"][0]).group(1).split(",")
    assert set(EXTRAS) <= set(dev)


@pytest.mark.slow
def test_train_evaluate_predict_export_and_report_import_without_the_sweep_extras(tmp_path):
    """The core commands, and Hydra's scan of seglab's plugins (the sweeper among them),
    never import optuna or plotly."""
    script = tmp_path / "core.py"
    script.write_text(
        "import sys\n"
        "import seglab.train, seglab.evaluate, seglab.predict, seglab.export, seglab.report\n"
        "import seglab.report.run, seglab.report.sweep\n"
        "import seglab.check_data\n"
        "from seglab.sweeps import Pruned, raise_if_pruned, trial_link\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]\n"
        "assert 'OptunaSweeper' in names, names\n"
        "print('imported', sorted(m for m in sys.modules if m.startswith(('optuna', 'plotly'))))\n"
    )
    result = _run(
        [sys.executable, "-c", BLOCK_EXTRAS, str(script)], cwd=tmp_path,
        env=dict(os.environ), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "imported []"


@pytest.mark.slow
def test_the_optuna_sweeper_without_optuna_is_one_line_naming_the_extra(tmp_path):
    result = _run(
        [sys.executable, "-c", BLOCK_EXTRAS, "seglab.train", "-m", "hydra/sweeper=seglab_optuna",
         "optimizer.lr=tag(log,interval(0.0001,0.01))", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "seglab: error: hydra/sweeper=seglab_optuna needs optuna, which is not installed: "
        "pip install 'seglab[sweeps]'"
    )
    assert not (tmp_path / "sweep").exists()  # stopped before any trial


@pytest.mark.slow
def test_the_installed_wheel_has_every_console_script_the_readme_shows(installed, tmp_path):
    venv, env = installed
    shown = set(re.findall(r"\bseglab-[a-z]+(?:-[a-z]+)*", (REPO / "README.md").read_text()))
    # seglab-report: added with issue 20; the README's note names it.
    for name in sorted(shown | {"seglab-report"}):
        script = venv / "bin" / name
        assert script.is_file(), f"{name} is not installed"
        _run([str(script), "--help"], cwd=tmp_path, env=env)
