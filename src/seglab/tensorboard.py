"""What a run looks like in TensorBoard: `TensorBoardLogger`, Lightning's logger with
per-class curves one colour per class and an `epoch` curve that only climbs; and
`log_hparams`, the run's row in the HParams table that compares the runs of a sweep."""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

# Per-class metrics, "<stage>/<metric>/<class>" (val/IoU/car), and where their runs live.
PER_CLASS = re.compile(r"^(train|val|test)/([^/]+)/(.*)$")  # a class may be named ""
CLASS_RUNS = "classes"
# Charts of the Custom Scalars tab: one category per per-class metric, one chart per stage.
CHART_TITLES = {"IoU": "per-class IoU", "Acc": "per-class accuracy"}


# In the log dir: which class each class run holds, {"classes/a_b-2": "a_b", ...}.
CLASS_INDEX = "class_runs.json"
# Folder names Windows refuses (with any extension), and the longest kept of a class name.
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_MAX_FOLDER = 60


# The group test metrics are shown in: TensorBoard orders its groups by their tags' sort
# order, in which `test` comes before `train`, and opens only the first two; `~` sorts
# after every letter, so the groups read train, val, test and the curves open.
TEST_GROUP = "~test"


def shown_tag(name: str) -> str:
    """The TensorBoard tag of the metric `name`: every tag in a `train/`, `val/` or
    `~test/` group, in that order. TensorBoard's Scalars tab orders the groups by their
    tags' sort order and opens the first two, so top-level names (`best/val/mIoU`,
    Lightning's `epoch`, the learning rate monitor's `lr-AdamW`) and `test/` (before
    `train/`) would open instead of the curves a person looks for: `best/val/mIoU` is
    shown as `val/mIoU_best` (beside `val/mIoU`), `epoch` and `lr-AdamW` as
    `train/epoch` and `train/lr-AdamW`, `test/mIoU` as `~test/mIoU` (the single points
    of the best checkpoint, last). metrics.json, the CSV log and the report keep the
    names as logged (`logged_name`)."""
    if name.startswith("best/"):
        return f"{name.removeprefix('best/')}_best"
    if name == "epoch" or name.startswith("lr-"):
        return f"train/{name}"
    if name.startswith("test/"):
        return f"{TEST_GROUP}/{name.removeprefix('test/')}"
    return name


def logged_name(tag: str) -> str:
    """The metric name of the TensorBoard tag `tag` (`shown_tag`'s inverse)."""
    if tag.startswith(f"{TEST_GROUP}/"):
        tag = f"test/{tag.removeprefix(f'{TEST_GROUP}/')}"
    if tag.endswith("_best"):
        return f"best/{tag.removesuffix('_best')}"
    if tag == "train/epoch" or tag.startswith("train/lr-"):
        return tag.removeprefix("train/")
    return tag


def class_folder(name: str) -> str:
    """Class `name` as one folder name that stays where it is put on any file system:
    letters, digits (any script) and `_.+-` kept, every other character (`/`, `\\`,
    space, `:`) an `_`; leading and trailing dots `_` too (`..` is `__`, never the parent
    folder, `.` is `_`); empty is `_`; at most 60 characters. Not unique: `a/b` and `a_b`
    give one name, see `unique_folder`."""
    folder = re.sub(r"[^\w.+-]", "_", unicodedata.normalize("NFC", name))[:_MAX_FOLDER]
    folder = re.sub(r"^\.+|\.+$", lambda dots: "_" * len(dots.group()), folder) or "_"
    return f"_{folder}" if _RESERVED.match(folder) else folder


def unique_folder(name: str, taken: Collection[str]) -> str:
    """`class_folder(name)`, with `-2`, `-3`, ... added while it is in `taken` (folder
    names, lower case: names that only differ by case are one folder on macOS and
    Windows). The logger gives the first class of a folder the name plain:
    "a/b", "a_b", "A/B" in that order are a_b, a_b-2, A_B-3."""
    base = class_folder(name)
    folder, n = base, 2
    while folder.casefold() in taken:
        folder, n = f"{base}-{n}", n + 1
    return folder


