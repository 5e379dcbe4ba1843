"""Every option of every config group composes and builds what it says."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from hydra.utils import get_method, instantiate
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf
from torch import nn

from seglab.config import CONFIG_DIR
from seglab.data import SeglabDataModule
from seglab.lightning_compat import auto_precision
from seglab.modules import schedule_length_kwargs
from seglab.train import instantiate_all

GROUPS = (
    "data",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "inference",
)
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


# Data options that read files, with the keys they need to build without them.
DATA_ON_DISK = {
    "folder": ["data.root=/nonexistent", "data.class_names=[a,b]", "data.num_classes=2"],
    "image_folder": ["data.root=/nonexistent", "data.class_names=[a,b]"],
    "voc": ["data.root=/nonexistent"],
    "cityscapes": ["data.root=/nonexistent"],
    "cifar10": [],
}


def _needs_gpu(group: str, option: str) -> bool:
    return group == "trainer" and option == "gpu"


@pytest.mark.parametrize(
    ("group", "option"),
    [
        pytest.param(
            g,
            o,
            marks=pytest.mark.skipif(
                _needs_gpu(g, o) and not torch.cuda.is_available(),
                reason="a GPU trainer can only be built where CUDA is available",
            ),
        )
        for g, o in OPTIONS
    ],
    ids=[f"{g}={o}" for g, o in OPTIONS],
)
def test_option_composes_and_instantiates(make_cfg, group, option):
    if group == "data" and option in DATA_ON_DISK:
        # Their own keys; a datamodule reads nothing until setup(), so a trained model's
        # config still builds where the data is gone.
        cfg = make_cfg(
            f"data={option}", *DATA_ON_DISK[option], "trainer.accelerator=cpu", tiny=False
        )
    else:
        # inference belongs to the eval and predict configs; "+" adds it to train's.
        cfg = make_cfg(f"{'+' if group == 'inference' else ''}{group}={option}")
    node = cfg.get(group)
    if group in ("logger", "callbacks"):
        built = instantiate_all(node)
        expected = Logger if group == "logger" else L.Callback
        assert all(isinstance(b, expected) for b in built)
        assert len(built) == (0 if option == "none" else len(node))
    elif group == "scheduler" and option == "none":
        assert node is None
    elif group == "data":
        assert isinstance(instantiate(node), SeglabDataModule)
    elif group == "model":
        net = instantiate(node)
        size = cfg.data.get("image_size", 64)
        logits = net.eval()(torch.zeros(2, 3, size, size))
        assert logits.shape[:2] == (2, cfg.data.num_classes)
    elif group == "loss":
        loss = instantiate(node)(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8)))
        assert loss.ndim == 0 and torch.isfinite(loss)
    elif group == "optimizer":
        optimizer = instantiate(node)([nn.Parameter(torch.zeros(3))])
        assert isinstance(optimizer, torch.optim.Optimizer)
        assert optimizer.param_groups[0]["lr"] == node.lr
    elif group == "scheduler":
        optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(3))], lr=cfg.optimizer.lr)
        factory = instantiate(node)
        scheduler = factory(optimizer, **schedule_length_kwargs(factory, 10))
        assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    elif group == "trainer":
        # precision=auto is seglab's, resolved by seglab.train as here (Lightning has none).
        extra = {"precision": auto_precision(on_cpu=True)[0]} if node.precision == "auto" else {}
        trainer = instantiate(node, logger=False, **extra)
        assert isinstance(trainer, L.Trainer)
        assert trainer.max_epochs == node.max_epochs
    elif group == "inference":
        inference = instantiate(node, window=[32, 32] if node.window else None)
        logits = inference(nn.Conv2d(3, 4, 1), torch.zeros(2, 3, 50, 70))
        assert logits.shape == (2, 4, 50, 70)
    else:  # a new group: add how to check it above
        pytest.fail(f"no check for config group {group}")


def test_every_config_folder_is_covered():
    """A config group added to conf/ without a check above would go untested."""
    folders = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    assert folders - set(GROUPS) <= {"experiment", "hparams_search", "paths", "hydra"}


@pytest.mark.parametrize(("option", "sync_batchnorm"), [("ddp", True), ("ddp_cpu", False)])
def test_ddp_trainer_config_is_distributed(make_cfg, option, sync_batchnorm):
    """The built Trainer runs DDP over `devices` processes (gloo on the CPU), without the
    unused-parameter search, with SyncBatchNorm where the option asks for it."""
    # trainer=ddp picks its accelerator at run time; pinned to the CPU it builds anywhere.
    # (trainer.precision=auto is seglab.train's to resolve; a Trainer built here takes none.)
    cfg = make_cfg(
        f"trainer={option}", "trainer.accelerator=cpu", "trainer.precision=32-true", tiny=False
    )
    trainer = instantiate(cfg.trainer, logger=False)
    strategy = trainer.strategy
    assert isinstance(strategy, DDPStrategy), type(strategy)
    assert (strategy.num_processes, strategy.num_nodes, trainer.world_size) == (2, 1, 2)
    # The backend setup_distributed() will initialise the process group with.
    assert strategy._get_process_group_backend() == "gloo"
    # The keyword arguments the strategy hands to torch's DistributedDataParallel.
    assert strategy._ddp_kwargs == {"find_unused_parameters": False}
    assert isinstance(strategy._layer_sync, TorchSyncBatchNorm) is sync_batchnorm


def test_model_head_reads_class_count_from_data(make_cfg):
    for model in ("unet", "smp", "fcn"):
        cfg = make_cfg(
            f"model={model}", "data.class_names=[background,ellipse]", "data.num_classes=2"
        )
        assert cfg.model.get("classes", cfg.model.get("num_classes")) == 2


# Hydra's own keys in a `_target_` node; every other key is an argument of the callable.
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Files that set one of our classes up unlike its defaults on purpose: (file, key) -> why.
NOT_DEFAULTS = {
    ("inference/slide.yaml", "mode"): "the sliding-window preset; whole.yaml holds the defaults",
    ("inference/slide.yaml", "window"): "the sliding-window preset; whole.yaml holds the defaults",
    ("inference/slide.yaml", "stride"): "the sliding-window preset; whole.yaml holds the defaults",
    ("loss/ce_dice.yaml", "weights"): "spells out the weights that `null` (1 each) leaves implicit",
}


def _target_nodes(node, path: str = ""):
    """(dotted path, node) of every mapping in `node` that has a `_target_`, nested ones too."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}.{key}".lstrip("."))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def _load(name: str) -> dict:
    """A file of conf/ as written: `${...}` and `???` kept as strings, nothing resolved."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / name), resolve=False)


def _is_literal(value) -> bool:
    """A plain value: not `???`, no `${...}` anywhere inside, no object to build."""
    if isinstance(value, str):
        return value != "???" and "${" not in value
    if isinstance(value, dict):
        return "_target_" not in value and all(_is_literal(v) for v in value.values())
    if isinstance(value, list):
        return all(_is_literal(v) for v in value)
    return True


def _plain(value):
    """Tuples as lists, all the way down: YAML has no tuples."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


