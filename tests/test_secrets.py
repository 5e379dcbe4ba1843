"""No file seglab writes holds a password (issue 21): `redact`, Hydra's saved configs
masked by seglab.secrets.RedactHydraFiles, and a real PostgreSQL sweep given its
password on the command line that leaves it in no file of its sweep directory."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from test_sweeps import SWEEP, TINY, _cli, postgres  # noqa: F401  (postgres: the fixture)

from seglab.secrets import RedactHydraFiles, redact, redact_text

# Distinctive, so that finding it in a checkpoint's bytes is no accident.
PLANTED = "Pl4nted-pw-7q9x"


def test_redact_masks_the_password_of_every_url_and_leaves_other_text():
    url = "postgresql://user:SECRET@host:5432/db"
    assert redact_text(f"storage={url} next") == "storage=postgresql://user:***@host:5432/db next"
    assert redact({"a": [url, ("x", url)], "n": 3}) == {
        "a": ["postgresql://user:***@host:5432/db", ("x", "postgresql://user:***@host:5432/db")],
        "n": 3,
    }
    assert redact_text("sqlite:////tmp/optuna.db a@b:c") == "sqlite:////tmp/optuna.db a@b:c"
    assert redact_text("postgresql://user@host/db") == "postgresql://user@host/db"


def test_the_callback_masks_a_jobs_saved_configs_and_the_sweeps_multirun_yaml(tmp_path):
    url = f"postgresql://u:{PLANTED}@h/db"
    job, sweep = tmp_path / "sweep" / "0", tmp_path / "sweep"
    (job / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (job / ".hydra" / name).write_text(f"- hydra.sweeper.storage={url}\n")
    (sweep / "multirun.yaml").write_text(f"storage: {url}\n")
    config = OmegaConf.create(
        {"hydra": {"output_subdir": ".hydra", "runtime": {"output_dir": str(job)},
                   "sweep": {"dir": str(sweep)}}}
    )  # fmt: skip
    callback = RedactHydraFiles()
    callback.on_job_start(config=config, task_function=None)
    callback.on_multirun_end(config=config)
    for path in [*(job / ".hydra").glob("*.yaml"), sweep / "multirun.yaml"]:
        text = path.read_text()
        assert PLANTED not in text and "postgresql://u:***@h/db" in text, path


def _psql(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


@pytest.mark.slow
def test_a_postgres_sweep_with_its_password_on_the_command_line_leaves_it_in_no_file(
    tmp_path,
    postgres,  # noqa: F811
):
    # A role of its own whose password the server asks for (scram-sha-256, the fixture's
    # initdb --auth), owning the database the study goes in.
    _psql(
        postgres,
        f"CREATE ROLE planted LOGIN PASSWORD '{PLANTED}'",
        "CREATE DATABASE planted OWNER planted",
    )
    host = postgres.split("@", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql://planted:{PLANTED}@{host}/planted"
    sweep_dir = tmp_path / "sweep"
    result = _cli(
        *SWEEP,
        *TINY,
        "trainer.max_epochs=1",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert PLANTED not in result.stdout + result.stderr
    files = [p for p in sweep_dir.rglob("*") if p.is_file()]
    # The trials ran and saved what a run saves: Hydra's configs, checkpoints, records.
    names = {p.name for p in files}
    assert {"multirun.yaml", "trials.csv", "hydra.yaml", "overrides.yaml", "config.yaml"} <= names
    assert any(p.suffix == ".ckpt" for p in files), sorted(names)
    holding = [str(p.relative_to(sweep_dir)) for p in files if PLANTED.encode() in p.read_bytes()]
    assert holding == []
    # The masked URL is still there to say which storage the sweep used.
    assert "planted:***@" in (sweep_dir / "multirun.yaml").read_text()