def read_class_runs(log_dir: str | Path) -> dict[str, str]:
    """The class of each class run of a TensorBoard log dir, `{"classes/a_b-2": "a_b"}`
    (run folders relative to `log_dir`, as `TensorBoardLogger` wrote them); empty where
    it wrote none."""
    path = Path(log_dir) / CLASS_INDEX
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger (event files in `save_dir/name/version`), writing
    two things differently:

    - Per-class metrics (`val/IoU/<class>`) go to one run per class, `classes/<class>`
      below the log dir, under the metric's tag (`val/IoU`). TensorBoard colours lines by
      run: the classes, as tags of one run, would share one colour; as runs, one chart
      draws each in its own colour with the class name in the legend (in the Scalars tab
      and in the Custom Scalars tab, whose layout this logger writes). The run's folder
      is the class name made safe (`unique_folder`: `a/b` is `classes/a_b`, `..` is
      `classes/__`, never a folder outside `classes/`), one per class; `class_runs.json`
      in the log dir says which class each holds (`read_class_runs`), and a resumed run
      keeps them.
    - Every tag goes into a `train`, `val` or `~test` group, in that order: the Scalars
      tab opens the first two (`shown_tag`: `best/val/mIoU` is `val/mIoU_best`, `epoch`
      is `train/epoch`, `test/mIoU` is `~test/mIoU`).
    - `epoch`, which Lightning adds to every logged dict, is left out of test metrics:
      testing restores the best checkpoint, whose epoch would be a jump back at the end
      of a curve that only climbs while fitting.

    Args:
        save_dir, name, version: the event files go to `save_dir/name/version`.
        log_graph: also write the model graph.
        default_hp_metric: write Lightning's placeholder `hp_metric` (-1); seglab's
            HParams rows come from `log_hparams`.
        prefix: put before every metric name.
    """

    def __init__(
        self,
        save_dir: str | Path,
        name: str = "tensorboard",
        version: int | str | None = "",
        log_graph: bool = False,
        default_hp_metric: bool = False,
        prefix: str = "",
        **writer_kwargs: Any,
    ) -> None:
        super().__init__(
            save_dir,
            name=name,
            version=version,
            log_graph=log_graph,
            default_hp_metric=default_hp_metric,
            prefix=prefix,
            **writer_kwargs,
        )
        # SummaryWriter options (purge_step for a resumed run) apply to the class runs too.
        self._writer_kwargs = writer_kwargs
        self._class_writers: dict[str, SummaryWriter] = {}
        self._class_runs: dict[str, str] | None = None  # class name -> "classes/<folder>"
        self._charted: set[str] = set()  # per-class metrics with a Custom Scalars chart

    def class_run(self, name: str) -> str:
        """The run folder, below the log dir, of class `name`'s curves: `classes/<folder>`,
        a new one (`unique_folder`) at a class's first metric, recorded in
        `class_runs.json`; the recorded one for a class of a resumed run."""
        if self._class_runs is None:
            recorded = read_class_runs(self.log_dir)
            self._class_runs = {held: run for run, held in recorded.items()}
        if name not in self._class_runs:
            taken = {run.split("/", 1)[1].casefold() for run in self._class_runs.values()}
            self._class_runs[name] = f"{CLASS_RUNS}/{unique_folder(name, taken)}"
            index = Path(self.log_dir) / CLASS_INDEX
            index.parent.mkdir(parents=True, exist_ok=True)
            runs = {run: held for held, run in self._class_runs.items()}
            index.write_text(json.dumps(runs, indent=1, ensure_ascii=False), encoding="utf-8")
        return self._class_runs[name]

    def _class_writer(self, name: str) -> SummaryWriter:
        if name not in self._class_writers:
            self._class_writers[name] = SummaryWriter(
                str(Path(self.log_dir) / self.class_run(name)), **self._writer_kwargs
            )
        return self._class_writers[name]

    def _chart(self, metrics: set[str]) -> None:
        """Write the Custom Scalars layout at the first per-class metrics (TensorBoard
        reads a run's first layout only): per metric, a validation and a test chart of
        the class runs."""
        if self._charted:
            return
        self._charted = set(metrics)
        layout = {
            CHART_TITLES.get(metric, f"per-class {metric}"): {
                stage: ["Multiline", [f"^{re.escape(shown_tag(f'{stage}/{metric}'))}$"]]
                for stage in ("val", "test")
            }
            for metric in sorted(self._charted)
        }
        self.experiment.add_custom_scalars(layout)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        testing = any(name.startswith("test/") for name in metrics)
        own: dict[str, Any] = {}
        charted: set[str] = set()
        for name, value in metrics.items():
            if name == "epoch" and testing:
                continue
            match = PER_CLASS.match(name)
            if match is None:
                own[shown_tag(name)] = value
                continue
            stage, metric, class_name = match.groups()
            value = value.item() if isinstance(value, Tensor) else value
            tag = shown_tag(f"{stage}/{metric}")
            self._class_writer(class_name).add_scalar(tag, value, step)
            charted.add(metric)
        if charted:
            self._chart(charted)
        if own:
            super().log_metrics(own, step)

    @rank_zero_only
    def save(self) -> None:
        super().save()
        for writer in self._class_writers.values():
            writer.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        for writer in self._class_writers.values():
            writer.close()  # reopens on the next write (testing follows fitting)


# --- HParams -----------------------------------------------------------------------------

# The choices runs are compared by: (column, config group or key). A group gives the
# option's name (model=unet: "unet"); a key its value.
COLUMNS = (
    ("data", "data"),
    ("model", "model"),
    ("encoder", "model.encoder_name"),
    ("loss", "loss"),
    ("optimizer", "optimizer"),
    ("lr", "optimizer.lr"),
    ("weight decay", "optimizer.weight_decay"),
    ("scheduler", "scheduler"),
    ("batch size", "data.batch_size"),
    ("precision", "trainer.precision"),
    ("seed", "seed"),
)
# Overrides that say where a run writes or how it was launched, not what it trains.
BOOKKEEPING = re.compile(
    r"^(hydra|paths|logger|hparams_search|callbacks\.optuna_trial|ckpt_path)([./]|$)"
)


class Launch(NamedTuple):
    """How Hydra composed a run: the option chosen per config group (`model: unet`) and
    the command-line overrides, as `launch()` reads them; empty without Hydra."""

    choices: Mapping[str, str] = {}
    overrides: Sequence[str] = ()


def launch() -> Launch:
    """The running Hydra job's `Launch` (read once, by the entry point)."""
    if not HydraConfig.initialized():
        return Launch()
    hydra = HydraConfig.get()
    choices = {k: str(v) for k, v in hydra.runtime.choices.items() if v is not None}
    return Launch(choices, list(hydra.overrides.task))


def _choice(config: Mapping[str, Any], launch: Launch, group: str) -> str | None:
    """The option chosen for config `group`: its name where Hydra composed the config,
    else the class it builds; the architecture for `model=smp`."""
    node = config.get(group)
    if not isinstance(node, Mapping):
        return None
    if group == "model" and isinstance(node.get("arch"), str):
        return node["arch"]
    if (choice := launch.choices.get(group)) is not None:
        return choice
    target = node.get("_target_")
    return str(target).rsplit(".", 1)[-1] if target else None


def _scalar(value: Any) -> Any:
    """A value the HParams table holds (number, string, bool); None for none."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _select(config: Mapping[str, Any], key: str) -> Any:
    """`config`'s value at the dotted `key`; None where it has none."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def sweep_overrides(config: Mapping[str, Any], launch: Launch) -> dict[str, Any]:
    """The run's command-line overrides (a sweep job's parameters among them) as
    `{key: value}`, values read back from the resolved `config` (typed); Hydra's and
    other bookkeeping keys left out."""
    found: dict[str, Any] = {}
    for override in launch.overrides:
        key, _, raw = override.partition("=")
        key = key.lstrip("+~").split("@", 1)[0]
        if not key or BOOKKEEPING.match(key):
            continue
        if key in launch.choices:  # a config group: its option's name
            found[key] = _choice(config, launch, key) or raw
            continue
        value = _select(config, key)
        found[key] = _scalar(value) if value is not None else raw
    return found


class Column(NamedTuple):
    """A column of the HParams table: `name` identifies it (and orders it: TensorBoard
    sorts columns by `varied`, then by name, and shows the first five), `title` heads
    it."""

    name: str
    title: str
    value: Any
    varied: bool  # set on the command line: a sweep's parameter


def run_hparams(config: Mapping[str, Any], launch: Launch) -> list[Column]:
    """A run's row of the HParams table, from its resolved `config` and its `launch`:
    the `COLUMNS`, in that order, then every other override (`sweep_overrides`); the
    overridden ones, a sweep's parameters, first."""
    overrides = sweep_overrides(config, launch)
    row = []
    for i, (title, where) in enumerate(COLUMNS):
        if "." in where or where == "seed":
            value = _scalar(_select(config, where))
        else:
            value = _choice(config, launch, where)
        row.append(Column(f"{i:02d} {title}", title, value, where in overrides))
    shown = {where for _, where in COLUMNS}
    row += [Column(k, k, v, True) for k, v in overrides.items() if k not in shown]
    return row


def final_metrics(metrics: dict[str, float | None]) -> list[str]:
    """The metrics of the HParams table, each the last point of its scalar curve: the
    best validation score (`best/val/mIoU`) and the test scores (`test/mIoU`, ...,
    `test/loss` last: TensorBoard shows the first five), not per-class ones."""
    names = [
        name
        for name, value in metrics.items()
        if value is not None
        and name.split("/", 1)[0] in ("test", "best")
        and not PER_CLASS.match(name.removeprefix("best/"))
    ]
    return sorted(names, key=lambda n: (not n.startswith("best/"), n.endswith("/loss")))


def _hparam_info(column: Column) -> api_pb2.HParamInfo:
    kind = (
        api_pb2.DATA_TYPE_BOOL
        if isinstance(column.value, bool)
        else api_pb2.DATA_TYPE_FLOAT64
        if isinstance(column.value, int | float)
        else api_pb2.DATA_TYPE_STRING
    )
    return api_pb2.HParamInfo(
        name=column.name, display_name=column.title, type=kind, differs=column.varied
    )


def _hparams_summary(tag: str, **data: Any) -> Summary:
    """A summary of the HParams plugin (`tensorboard.plugins.hparams.summary` builds the
    same, but imports TensorFlow)."""
    content = plugin_data_pb2.HParamsPluginData(**data)
    return Summary(
        value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(content))]
    )


