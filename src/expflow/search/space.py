"""A search space in Hydra's sweep syntax, as Optuna distributions (hydra-optuna-sweeper's
spelling: ``interval(a, b)``, ``tag(log, interval(a, b))``, ``range(a, b[, step])``,
``choice(x, y)`` or ``x,y``), and a trial's values back as Hydra overrides.

- ``interval(a, b)``: a float in [a, b] (``tag(int, ...)`` an int, ``tag(log, ...)`` on a log scale);
- ``range(a, b, step)``: Hydra's range (b excluded) as an int (or float) distribution with
  that step; ``tag(log, range(...))`` on a log scale (step 1);
- ``choice(...)`` / ``a,b,c``: a categorical. Values Optuna cannot store (lists, dicts:
  ``model.hidden=choice([32],[64,32])``) are kept as their override text;
- a plain value: the same for every trial (an override, not a parameter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from expflow.errors import ConfigError

PRIMITIVES = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Space:
    """The searched keys' distributions, and the overrides every trial shares."""

    distributions: dict[str, Any]  # key -> optuna distribution
    fixed: tuple[str, ...]
    choice_texts: dict[str, dict[str, str]]  # categorical key -> {repr(choice): its override text}

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's parameter values as Hydra overrides (the space's fixed ones first)."""
        out = list(self.fixed)
        for key in self.distributions:
            value = params[key]
            texts = self.choice_texts.get(key)
            out.append(f"{key}={texts[repr(value)] if texts and repr(value) in texts else value_text(value)}")
        return out


def value_text(value: Any) -> str:
    """A value as Hydra's override grammar writes it (strings escaped, lists and dicts nested)."""
    from hydra.core.override_parser.types import Override

    return str(Override._get_value_element_as_str(value))


def parse_space(params: dict[str, Any], where: str = "search.params") -> Space:
    """``{key: sweep text}`` as a :class:`Space`; a malformed entry is one ConfigError line
    naming the key and what is valid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    distributions: dict[str, Any] = {}
    fixed: list[str] = []
    choice_texts: dict[str, dict[str, str]] = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: must be a mapping of config key to a sweep (interval(...), choice(...), range(...))")
    for key, raw in params.items():
        text = f"{key}={value_text(raw) if not isinstance(raw, str) else raw}"
        try:
            override = parser.parse_override(text)
        except HydraException as e:
            raise ConfigError(f"{where}.{key}: {raw!r} is not an override value ({str(e).splitlines()[0]}); "
                              f"valid: interval(a, b), tag(log, interval(a, b)), range(a, b, step), choice(x, y), a value") from None
        if override.is_delete() or override.is_add() or override.is_force_add():
            raise ConfigError(f"{where}.{key}: write the key alone (no ~, + or ++); the value decides the distribution")
        value = override.value()
        if isinstance(value, IntervalSweep):
            distributions[str(key)] = _interval(value, f"{where}.{key}")
        elif isinstance(value, RangeSweep):
            distributions[str(key)] = _range(value, f"{where}.{key}")
        elif isinstance(value, ChoiceSweep):
            distributions[str(key)], choice_texts[str(key)] = _choice(value, f"{where}.{key}")
        elif override.is_sweep_override():
            raise ConfigError(f"{where}.{key}: {raw!r}: glob sweeps cannot be searched; valid: interval, range, choice")
        else:
            fixed.append(text)
    if not distributions:
        raise ConfigError(f"{where}: no key to search (give at least one interval(...), range(...) or choice(...))")
    return Space(distributions, tuple(fixed), choice_texts)


def _interval(value: Any, where: str) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    low, high = value.start, value.end
    log = "log" in value.tags
    _check_bounds(low, high, log, where)
    if "int" in value.tags:
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}: tag(int, interval(a, b)) needs integer bounds, got {low}, {high}")
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _range(value: Any, where: str) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    start, stop, step = value.start, value.stop, value.step
    log = "log" in value.tags
    if step is None or step <= 0:
        raise ConfigError(f"{where}: range(...) needs a positive step to search, got {step}")
    count = math.ceil((stop - start) / step)  # Hydra's range excludes stop
    if count < 1:
        raise ConfigError(f"{where}: range({start}, {stop}, {step}) is empty")
    high = start + (count - 1) * step
    if log and step != 1:
        raise ConfigError(f"{where}: tag(log, range(...)) needs step 1 (Optuna's log scale has no step)")
    _check_bounds(start, high, log, where)
    if all(isinstance(v, int) for v in (start, stop, step)):
        return IntDistribution(int(start), int(high), log=log, step=int(step))
    return FloatDistribution(float(start), float(high), log=log, step=None if log else float(step))


def _choice(value: Any, where: str) -> tuple[Any, dict[str, str]]:
    from optuna.distributions import CategoricalDistribution

    options = list(value.list)
    if not options:
        raise ConfigError(f"{where}: choice() has no option")
    if value.tags:
        raise ConfigError(f"{where}: tags apply to interval(...) and range(...), not to choice(...)")
    # Optuna stores None, bool, int, float and str; anything else as its override text.
    choices = [v if isinstance(v, PRIMITIVES) else value_text(v) for v in options]
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}: choice(...) lists an option twice")
    return CategoricalDistribution(choices), {repr(c): value_text(v) for c, v in zip(choices, options, strict=True)}


def _check_bounds(low: float, high: float, log: bool, where: str) -> None:
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"{where}: bounds {low}, {high} must be finite with low <= high")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs bounds above 0, got {low}, {high}")
