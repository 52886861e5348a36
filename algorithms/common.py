"""Reductions every loss shares: per-token log-probs to per-pair numbers, batch means, metrics.

One home for each: a loss module imports these and adds only what its paper defines. All
arithmetic is float32, whatever the dtype of the incoming log-probs, and whatever sits under
mask 0 (a masked log-softmax's −inf, a filler row's NaN) never reaches a value or gradient:
masked positions are zeroed with `where`, not multiplied by the mask.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics

# ---------------------------------------------------------------------------------------
# Per-token -> per-response.


def masked_float32(values: Array, mask: Array) -> tuple[Array, Array]:
  """(values, mask) as float32 with values zeroed under mask 0."""
  mask = mask.astype(jnp.float32)
  return jnp.where(mask > 0, values.astype(jnp.float32), 0.0), mask


def sequence_logps(logps: Array, mask: Array) -> Array:
  """[B, T] per-token log-probs -> [B] float32 sums over completion tokens."""
  return jnp.sum(masked_float32(logps, mask)[0], axis=-1)


def completion_lengths(mask: Array) -> Array:
  """[B] number of completion tokens, clamped at 1 so that means never divide by zero."""
  return jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1), 1.0)


def mean_logps(logps: Array, mask: Array) -> Array:
  """[B] per-token average log-prob over completion tokens."""
  return sequence_logps(logps, mask) / completion_lengths(mask)


def policy_sequence_logps(inputs: LossInputs, average: bool = False) -> tuple[Array, Array]:
  """[B] policy log-probs of chosen and rejected, summed (or averaged) over completion tokens."""
  reduce = mean_logps if average else sequence_logps
  return (reduce(inputs.policy_chosen_logps, inputs.chosen_mask),
          reduce(inputs.policy_rejected_logps, inputs.rejected_mask))


_FROZEN = {"ref": ("the reference", "reference"),
           "prev": ("the previous iterate's", "previous_policy")}


def frozen_sequence_logps(inputs: LossInputs, model: str = "ref") -> tuple[Array, Array]:
  """[B] summed log-probs of y_w, y_l under a frozen model: "ref" (the reference,
  `ref_*_logps`) or "prev" (the previous iterate π_t, `prev_*_logps`)."""
  chosen = getattr(inputs, f"{model}_chosen_logps")
  rejected = getattr(inputs, f"{model}_rejected_logps")
  if chosen is None or rejected is None:
    what, flag = _FROZEN[model]
    raise ValueError(
        f"this loss needs {what} log-probs ({model}_chosen_logps, {model}_rejected_logps) but "
        f"LossInputs has None; the algorithm's Requirements({flag}=True) was not honoured")
  return (sequence_logps(chosen, inputs.chosen_mask),
          sequence_logps(rejected, inputs.rejected_mask))


def log_ratios(inputs: LossInputs, model: str = "ref") -> tuple[Array, Array]:
  """[B] ℓ_w, ℓ_l = log πθ(y) − log π_frozen(y), summed over completion tokens; the frozen
  model is the reference ("ref") or the previous iterate ("prev")."""
  frozen_chosen, frozen_rejected = frozen_sequence_logps(inputs, model)
  chosen, rejected = policy_sequence_logps(inputs)
  return chosen - frozen_chosen, rejected - frozen_rejected


def per_token_log_ratios(inputs: LossInputs) -> tuple[Array, Array]:
  """[B] ℓ_w/n_w, ℓ_l/n_l: log-ratios divided by the completion lengths (clamped ≥ 1, so an
  empty completion gives 0 rather than NaN), as TRL's IPO."""
  chosen, rejected = log_ratios(inputs)
  return (chosen / completion_lengths(inputs.chosen_mask),
          rejected / completion_lengths(inputs.rejected_mask))


# ---------------------------------------------------------------------------------------
# Batch reductions and metrics.


def weighted_token_count(mask: Array, pair_weights: Optional[Array] = None) -> Array:
  """[] Σ_b w_b Σ_t mask_bt: completion tokens of a batch, each pair counted with its weight."""
  tokens = jnp.sum(mask.astype(jnp.float32), axis=-1)
  if pair_weights is not None:
    tokens = tokens * pair_weights.astype(jnp.float32)
  return jnp.sum(tokens)