TARGET_FILES = sorted(
    name
    for name in (p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))
    if any(_target_nodes(_load(name)))
)


@pytest.mark.parametrize("name", TARGET_FILES)
def test_config_keys_and_values_are_the_callables_arguments_and_defaults(name):
    """A `_target_` node lists its callable's arguments by their names; for our own
    classes, all of them, each literal value equal to the Python default, so the YAML
    documents the code. Third-party callables (torch, Lightning, smp) are configured,
    not documented: their keys only have to be arguments."""
    problems = []
    for path, node in _target_nodes(_load(name)):
        target = node["_target_"]
        params = inspect.signature(get_method(target)).parameters  # a class is a callable
        keys = set(node) - HYDRA_KEYS
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        where = f"{name}:{path or '<top>'} ({target})"
        if not takes_any and keys - names:
            problems.append(f"{where}: not arguments: {sorted(keys - names)}")
        if not target.startswith("seglab."):
            continue
        # A factory (_partial_) gets the arguments without a default when it is called.
        required = {n for n in names if params[n].default is inspect.Parameter.empty}
        missing = names - keys - (required if node.get("_partial_", False) else set())
        if missing:
            problems.append(f"{where}: arguments missing: {sorted(missing)}")
        for key in sorted(keys & names):
            value, default = node[key], params[key].default
            if (name, f"{path}.{key}".lstrip(".")) in NOT_DEFAULTS:
                continue
            if default is inspect.Parameter.empty or not _is_literal(value):
                continue
            if _plain(value) != _plain(default):
                problems.append(f"{where}: {key}: YAML {value!r}, Python default {default!r}")
    assert not problems, "\n".join(problems)
