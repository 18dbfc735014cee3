"""One coercion of user values into typed settings, for every way a value comes in: flags,
sweep files (`base:`, `grid:`, `trials:`, `slice:`), their `sample:` and `stop:` blocks, and a
task's own settings. Each setting has a `Rule`; `coerce` applies it and raises a one-line
UsageError that names the setting, says what it wants and shows what it got.

Every number has bounds, so that no value accepted here overflows later: in a C++ timeout, a
shape, a loop count. YAML reads `1e-3` (no dot) as text: a float rule takes it as the number
it spells.
"""

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

from ymxb.errors import UsageError

INT32 = 2**31 - 1  # what XLA, gloo and JAX take as a count, a length or a number of seconds
SECONDS = 10**7  # the longest wait anyone means (~116 days); JAX's timeouts are int32 seconds


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting takes: a `kind` (int, float, str or bool), bounds for numbers (`low` and
    `high` inclusive, `above` exclusive), or a fixed set of `choices`; `none`: None is taken
    too (left to a default or to detection). `wants`: how an error says what is wanted."""

    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    above: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None
    none: bool = False
    wants: str = ""  # default: made from the kind and the bounds (`high` is said when it is passed)

    def described(self) -> str:
        if self.wants:
            return self.wants
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        what = {int: "an integer", float: "a finite number", str: "text", bool: "true or false"}[self.kind]
        bounds = [f"> {self.above:g}" if self.above is not None else None,
                  f">= {self.low:,}" if self.low is not None else None]
        return " ".join([what, ", ".join(b for b in bounds if b)]).strip()


def coerce(name: str, value, rule: Rule):
    """`value` as `rule` takes it (an int for an int, a float for a float however it was
    written); UsageError "NAME must be WANTED, got VALUE" where it is not."""
    if value is None and rule.none:
        return None
    if rule.choices is not None:
        if isinstance(value, bool) or value not in rule.choices:
            raise _wrong(name, value, rule, "; got ")
        return value
    if rule.kind is float:
        value = _number(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif rule.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, rule.kind)
    if not ok:
        raise _wrong(name, value, rule)
    if rule.kind in (int, float):
        if (rule.low is not None and value < rule.low) or (rule.above is not None and value <= rule.above):
            raise _wrong(name, value, rule)
        if rule.high is not None and value > rule.high:
            raise _wrong(name, value, rule, f" (at most {rule.high:,}), got ")
        return float(value) if rule.kind is float else value
    return value


def coerce_all(values: Mapping, rules: Mapping[str, Rule], name=lambda key: key) -> dict:
    """Every value of `values` coerced by its rule (`name(key)`: how an error names it)."""
    return {key: coerce(name(key), value, rules[key]) for key, value in values.items()}


def flag(name: str) -> str:
    """A setting's name as its flag: samples_per_host -> --samples-per-host."""
    return "--" + name.replace("_", "-")


def _number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _wrong(name: str, value, rule: Rule, got: str = ", got ") -> UsageError:
    return UsageError(f"{name} must be {rule.described()}{got}{_shown(value)}")


def _shown(value) -> str:
    """A value as an error shows it: repr, cut short (a huge integer, a long list)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