def chosen_token_count(inputs: LossInputs) -> Array:
  """[] pair-weighted count of chosen completion tokens a token mean divides by (see
  `LossInputs.chosen_token_count`), at least float32 tiny so it never divides by zero."""
  count = (weighted_token_count(inputs.chosen_mask, inputs.pair_weights)
           if inputs.chosen_token_count is None
           else inputs.chosen_token_count.astype(jnp.float32))
  return jnp.maximum(count, jnp.finfo(jnp.float32).tiny)


def batch_mean(values: Array, inputs: LossInputs) -> Array:
  """Mean of per-pair values [B] over the batch, weighted by `inputs.pair_weights`."""
  if inputs.pair_weights is None:
    return jnp.mean(values)
  w = inputs.pair_weights.astype(values.dtype)
  return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def preference_metrics(inputs: LossInputs, chosen_rewards: Array, rejected_rewards: Array,
                       chosen_logps: Array, rejected_logps: Array) -> Metrics:
  """TRL's metric names, so curves are comparable across codebases.

  All arguments are per pair ([B]): the algorithm's implicit rewards and the policy's
  sequence log-probs. Gradients are stopped. `rewards/accuracies` counts a tie as half a
  win: at step 0 the policy equals the reference, every reward is 0, and the metric reads
  0.5 (chance), where TRL's strict `>` reads 0.0. Ties are measure-zero afterwards, so
  curves match TRL's from the first update on.
  """
  sg = jax.lax.stop_gradient
  chosen_rewards, rejected_rewards = sg(chosen_rewards), sg(rejected_rewards)
  mean = lambda x: batch_mean(x, inputs)
  return {
      "rewards/chosen": mean(chosen_rewards),
      "rewards/rejected": mean(rejected_rewards),
      "rewards/accuracies": mean(
          jnp.where(chosen_rewards == rejected_rewards, 0.5,
                    (chosen_rewards > rejected_rewards).astype(jnp.float32))),
      "rewards/margins": mean(chosen_rewards - rejected_rewards),
      "logps/chosen": mean(sg(chosen_logps)),
      "logps/rejected": mean(sg(rejected_logps)),
  }


def chosen_nll(inputs: LossInputs) -> Array:
  """Token-weighted cross-entropy of the chosen completions over the batch.

  −Σ_b w_b Σ_t m_bt logπ_bt / Σ_b w_b n_b, i.e. HF `CrossEntropyLoss` over every chosen
  completion token of the batch (what the SimPO trainer's `sft_weight` term uses), with pair
  weights w. Under gradient accumulation the denominator is the whole batch's share
  (`chosen_token_count`), so micro-batch gradients average to the whole batch's.
  """
  mask = inputs.chosen_mask
  logps = jnp.where(mask > 0, inputs.policy_chosen_logps.astype(jnp.float32), 0.0)
  nll = -jnp.sum(logps, axis=-1)  # [B]
  if inputs.pair_weights is not None:
    nll = nll * inputs.pair_weights.astype(jnp.float32)
  # No completion token at all: the sum is 0 too, so the term is 0 rather than NaN.
  return jnp.sum(nll) / chosen_token_count(inputs)


def add_chosen_nll(loss: Array, metrics: Metrics, inputs: LossInputs, weight: float):
  """loss + weight · `chosen_nll` (metric `sft_loss`) when weight > 0, else loss unchanged.

  The NLL term of RPO / iterative reasoning preference optimisation (Pang et al. 2024,
  "Iterative Reasoning Preference Optimization", arXiv 2404.19733, Eq. 1; TRL's `rpo_alpha`):
  on verifiable tasks a pairwise loss alone lowers the likelihood of the chosen (correct)
  answers along with the rejected ones, and the term keeps it up.
  """
  if not weight:
    return loss, metrics
  sft = chosen_nll(inputs)
  return loss + weight * sft, dict(metrics, sft_loss=jax.lax.stop_gradient(sft))
