"""Shared pieces of the small worlds: results, loss configs, LossInputs from pairs, Adam.

A world run returns a `WorldResult`: one measured number, its target and tolerance, the rule
that judges it (`criterion`) and data for the report's plot. The judgement is made here, once:
  "within":   |value − target| ≤ tolerance
  "at_most":  value ≤ target + tolerance
  "at_least": value ≥ target − tolerance
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import algorithms
from algorithms.base import LossInputs
from verification.tabular import Pairs, TreeSpace

CRITERIA = ("within", "at_most", "at_least")


@dataclasses.dataclass
class WorldResult:
  algorithm: str
  world: str
  metric: str
  value: float
  target: float
  tolerance: float
  criterion: str
  note: str = ""
  runtime_s: float = 0.0
  plot: Optional[dict[str, Any]] = None  # see experiments/verification_report.py
  expected_shortfall: str = ""  # non-empty: a measured, documented miss (see the report)

  @property
  def passed(self) -> bool:
    return judge(self.value, self.target, self.tolerance, self.criterion)

  def record(self) -> dict[str, Any]:
    """The JSON line of `python -m experiments.worlds`."""
    return {"algorithm": self.algorithm, "world": self.world, "metric": self.metric,
            "value": float(self.value), "target": float(self.target),
            "tolerance": float(self.tolerance), "passed": bool(self.passed),
            "criterion": self.criterion, "runtime_s": round(float(self.runtime_s), 3)}


def judge(value: float, target: float, tolerance: float, criterion: str) -> bool:
  if not np.isfinite(value):
    return False
  if criterion == "within":
    return abs(value - target) <= tolerance
  if criterion == "at_most":
    return value <= target + tolerance
  if criterion == "at_least":
    return value >= target - tolerance
  raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def timed(worlds: Callable[[], Iterator[WorldResult]]) -> list[WorldResult]:
  """Runs a generator of world results; each result gets the wall time since the previous
  one (JIT compilation included, and the work it shares with later results)."""
  results = []
  start = time.perf_counter()
  for result in worlds():
    now = time.perf_counter()
    result.runtime_s = now - start
    start = now
    results.append(result)
  return results


def loss_config(name: str, **keys):
  """The registered loss's `config.loss` (its defaults) with `keys` set, validated."""
  algorithm = algorithms.get_algorithm(name)
  cfg = algorithm.loss_config(**keys)
  algorithm.validate(cfg)
  return cfg


def garbage_padded(space: TreeSpace, tok: jax.Array) -> jax.Array:
  """[R, T] per-token values with NaN under mask 0, as a model's padded rows may carry.

  The losses must keep whatever sits under mask 0 out of value and gradient; every world
  feeds them such rows so that a leak shows up as a NaN result.
  """
  return jnp.where(jnp.asarray(space.mask) > 0, tok, jnp.nan)


def normalized_weights(weights) -> jax.Array:
  """[B] pair weights scaled to mean 1 (batch_mean clamps the weight sum at ≥ 1)."""
  w = jnp.asarray(weights, jnp.float32)
  return w * (w.shape[0] / jnp.sum(w))


def pair_inputs(space: TreeSpace, pairs: Pairs, policy: jax.Array, *,
                ref: Optional[jax.Array] = None, prev: Optional[jax.Array] = None,
                weights=None, **targets) -> LossInputs:
  """LossInputs for `pairs` from per-response token arrays [R, T] (chosen/rejected rows).

  `weights` defaults to `pairs.weights`; they are normalised to mean 1. Keyword `targets`
  (already per pair, by the data's names: "preference_prob", "chosen_score", ...) become
  `LossInputs.targets`.
  """
  c = jnp.asarray(pairs.chosen)
  r = jnp.asarray(pairs.rejected)
  mask = jnp.asarray(space.mask)
  take = lambda a: (None, None) if a is None else (garbage_padded(space, a)[c],
                                                   garbage_padded(space, a)[r])
  ref_c, ref_r = take(ref)
  prev_c, prev_r = take(prev)
  pol_c, pol_r = take(policy)
  return LossInputs(
      policy_chosen_logps=pol_c, policy_rejected_logps=pol_r,
      chosen_mask=mask[c], rejected_mask=mask[r],
      ref_chosen_logps=ref_c, ref_rejected_logps=ref_r,
      prev_chosen_logps=prev_c, prev_rejected_logps=prev_r,
      pair_weights=normalized_weights(pairs.weights if weights is None else weights),
      targets=targets)


def adam(objective: Callable[..., jax.Array], params: jax.Array, *args, steps: int,
         learning_rate: float, final_fraction: float = 0.01):
  """Minimises objective(params, *args) with Adam and an exponentially decaying step.

  Traceable (use it inside jit or a lax.scan over rounds). Returns (params, values [steps]).
  """
  schedule = optax.exponential_decay(learning_rate, steps, final_fraction)
  return _descend(optax.adam(schedule), objective, params, *args, steps=steps)


def gradient_descent(objective: Callable[..., jax.Array], params: jax.Array, *args,
                     steps: int, learning_rate: float):
  """Minimises objective(params, *args) by plain gradient descent, θ ← θ − η∇.

  Where a loss has many minimisers, this one lands where gradient flow from `params` does
  (unlike Adam, which rescales every coordinate's step). Returns (params, values [steps]).
  """
  return _descend(optax.sgd(learning_rate), objective, params, *args, steps=steps)


def _descend(opt: optax.GradientTransformation, objective, params, *args, steps: int):
  def step(carry, _):
    p, state = carry
    value, grad = jax.value_and_grad(objective)(p, *args)
    updates, state = opt.update(grad, state, p)
    return (optax.apply_updates(p, updates), state), value

  (params, _), values = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params, values
