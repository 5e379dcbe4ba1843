"""From a folder to a tuned model within one time budget: plan, choose among candidate
plans by cross-validation, train the winner, test it.

    seglab-auto budget=00:00:03:00 name=auto_shapes
    seglab-auto data=folder data.root=/data/roads data.class_names=[bg,road] \\
        data.num_classes=2 budget=00:02:00:00 name=roads run_name=roads

The steps, each recorded in `<run dir>/auto.json` as it ends:
1. plan: the fingerprint and rules of `seglab.plan`, the batch measured by trial steps.
2. candidates: the plan and up to `candidates - 1` variants, each changing one decision
   the rules are least sure of, in this order: the next larger encoder (its batch
   measured again; from a 15-minute budget: a short one cannot train it enough after
   the selection), a larger crop (where the images are larger than the planned crop;
   measured again), the loss (a Dice term added, or dropped), half the batch (the
   learning rate scaled with it). Each is written to `<run dir>/conf/experiment/`.
3. selection: every candidate trains on each of `folds` folds of the pooled train and
   val splits (`data.folds`), all for the same time, `selection_share` of the budget
   split between the runs, and is scored on its held-out fold (the best
   `optimized_metric` of the run; at most 10% of a run's time goes to validation, on the
   fold's first images). Too many runs for the share: fewer candidates first (down to
   2), then fewer folds (down to 2); fewer than that is refused, naming the least budget.
4. choice: the highest mean fold score; when the runner-up's mean is within the spread
   (the larger standard deviation of the two), the one with more images/s, which trains
   more epochs in the rest of the budget.
5. final: the winner written to `<config dir>/experiment/<name>.yaml` (what it ran, so
   `seglab-train --config-dir <config dir> experiment=<name>` repeats it), trained on
   the train split for the budget left, less the test, the report and a 2% margin, and
   tested on the test split; `<run dir>/report.html` shows the fingerprint, the
   candidates with their fold scores, why the winner won and the test metrics.

Interrupted (a signal, a crash), the same command with `ckpt_path=auto` and the same
`run_name` goes on where it stopped: the plan and finished fold runs are kept, an
interrupted run resumes from its last.ckpt (`seglab-train ckpt_path=auto`). The budget
counts the time every attempt spent, as recorded; not the time between attempts.
"""

from __future__ import annotations

import logging
import math
import os
import time
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seglab import plan as planner
from seglab import rundir
from seglab.cli import command
from seglab.config import add_user_config_dir, compose
from seglab.errors import SeglabError
from seglab.summary import describe

log = logging.getLogger(__name__)

AUTO_JSON = "auto.json"
ENCODERS = ("tu-resnet10t", "resnet18", "resnet34", "resnet50")
# A fold run's time besides training, in this process: building data and model, the
# checkpoints, the last validation's start (measured on a 2-core CPU: 2-3 s).
FOLD_OVERHEAD_S = 3.0
MIN_FOLD_STEPS = 30  # a fold run trains at least this many steps, and 5 s
MIN_FOLD_S = 5.0
FINAL_OVERHEAD_S = 3.0  # the final run's set-up in this process
PAGE_S = 1.0  # this command's own page
# Of the budget, kept back when the final run's time is set. Less than seglab-plan's 5%:
# by then the time spent is measured, not estimated (a 3-minute run on shapes ended 5.4%
# early with 5%).
FINAL_MARGIN = 0.02
# The larger-encoder candidate only from this budget: in a 3-minute run on shapes,
# resnet18 led tu-resnet10t after 7 s of fold training (0.282 against 0.238) and reached
# a test mIoU of 0.47 in the final 103 s, against 0.83 for tu-resnet10t.
LARGER_ENCODER_FROM_S = 15 * 60


