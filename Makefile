# Every target that runs code sets the project up first (a .venv with the package
# installed in editable mode), so `make train` works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

CKPT ?=
RUN ?=
SWEEP ?=
STORAGE ?=

.PHONY: install train eval check-data report sweep dashboard test test-slow test-all bench tensorboard mlflow lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install seglab with its dev tools

train: $(STAMP)  ## train the default experiment (UNet on shapes); ARGS="model=fcn ..." for overrides
	$(PY) -m seglab.train $(ARGS)

eval: $(STAMP)  ## evaluate a checkpoint: make eval CKPT=path/to/best.ckpt [ARGS=...]
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=path/to/checkpoint.ckpt"; exit 2; }
	$(PY) -m seglab.evaluate ckpt_path=$(CKPT) $(ARGS)

check-data: $(STAMP)  ## scan a dataset for problems: make check-data ARGS="data=folder data.root=..."
	$(PY) -m seglab.check_data $(ARGS)

test: $(STAMP)  ## the fast test suite
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-slow: $(STAMP)  ## only the slow tests (multi-process DDP, sweeps)
	$(PY) -m pytest -m slow -q $(ARGS)

test-all: $(STAMP)  ## every test, the slow ones included
	$(PY) -m pytest -q $(ARGS)

report: $(STAMP)  ## HTML report of a run or sweep: make report RUN=outputs/train/runs/<time> (or a multirun dir)
	@test -n "$(RUN)" || { echo "usage: make report RUN=outputs/train/runs/<time> | outputs/train/multirun/<time>"; exit 2; }
	$(PY) -m seglab.report $(RUN) $(ARGS)

sweep: $(STAMP)  ## a small optuna sweep on shapes (4 trials, 2 at a time); ARGS="hydra.sweeper.pruner=median ..."
	$(PY) -m seglab.train -m hparams_search=shapes_optuna hydra/launcher=joblib \
		hydra.launcher.n_jobs=2 hydra.sweeper.n_jobs=2 hydra.sweeper.n_trials=4 \
		trainer.max_epochs=1 data.num_train=400 $(ARGS)

dashboard: $(STAMP)  ## optuna-dashboard on a sweep's study: make dashboard SWEEP=<sweep dir> (or STORAGE=<database URL>)
	@test -n "$(SWEEP)$(STORAGE)" || { echo "usage: make dashboard SWEEP=outputs/train/multirun/<time> | STORAGE=postgresql://user:password@host/db [ARGS=\"--port 8081\"]"; exit 2; }
	@test -x $(VENV)/bin/optuna-dashboard || { echo "seglab: error: make dashboard needs optuna-dashboard, which is not installed: pip install 'seglab[dashboard]'"; exit 2; }
	$(VENV)/bin/optuna-dashboard $(if $(STORAGE),$(subst postgresql://,postgresql+psycopg://,$(STORAGE)),sqlite:///$(abspath $(SWEEP))/optuna.db) $(ARGS)

bench: $(STAMP)  ## seglab vs raw PyTorch throughput -> outputs/bench/; ARGS="--only loading"
	$(PY) -m benchmarks $(ARGS)

tensorboard: $(STAMP)  ## serve the TensorBoard logs of every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs $(ARGS)

mlflow: $(STAMP)  ## the MLflow UI on the runs logged with logger=mlflow (outputs/mlflow.db) on http://localhost:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db --default-artifact-root outputs/mlflow-artifacts $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