def write_hparams(writer: SummaryWriter, row: Sequence[Column], metrics: Sequence[str]) -> None:
    """Write one run of the HParams table into `writer`'s run: the experiment (the
    columns: `row`'s and `metrics`), the session's values and its end. A metric's value
    is the last point of the run's scalar curve of that name: nothing is logged twice.

    TensorBoard takes the columns from one run's experiment (any): the runs of a sweep,
    with the same overrides, share them.
    """
    row = [column for column in row if column.value is not None]
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for column in row:
        value = start.hparams[column.name]
        if isinstance(column.value, bool):
            value.bool_value = column.value
        elif isinstance(column.value, int | float):
            value.number_value = column.value
        else:
            value.string_value = str(column.value)
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=[_hparam_info(column) for column in row],
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=shown_tag(m)), display_name=m)
            for m in metrics
        ],
    )
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    # SummaryWriter adds only its own summaries; its file writer takes any summary.
    file_writer = writer._get_file_writer()  # noqa: SLF001 (torch's, no public accessor)
    file_writer.add_summary(_hparams_summary(metadata.EXPERIMENT_TAG, experiment=experiment))
    file_writer.add_summary(
        _hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start)
    )
    file_writer.add_summary(_hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end))
    writer.flush()


def log_hparams(
    trainer: L.Trainer,
    row: Sequence[Column],
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
) -> None:
    """Record the run for comparison with others: for TensorBoard, its row of the
    HParams table (`run_hparams`) with the final metrics (`final_metrics`); a seglab
    tracker (`seglab.trackers.MLflowLogger.log_run`) the row, `params` and those
    metrics; other loggers get `params`, the whole resolved config."""
    shown = final_metrics(dict(metrics))
    for logger in trainer.loggers:
        if isinstance(logger, LightningTensorBoardLogger):
            if trainer.is_global_zero:
                write_hparams(logger.experiment, row, shown)
        elif hasattr(logger, "log_run"):  # seglab.trackers: the row's choices as params
            logger.log_run(row, params, {name: metrics[name] for name in shown})
        else:
            logger.log_hyperparams(dict(params))