def process_started() -> float:
    """When this process started (Linux /proc, to the second), else now: the budget
    counts the imports too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


@dataclass
class Candidate:
    """One candidate plan and its fold scores."""

    name: str  # planned, encoder, crop, loss, batch
    change: str  # how it differs from the plan, in words
    images_per_s: float  # of a training step, measured by the plan's trials
    plan: dict[str, Any]  # Plan.to_dict()
    experiment: str = ""  # its config's name, under <run dir>/conf/experiment/
    scores: list[float | None] = field(default_factory=list)  # per fold

    @property
    def valid(self) -> list[float]:
        return [s for s in self.scores if s is not None and not math.isnan(s)]

    @property
    def mean(self) -> float | None:
        return describe(self.valid)["mean"] if self.valid else None

    @property
    def std(self) -> float:
        return (describe(self.valid)["std"] or 0.0) if self.valid else 0.0


def _rate(plan: planner.Plan) -> float:
    batch = plan.value("data.batch_size")
    step = next(t["step_s"] for t in plan.trials if t["batch"] == batch)
    return batch / step


def variants(
    base: planner.Plan,
    print_: planner.Fingerprint,
    replan: Any,
    count: int,
    budget_s: float,
) -> list[tuple[str, str, planner.Plan]]:
    """Up to `count` variants of `base`, one decision changed each (module docstring, step
    2); `replan(encoder=..., crop=...)` plans again where the batch must be measured."""
    found: list[tuple[str, str, planner.Plan]] = []
    encoder = base.value("model.encoder_name")
    if encoder in ENCODERS[:-1] and budget_s >= LARGER_ENCODER_FROM_S and len(found) < count:
        larger = ENCODERS[ENCODERS.index(encoder) + 1]
        found.append(("encoder", f"encoder {larger} for {encoder}", replan(encoder=larger)))
    crop = next((d.value for d in base.decisions if d.key == "data.crop_size"), None)
    short = min(print_.height["median"], print_.width["median"])
    if crop is not None and len(found) < count:
        larger = planner.floor32(min(short, crop * 1.5, 1024))
        if larger > crop:
            found.append(("crop", f"crop {larger} for {crop}", replan(crop=larger)))
    if len(found) < count:
        option = base.groups["loss"]
        other = deepcopy(base)
        weight_key = "loss.losses.ce.weight" if option == "ce_dice" else "loss.weight"
        weights = base.value(weight_key)
        other.remove(weight_key)
        if option == "ce":
            other.groups["loss"] = "ce_dice"
            other.add("loss.losses.ce.weight", weights, "a candidate of seglab-auto: a Dice term")
            change = "cross-entropy plus Dice for cross-entropy"
        else:
            other.groups["loss"] = "ce"
            other.add("loss.weight", weights, "a candidate of seglab-auto: no Dice term")
            change = "cross-entropy alone for cross-entropy plus Dice"
        found.append(("loss", change, other))
    batch = base.value("data.batch_size")
    half = batch // 2
    if len(found) < count and any(t["batch"] == half for t in base.trials) and half >= 2:
        other = deepcopy(base)
        lr = float(f"{base.value('optimizer.lr') * math.sqrt(0.5):.2g}")
        other.set("data.batch_size", half, "a candidate of seglab-auto: more, smaller steps")
        other.set("optimizer.lr", lr, "scaled with the batch, by sqrt(batch / 8)")
        found.append(("batch", f"batch {half} and lr {lr} for {batch}", other))
    return found[:count]


@dataclass
class Schedule:
    """How the selection share of the budget is spent."""

    candidates: int
    folds: int
    train_s: int  # each fold run's trainer.max_time
    val_images: int  # validated per validation of a fold run


def schedule(
    budget_s: float,
    share: float,
    candidates: int,
    folds: int,
    rates: list[float],
    pool: int,
    eval_per_image: float,
    step_s: float,
) -> Schedule:
    """The most candidates, then folds, whose runs each train `MIN_FOLD_STEPS` steps
    (and `MIN_FOLD_S`) within `share` of the budget (module docstring, step 3).

    Raises:
        SeglabError: not even 2 candidates on 2 folds fit; the least budget is named.
    """
    least_train = max(MIN_FOLD_S, MIN_FOLD_STEPS * step_s)
    for c in range(candidates, 1, -1):
        for k in range(folds, 1, -1):
            if c > len(rates):
                continue
            wall = share * budget_s / (c * k)
            train_s = int(wall - FOLD_OVERHEAD_S - 0.1 * wall)
            if train_s >= least_train:
                epoch_s = pool * (k - 1) / k / min(rates[:c])
                val_s = 0.1 * min(train_s, epoch_s)
                images = max(1, min(pool // k, int(val_s / eval_per_image)))
                return Schedule(c, k, train_s, images)
    least = 4 * (least_train + FOLD_OVERHEAD_S) / 0.9 / share
    raise SeglabError(
        f"a selection share of {share:.0%} of the budget cannot train 2 candidates on 2 folds "
        f"for {least_train:.0f} s each; give at least budget={planner.hms(least + 1)} (or a "
        "larger selection_share, or seglab-plan for a plan without a selection)"
    )


def choose(candidates: list[Candidate]) -> tuple[Candidate, str]:
    """The winner and why (module docstring, step 4)."""
    scored = sorted(
        (c for c in candidates if c.mean is not None), key=lambda c: c.mean, reverse=True
    )
    if not scored:
        raise SeglabError("no candidate finished a fold run: see the fold runs' train.log")
    first = scored[0]
    if len(scored) == 1:
        return first, f"{first.name} is the only candidate with fold scores"
    second = scored[1]
    lead = first.mean - second.mean
    spread = max(first.std, second.std)
    if lead > spread:
        return first, (
            f"{first.name} has the highest mean fold score, {first.mean:.4f} ± {first.std:.4f}; "
            f"it leads {second.name} ({second.mean:.4f} ± {second.std:.4f}) by {lead:.4f}, "
            f"more than the spread ({spread:.4f})"
        )
    faster = max((first, second), key=lambda c: c.images_per_s)
    return faster, (
        f"{first.name} ({first.mean:.4f} ± {first.std:.4f}) leads {second.name} "
        f"({second.mean:.4f} ± {second.std:.4f}) by {lead:.4f}, within the spread "
        f"({spread:.4f}): {faster.name}, the faster ({faster.images_per_s:.0f} images/s), "
        "trains more epochs in the rest of the budget"
    )


class Auto:
    """One seglab-auto run in its run directory; `state` is auto.json."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.started = process_started()
        self.budget_s = planner.read_budget(cfg).total_seconds()
        self.run_dir = Path(cfg.paths.output_dir)
        self.conf = self.run_dir / "conf"
        self.state: dict[str, Any] = {}
        previous = rundir.read_json(self.run_dir / AUTO_JSON, strict=True)
        if previous is not None:
            if cfg.get("ckpt_path") != "auto":
                raise SeglabError(
                    f"{self.run_dir} holds an earlier seglab-auto run; continue it with "
                    "ckpt_path=auto, or choose another run_name"
                )
            if previous.get("budget") != str(cfg.budget):
                raise SeglabError(
                    f"{self.run_dir} ran with budget={previous.get('budget')}; continue it "
                    "with the same budget"
                )
            self.state = previous
            log.info("Continuing the seglab-auto run of %s", self.run_dir)
        self.spent_before = float(self.state.get("spent_s", 0.0))
        self.state.setdefault("budget", str(cfg.budget))
        self.state.setdefault("budget_s", self.budget_s)
        self.state.setdefault("attempts", []).append(_now())

    def elapsed(self) -> float:
        return self.spent_before + time.time() - self.started

    def save(self) -> None:
        self.state["spent_s"] = round(self.elapsed(), 1)
        rundir.write_json(self.run_dir / AUTO_JSON, self.state)

    # Step 1 and 2 ------------------------------------------------------------------
    def plan(self) -> None:
        cfg = self.cfg
        target = planner.experiment_target(cfg, own="winner" in self.state)
        self.state["experiment"] = str(target)
        if "candidates" in self.state:
            return
        datamodule, print_ = planner.fingerprinted(cfg)
        device = planner.device_here()
        budget = planner.read_budget(cfg)

        base = planner.decide(print_, datamodule, cfg.data, cfg.model, budget, cfg.memory, device)

        def replan(**change: Any) -> planner.Plan:
            # The planned batch only, or a smaller one where it does not fit: the trial
            # steps of one batch cost a model build and four steps.
            batches = [b for b in planner.BATCHES if b <= base.value("data.batch_size")]
            return planner.decide(
                print_, datamodule, cfg.data, cfg.model, budget, cfg.memory, device,
                batches=batches[::-1], **change,
            )  # fmt: skip

        data_option = HydraConfig.get().runtime.choices.data
        chosen = [("planned", "the rules' plan", base)]
        chosen += variants(base, print_, replan, max(0, int(cfg.candidates) - 1), self.budget_s)
        candidates = []
        for name, change, plan in chosen:
            experiment = f"{cfg.name}__{name}"
            text = planner.render(
                plan, print_, cfg, data_option, name=experiment, by="seglab-auto",
                note=[f"Candidate {name!r}: {change}."],
            )  # fmt: skip
            planner.write_text(self.conf / "experiment" / f"{experiment}.yaml", text)
            candidates.append(
                Candidate(name, change, round(_rate(plan), 2), plan.to_dict(), experiment)
            )
        pool = print_.samples["train"] + print_.samples.get("val", 0)
        batch = base.value("data.batch_size")
        step_s = next(t["step_s"] for t in base.trials if t["batch"] == batch)
        self.state.update(
            fingerprint=print_.to_dict(),
            evaluate=base.evaluate,
            pool=pool,
            eval_per_image=step_s / batch / 3,
            step_s=step_s,
            candidates=[asdict(c) for c in candidates],
            plan_s=round(self.elapsed(), 1),
        )
        self.save()

    def candidates(self) -> list[Candidate]:
        return [Candidate(**c) for c in self.state["candidates"]]

    # Step 3 ------------------------------------------------------------------------
    def select(self) -> None:
        cfg = self.cfg
        candidates = self.candidates()
        if "schedule" not in self.state:
            # The share is of the whole budget, counted from the end of the plan.
            plan = schedule(
                self.budget_s, float(cfg.selection_share), len(candidates), int(cfg.folds),
                [c.images_per_s for c in candidates], int(self.state["pool"]),
                float(self.state["eval_per_image"]), float(self.state["step_s"]),
            )  # fmt: skip
            self.state["schedule"] = asdict(plan)
            self.state["candidates"] = [asdict(c) for c in candidates[: plan.candidates]]
            self.save()
        plan = Schedule(**self.state["schedule"])
        candidates = self.candidates()
        add_user_config_dir(self.conf)
        log.info(
            "Selection: %d candidates x %d folds, %d s of training each",
            plan.candidates, plan.folds, plan.train_s,
        )  # fmt: skip
        for i, candidate in enumerate(candidates):
            while len(candidate.scores) < plan.folds:
                fold = len(candidate.scores)
                candidate.scores.append(self._fold_run(candidate, fold, plan))
                self.state["candidates"][i] = asdict(candidate)
                self.save()
        self.state["selection_s"] = round(self.elapsed() - self.state["plan_s"], 1)

    def _fold_run(self, candidate: Candidate, fold: int, plan: Schedule) -> float | None:
        run = self.run_dir / "folds" / candidate.name / f"fold_{fold}"
        batch = candidate.plan["decisions"]
        batch = next(d["value"] for d in batch if d["key"] == "data.batch_size")
        overrides = [
            f"experiment={candidate.experiment}",
            f"data.folds={plan.folds}",
            f"data.fold={fold}",
            f"trainer.max_time={planner.hms(plan.train_s)}",
            f"trainer.limit_val_batches={max(1, math.ceil(plan.val_images / batch))}",
            "trainer.check_val_every_n_epoch=1",
            "trainer.num_sanity_val_steps=0",
            f"optimized_metric={self.cfg.optimized_metric}",
            "test=false",
            "report=false",
            "ckpt_path=auto",
        ]
        log.info("Fold run %s fold %d/%d: %s", candidate.name, fold + 1, plan.folds, run)
        metrics = self._train(overrides, run)
        score = metrics.get(f"best/{self.cfg.optimized_metric}")
        return None if score is None else float(score)

    def _train(self, overrides: list[str], run: Path) -> dict[str, Any]:
        from seglab.train import train  # noqa: PLC0415 - Lightning's import, when it trains

        done = rundir.read_metrics(run, strict=False)
        record = rundir.read_record(run, strict=False)
        if done is not None and record is not None and record.get("status") == "finished":
            return done["metrics"]
        cfg = compose(overrides, output_dir=run)
        train(cfg)
        return rundir.read_metrics(run)["metrics"]

    # Step 4 and 5 ------------------------------------------------------------------
    def final(self) -> dict[str, Any]:
        cfg = self.cfg
        candidates = self.candidates()
        if "winner" not in self.state:
            winner, why = choose(candidates)
            plan = self.state["plan_final"] = self._final_plan(winner)
            self.state["winner"] = {"name": winner.name, "why": why, "max_time": plan}
            self.save()
        name = self.state["winner"]["name"]
        winner = next(c for c in candidates if c.name == name)
        target = Path(self.state["experiment"])
        text = (self.conf / "experiment" / f"{winner.experiment}.yaml").read_text()
        text = _with_max_time(text, self.state["winner"]["max_time"], cfg.name, self.state)
        planner.write_text(self.conf / "experiment" / f"{cfg.name}.yaml", text)
        planner.write_text(target, text)
        log.info("Winner %s (%s); written %s", name, self.state["winner"]["why"], target)
        run = self.run_dir / "final"
        metrics = self._train([f"experiment={cfg.name}", "ckpt_path=auto"], run)
        self.state["final"] = {
            "run_dir": str(run),
            "metrics": {k: v for k, v in metrics.items() if k.startswith(("test/", "best/"))},
        }
        return metrics

    def _final_plan(self, winner: Candidate) -> str:
        """The final run's trainer.max_time: the budget left, less its set-up, test,
        report, this page and a 2% margin."""
        estimate = winner.plan["estimate"]
        rest = (
            self.budget_s
            - self.elapsed()
            - FINAL_OVERHEAD_S
            - float(estimate["test_and_report_s"])
            - PAGE_S
            - FINAL_MARGIN * self.budget_s
        )
        least = 2 * (float(estimate["epoch_s"]) + float(estimate["validation_s"]))
        if rest < min(least, 10):
            raise SeglabError(
                f"the selection left {max(0, rest):.0f} s to train the winner; give a "
                "larger budget or a smaller selection_share"
            )
        return planner.hms(rest)

    def finish(self, metrics: dict[str, Any]) -> Path:
        from seglab.report.auto import write_auto_report  # noqa: PLC0415

        self.state["status"] = "finished"
        self.state["ended"] = _now()
        self.save()
        page = write_auto_report(self.run_dir)
        self.state["wall_s"] = round(self.elapsed(), 1)
        self.save()
        over = self.state["wall_s"] - self.budget_s
        log.info(
            "seglab-auto ended in %.1f s of a %.0f s budget (%+.1f%%); test %s; page %s",
            self.state["wall_s"], self.budget_s, 100 * over / self.budget_s,
            {k: round(v, 4) for k, v in metrics.items() if k in ("test/mIoU", "test/acc")}, page,
        )  # fmt: skip
        return page


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _with_max_time(text: str, max_time: str, name: str, state: dict[str, Any]) -> str:
    """The winner's experiment file as the final run ran it: its name in the header,
    `trainer.max_time` the time the final run had."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#   seglab-train"):
            line = f"#   seglab-train --config-dir <this folder's parent> experiment={name}"
        if line.strip().startswith("max_time:"):
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(
                f"{indent}# seglab-auto: the {state['budget']} budget left this much after "
                "the plan and the selection"
            )
            line = f'{indent}max_time: "{max_time}"'
        lines.append(line)
    winner = state["winner"]
    header = [
        lines[0],
        f"# Chosen by seglab-auto among {len(state['candidates'])} candidates: {winner['why']}.",
    ]
    return "\n".join(header + lines[1:]) + "\n"


def auto(cfg: DictConfig) -> dict[str, Any]:
    """Plan, select, train and test (module docstring); returns auto.json's content."""
    if not 0 < float(cfg.selection_share) < 1:
        raise SeglabError(f"selection_share={cfg.selection_share} must lie between 0 and 1")
    if not 2 <= int(cfg.candidates) <= 4 or int(cfg.folds) < 2:
        raise SeglabError(
            f"candidates={cfg.candidates} and folds={cfg.folds}: seglab-auto chooses among 2 "
            "to 4 candidates on at least 2 folds (seglab-plan plans without choosing)"
        )
    run = Auto(cfg)
    try:
        run.plan()
        run.select()
        metrics = run.final()
    except BaseException as err:
        stopped = isinstance(err, KeyboardInterrupt) or getattr(err, "exit_code", 1) > 128
        run.state["status"] = "stopped" if stopped else "failed"
        run.state["error"] = str(err)[:500]
        if "candidates" in run.state:  # a refusal before the plan leaves no record
            run.save()
        raise
    run.finish(metrics)
    return run.state


@command("auto")
def main(cfg: DictConfig) -> None:
    auto(cfg)


if __name__ == "__main__":
    main()
