"""Checks of config values, one style of message for every field of a run.

Each check takes a value and its dotted field (`"loss.beta"`, `"total_steps"`) and raises
`ConfigError` (a ValueError) whose message starts with `config.<field>` and ends with the
value it got, e.g. `config.loss.beta must be > 0.0 for loss 'dpo', got -1.0`. The losses'
`validate` functions (through the `check_*` wrappers, which read `config.loss`) and
`training/config_check.py` both use them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping, Optional


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def one_of(value, choices: Iterable, field: str) -> None:
  choices = list(choices)
  require(value in choices, f"config.{field} must be one of {choices}, got {value!r}")


def boolean(value, field: str) -> bool:
  require(isinstance(value, bool), f"config.{field} must be True or False, got {value!r}")
  return value


def integer(value, field: str, *, low: Optional[int] = None) -> int:
  """An int (not a bool), at least `low` when given."""
  is_int = isinstance(value, int) and not isinstance(value, bool)
  want = "an integer" + ("" if low is None else f" >= {low}")
  require(is_int and (low is None or value >= low), f"config.{field} must be {want}, got "
          f"{value!r}")
  return value


def _interval(low, high, low_inclusive: bool, high_inclusive: bool) -> str:
  if low is not None and high is not None:
    return (f"in {'[' if low_inclusive else '('}{low}, "
            f"{high}{']' if high_inclusive else ')'}")
  if low is not None:
    return (">= " if low_inclusive else "> ") + f"{low}"
  return ("<= " if high_inclusive else "< ") + f"{high}"


def number(value, field: str, *, low: Optional[float] = None, high: Optional[float] = None,
           low_inclusive: bool = True, high_inclusive: bool = True, context: str = "") -> float:
  """A finite real number (not a bool) in the interval the bounds give.

  `context` is said after the interval ("for loss 'dpo'").
  """
  real = isinstance(value, numbers.Real) and not isinstance(value, bool)
  require(real and math.isfinite(float(value)),
          f"config.{field} must be a finite number, got {value!r}")
  too_low = low is not None and (value < low if low_inclusive else value <= low)
  too_high = high is not None and (value > high if high_inclusive else value >= high)
  if too_low or too_high:
    raise ConfigError(f"config.{field} must be "
                      f"{_interval(low, high, low_inclusive, high_inclusive)}{context}, got "
                      f"{value!r}")
  return value


# ---------------------------------------------------------------------------------------
# `config.loss`: the hyperparameters of the registered loss it names.


def loss_name(cfg: Mapping) -> str:
  try:
    return cfg["name"]
  except (KeyError, AttributeError):
    return "?"


def hyperparameter(cfg: Mapping, key: str):
  """`cfg[key]`, or a ConfigError naming `config.loss.<key>` when the key is missing."""
  try:
    return cfg[key]
  except (KeyError, AttributeError):
    raise ConfigError(f"config.loss.{key} is required by loss {loss_name(cfg)!r}") from None


def check_number(cfg: Mapping, key: str, **bounds) -> float:
  """`config.loss.<key>` is a finite number within `bounds` (see `number`)."""
  value = hyperparameter(cfg, key)
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    value = float(value)  # an int from the command line reads as the float it means
  return number(value, f"loss.{key}", context=f" for loss {loss_name(cfg)!r}", **bounds)


def check_bool(cfg: Mapping, key: str) -> bool:
  return boolean(hyperparameter(cfg, key), f"loss.{key}")


def check_choice(cfg: Mapping, key: str, choices: Iterable):
  value = hyperparameter(cfg, key)
  one_of(value, choices, f"loss.{key}")
  return value


def check_hyperparameters(cfg: Mapping, defaults: Mapping[str, Any]) -> None:
  """`config.loss` holds `name` and exactly the keys of the loss's `defaults`: a key of
  another loss is refused by name (the loss would silently ignore it), a missing one too."""
  name = loss_name(cfg)
  known = ", ".join(sorted(defaults)) or "none"
  for key in cfg:
    require(key == "name" or key in defaults,
            f"config.loss.{key}={cfg[key]!r} has no effect on loss {name!r}: it is not one "
            f"of its hyperparameters ({known}); to switch losses start from "
            f"configs/{name}.py or use configs.base.set_loss")
  for key in defaults:
    hyperparameter(cfg, key)
