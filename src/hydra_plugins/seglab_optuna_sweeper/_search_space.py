"""The search space: Hydra's sweep syntax as optuna distributions, and back to overrides.

    optimizer.lr: tag(log, interval(0.0003, 0.01))   FloatDistribution(log=True)
    optimizer.weight_decay: interval(0.0, 0.001)     FloatDistribution
    trainer.max_epochs: int(interval(2, 8))          IntDistribution
    data.batch_size: range(8, 33, 8)                 IntDistribution(step=8): 8, 16, 24, 32
    loss: choice(ce, ce_dice)   (or: ce,ce_dice)      CategoricalDistribution
    shuffle(range(1, 4))                             CategoricalDistribution(1, 2, 3)

Entries of `hydra.sweeper.params` come first, then the command line's overrides; a later
entry for the same key replaces an earlier one, so `optimizer.lr=0.001` on the command
line fixes a searched parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer, ValueType
from hydra.errors import OverrideParseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

from seglab.errors import SeglabError, one_line

SearchSpace = dict[str, BaseDistribution]


def parse_search_space(
    params: Mapping[str, Any], arguments: Sequence[str]
) -> tuple[SearchSpace, list[str]]:
    """The distributions of the sweep entries among `params` (hydra.sweeper.params) and
    `arguments` (the command line's overrides), and the other entries as overrides.

    Raises:
        SeglabError: an entry Hydra cannot parse or optuna cannot use (one line, with
            its key).
    """
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    parser = OverridesParser.create()
    space: SearchSpace = {}
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            [override] = parser.parse_overrides([line])
        except OverrideParseException as err:
            key = line.split("=", 1)[0]
            reason = str(err).splitlines()[0]  # then a link to Hydra's grammar
            raise SeglabError(
                f"search space entry {key}: cannot parse {line!r}: {reason}"
            ) from None
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = _distribution(key, override)
        else:
            fixed[key] = override.input_line
    return space, list(fixed.values())


def _distribution(key: str, override: Override) -> BaseDistribution:
    try:
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            raise ValueError("glob(...) is not a search space")
        sweep = override.value()
        if override.is_range_sweep() and sweep.shuffle:
            # The order is random on each parse; a resumed study compares spaces.
            return CategoricalDistribution(sorted(override.sweep_iterator()))
        if override.is_choice_sweep():
            choices = list(override.sweep_iterator(transformer=Transformer.identity))
            for choice in choices:
                if not isinstance(choice, str | int | float | bool):
                    raise ValueError(f"a choice is a string, number or boolean, not {choice!r}")
            return CategoricalDistribution(choices)
        if override.is_range_sweep():
            values = list(override.sweep_iterator(transformer=Transformer.identity))
            if not values:
                raise ValueError("the range is empty")
            low, high, step = min(values), max(values), abs(sweep.step)
            if all(isinstance(v, int) for v in values):
                return IntDistribution(low, high, step=int(step))
            return FloatDistribution(low, high, step=step)
        if override.is_interval_sweep():
            log = "log" in sweep.tags
            if isinstance(sweep.start, int) and isinstance(sweep.end, int):
                return IntDistribution(sweep.start, sweep.end, log=log)
            return FloatDistribution(sweep.start, sweep.end, log=log)
        raise ValueError(f"{type(sweep).__name__} is not a search space")
    except ValueError as err:
        raise SeglabError(
            f"search space entry {key}: optuna cannot use {override.input_line!r}: "
            f"{one_line(err)}; use choice(...), range(...), interval(...) or "
            "tag(log, interval(...)) with low < high (and low > 0 for log)"
        ) from None


def describe(distribution: BaseDistribution) -> str:
    """A distribution in the sweep syntax it came from, for messages."""
    if isinstance(distribution, CategoricalDistribution):
        return f"choice({', '.join(map(str, distribution.choices))})"
    assert isinstance(distribution, IntDistribution | FloatDistribution)
    kind = "int " if isinstance(distribution, IntDistribution) else ""
    log = "log " if distribution.log else ""
    step = f" step {distribution.step}" if distribution.step not in (None, 1) else ""
    return f"{kind}{log}interval({distribution.low}, {distribution.high}){step}"


def suggest(trial: Trial, key: str, distribution: BaseDistribution) -> Any:
    """`trial`'s value for `key`: drawn by the sampler, or the one a queued trial has."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            key, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(
        key, distribution.low, distribution.high, step=distribution.step, log=distribution.log
    )


def override_value(value: Any) -> str:
    """`value` in Hydra's override syntax; strings quoted, so "1" stays a string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Hydra unescapes backslashes only before a quote or the closing quote.
        escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
        return "'" + escaped.replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    raise TypeError(f"{value!r} has no override syntax")
