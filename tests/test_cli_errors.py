"""What a user who mistypes a command sees: one line naming the problem and the fix, a
non-zero exit, the same line in the command's log and a failed run's record; and none of
the noise a user cannot act on (Lightning's advertisement, torch's deprecation warning)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _one_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("seglab: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["trainer.max_epoch=1"],
            "trainer.max_epoch is no key of this config; check its spelling "
            "(--cfg job prints every key), or add it as a new key: +trainer.max_epoch=1",
        ),
        (
            ["model=foo"],
            "model=foo is no option of the model group; choose one of cnn, fcn, smp, unet",
        ),
        (
            ["data=folder", "data.root=/tmp/my", "photos"],  # an unquoted path with a space
            "a value with spaces must be quoted, e.g. \"data.root='/data/my photos'\"",
        ),
    ],
)
def test_hydra_composition_errors_are_one_line_with_the_fix(tmp_path, args, expected):
    line = _one_line(_run(tmp_path, "seglab.train", *args))
    assert expected in line
    assert not (tmp_path / "outputs").exists()  # refused before a run directory was made


def test_data_folder_without_its_classes_names_both_keys_and_records_the_failure(tmp_path):
    line = _one_line(_run(tmp_path, "seglab.train", "data=folder", f"data.root={tmp_path}"))
    assert line == (
        "seglab: error: data.class_names, data.num_classes have no value (data=folder has "
        "no default for them); give them on the command line: data.class_names=... "
        "data.num_classes=..."
    )
    (run_dir,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert line in (run_dir / "train.log").read_text().splitlines()[-1]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "failed" and "data.class_names" in info["error"]


def test_a_classifier_on_segmentation_data_says_they_do_not_go_together(tmp_path):
    line = _one_line(
        _run(
            tmp_path,
            "seglab.train",
            "model=cnn",
            "data=folder",
            f"data.root={tmp_path}",
            "data.class_names=[a,b]",
            "data.num_classes=2",
        )
    )
    assert "model.input_size refers to data.image_size" in line
    assert "model=cnn, data=folder do not go together" in line


def test_evaluate_without_a_checkpoint_is_one_line_also_in_evaluate_log(tmp_path):
    line = _one_line(_run(tmp_path, "seglab.evaluate"))
    assert (
        line == "seglab: error: ckpt_path has no value; give it on the command line: ckpt_path=..."
    )
    (log_file,) = (tmp_path / "outputs").rglob("evaluate.log")
    assert log_file.read_text().strip().endswith(line)


def test_a_run_prints_no_advertisement_and_no_deprecation_warning(tmp_path):
    run = _run(tmp_path, "seglab.train", "trainer.fast_dev_run=true", "report=false")
    assert run.returncode == 0, run.stderr
    assert "litlogger" not in run.stdout + run.stderr
    assert "LeafSpec" not in run.stderr and "deprecated" not in run.stderr


def test_a_launcher_of_a_missing_extra_names_the_extra_to_install():
    """Without the launchers extra Hydra finds no hydra/launcher/joblib.yaml: the line
    names the extra, not Hydra's list of the options it did find."""
    from hydra.errors import MissingConfigException

    from seglab.cli import composition_error

    for option, extra in (("joblib", "launchers"), ("submitit_slurm", "launchers")):
        err = MissingConfigException(
            "Could not find", missing_cfg_file=f"hydra/launcher/{option}", options=["basic"]
        )
        assert str(composition_error(err, [])) == (
            f"hydra/launcher={option} comes with a plugin that is not installed; install it: "
            f"pip install 'seglab[{extra}]'"
        )
    err = MissingConfigException("x", missing_cfg_file="model/foo", options=["cnn", "unet"])
    assert "choose one of cnn, unet" in str(composition_error(err, []))
