"""Implicit process reward models (Yuan et al. 2024, "Free Process Rewards without Process
Labels", arXiv 2412.01981).

Parameterise an outcome reward as the log-likelihood ratio of a policy-shaped model πθ
against a fixed reference π_ref (paper §3, its proposition that q_t below is then the
exact Q-value; equation numbers not verified, so none are cited):

    r_θ(y) = β log πθ(y|x)/π_ref(y|x) = Σ_t β log πθ(y_t|x,y_<t)/π_ref(y_t|x,y_<t).

Then the partial sums are Q-values, so any outcome loss on r_θ trains a process reward model
"for free", without step labels:

    q_t = Σ_{i≤t} β log πθ(y_i|·)/π_ref(y_i|·)            (Q-value after t tokens)
    r_k = q_{t_k} − q_{t_{k−1}}                            (reward of step k, tokens (t_{k−1}, t_k])

The module has three layers:

  * token and step quantities for scoring (`token_rewards`, `step_rewards`, `aggregate`,
    `best_of_n`, `score_responses`), written with cumsum + sort + gather so that they jit
    with static shapes and no Python loop over data;
  * per-response primitives of the two training objectives (`response_rewards`,
    `outcome_ce_loss`); PRIME's online PRM update (`algorithms.prime.prm_update_loss`) uses
    the same primitives;
  * the registered loss `implicit_prm`, `config.loss.prm_objective`:
      "ce":  BCE of σ(βℓ) against the outcome label l ∈ {0, 1}, on unpaired responses
             (official `train/openrlhf/trainer/ce_trainer.py::loss_fn`);
      "dpo": −log σ(β(ℓ_w − ℓ_l)) with chosen = a correct and rejected = a wrong response to
             the same prompt (official `train/openrlhf/models/loss.py::DPOLoss`).

Config keys read (all in `config.loss`): `beta` (0.05 in the official `run_{ce,dpo}.sh`),
`prm_objective`.

Scoring conventions (official `eval/prm_eval_utils.py`): "accumulative" scores a step by q at
its end, "single" by the step reward r_k; a response's score is the `min` or `sum` over its
steps, and best-of-N picks the highest score. The official code scales token rewards by
coef = 0.001 at inference instead of β; a positive scale does not change min/sum rankings.
Scoring must use the training reference (ref-free scoring is a different, weaker variant).

All arithmetic is float32, whatever the dtype of the incoming log-probs.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, Requirements, register
from algorithms.common import (batch_mean, log_ratios, masked_float32, policy_sequence_logps,
                               preference_metrics, sequence_logps)
from algorithms.dpo import sigmoid_loss
from algorithms.validation import check_choice, check_number

PRM_OBJECTIVES = ("ce", "dpo")

# ---------------------------------------------------------------------------------------
# Token and step quantities (scoring).


def token_rewards(policy_logps: Array, ref_logps: Array, mask: Array, beta: float) -> Array:
  """[B, T] token rewards β·(log πθ(y_t|·) − log π_ref(y_t|·)) on completion tokens, 0 elsewhere.

  Yuan et al. 2024 §3 read per token: the summands of r_θ(y). Whatever sits under mask 0
  (inf, NaN) is replaced before the subtraction, so it reaches neither value nor gradient.
  """
  policy, mask = masked_float32(policy_logps, mask)
  ref, _ = masked_float32(ref_logps, mask)
  return beta * (policy - ref)


def step_rewards(token_rewards: Array, step_ends: Array, mask: Array,
                 max_steps: Optional[int] = None) -> tuple[Array, Array, Array]:
  """Q-values at step ends and per-step rewards, with a static number of step slots.

  Args:
    token_rewards: [B, T] (e.g. from `token_rewards`); only completion tokens count.
    step_ends: [B, T] 1 at the last token of each step (inclusive), 0 elsewhere. Markers
      under mask 0 are ignored. Mark the response's last token too: tokens after the last
      marker belong to no step.
    mask: [B, T] completion mask.
    max_steps: S, the number of step slots (static). Defaults to T, which always suffices;
      with a smaller S, steps past the S-th are dropped.

  Returns:
    q_at_step_ends [B, S]: q_{t_k} = Σ_{i ≤ t_k} r_i, the "accumulative" step scores.
    step_rewards [B, S]: r_k = q_{t_k} − q_{t_{k−1}} (q_{t_0} = 0), the "single" scores.
    step_valid [B, S]: True for the slots that hold a step; both values are 0 elsewhere.

  Steps are gathered by a stable argsort that moves the step-end positions, in order, to
  the front of each row: no Python loop over data, so it jits and vmaps.
  """
  rewards, mask = masked_float32(token_rewards, mask)
  batch, length = rewards.shape
  slots = length if max_steps is None else int(max_steps)
  if slots < 1:
    raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
  q = jnp.cumsum(rewards, axis=-1)  # [B, T] Q-value after each token
  is_end = (step_ends > 0) & (mask > 0)  # [B, T]; `>` is False on NaN garbage too
  positions = jnp.arange(length)
  # Step ends sort first, by position; every other position after them.
  key = jnp.where(is_end, positions, positions + length)
  gathered = min(slots, length)
  order = jnp.argsort(key, axis=-1)[:, :gathered]  # [B, S'] positions of the step ends
  n_steps = jnp.sum(is_end, axis=-1)  # [B]
  valid = jnp.arange(gathered)[None, :] < n_steps[:, None]  # [B, S']
  q_ends = jnp.where(valid, jnp.take_along_axis(q, order, axis=-1), 0.0)
  previous = jnp.concatenate([jnp.zeros((batch, 1), q.dtype), q_ends[:, :-1]], axis=-1)
  singles = jnp.where(valid, q_ends - previous, 0.0)
  if slots > gathered:  # more slots than positions: pad with invalid slots
    pad = ((0, 0), (0, slots - gathered))
    q_ends, singles, valid = jnp.pad(q_ends, pad), jnp.pad(singles, pad), jnp.pad(valid, pad)
  return q_ends, singles, valid


def aggregate(step_values: Array, step_valid: Array, how: str = "min") -> Array:
  """[B, S] step values -> [B] response scores, ignoring invalid step slots.

  how="min": the weakest step (the official code pads steps with 1e3 for this);
  how="sum": the total. A response without any valid step scores 0.
  """
  step_values = step_values.astype(jnp.float32)
  if how == "min":
    # A constant +inf (not computed from the values) fills invalid slots, so no gradient
    # flows to them.
    lowest = jnp.min(jnp.where(step_valid, step_values, jnp.inf), axis=-1)
    return jnp.where(jnp.any(step_valid, axis=-1), lowest, 0.0)
  if how == "sum":
    return jnp.sum(jnp.where(step_valid, step_values, 0.0), axis=-1)
  raise ValueError(f"aggregate: how must be 'min' or 'sum', got {how!r}")


def best_of_n(scores: Array) -> Array:
  """[N, K] scores of K candidates for each of N problems -> [N] index of the best candidate.

  Ties go to the first candidate (argmax). NaN scores count as the best, as in argmax: keep
  them out of the scores.
  """
  return jnp.argmax(scores, axis=-1)


def score_responses(policy_logps: Array, ref_logps: Array, mask: Array, step_ends: Array,
                    beta: float = 1.0, mode: str = "accumulative", how: str = "min",
                    max_steps: Optional[int] = None) -> Array:
  """[B] response scores for best-of-N: token rewards -> steps -> `aggregate`.

  mode="accumulative" scores steps by q at their ends, "single" by the step rewards; the
  official BoN evaluation reports all four mode × how combinations (ImplicitPRM issue #9).
  """
  if mode not in ("accumulative", "single"):
    raise ValueError(f"score_responses: mode must be 'accumulative' or 'single', got {mode!r}")
  rewards = token_rewards(policy_logps, ref_logps, mask, beta)
  q_ends, singles, valid = step_rewards(rewards, step_ends, mask, max_steps)
  return aggregate(q_ends if mode == "accumulative" else singles, valid, how)


# ---------------------------------------------------------------------------------------
# Per-response primitives of the training objectives.


def response_rewards(policy_logps: Array, ref_logps: Array, mask: Array, beta: float) -> Array:
  """[B] outcome rewards r_θ(y) = β Σ_t mask·(log πθ − log π_ref): the last q of each row."""
  return sequence_logps(token_rewards(policy_logps, ref_logps, mask, beta), mask)


def outcome_ce_loss(rewards: Array, labels: Array) -> Array:
  """Per-response cross-entropy of σ(r) against the outcome label l (Yuan et al. 2024, the CE
  objective; official `ce_trainer.py::loss_fn`):

      L = −[ l log σ(r) + (1 − l) log σ(−r) ],    r = β ℓ.

  Soft labels in [0, 1] are allowed. Uses log σ, not PyTorch BCELoss's log clamped at −100,
  so it agrees with the official code for |r| ≲ 15 and stays finite beyond.
  """
  labels = labels.astype(jnp.float32)
  return -(labels * jax.nn.log_sigmoid(rewards) + (1.0 - labels) * jax.nn.log_sigmoid(-rewards))


# ---------------------------------------------------------------------------------------
# Registered loss.


def _validate_implicit_prm(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)
  check_choice(cfg, "prm_objective", PRM_OBJECTIVES)


def _labelled_responses(inputs: LossInputs) -> list[tuple[Array, Array, Array, Array]]:
  """(policy, ref, mask, labels) of each filled response slot: chosen, and rejected when
  its log-probs and labels are both present."""
  chosen_labels = inputs.target("chosen_label", "implicit_prm")  # [B] in {0, 1}
  rejected_labels = inputs.targets.get("rejected_label")
  if inputs.ref_chosen_logps is None:
    raise ValueError("implicit_prm needs the reference log-probs but ref_chosen_logps is None")
  slots = [(inputs.policy_chosen_logps, inputs.ref_chosen_logps, inputs.chosen_mask,
            chosen_labels)]
  if inputs.policy_rejected_logps is not None and rejected_labels is not None:
    if inputs.ref_rejected_logps is None or inputs.rejected_mask is None:
      raise ValueError("implicit_prm: rejected responses with labels need ref_rejected_logps "
                       "and rejected_mask")
    slots.append((inputs.policy_rejected_logps, inputs.ref_rejected_logps,
                  inputs.rejected_mask, rejected_labels))
  return slots


def _safe_ratio(numerator: Array, denominator: Array) -> Array:
  return numerator / jnp.maximum(denominator, jnp.finfo(jnp.float32).tiny)


def _ce_objective(inputs: LossInputs, beta: float) -> tuple[Array, Metrics]:
  """Mean CE over every labelled response (chosen slot, plus the rejected slot if filled).

  Each pair contributes its responses with its pair weight, so the loss is the
  pair-weighted mean over all responses; written as per-pair sums over the slots divided
  by the number of slots, then `batch_mean`.
  """
  slots = _labelled_responses(inputs)
  sg = jax.lax.stop_gradient
  loss_sum = hits = reward_sum = logp_sum = 0.0
  correct_sum = correct_count = wrong_sum = wrong_count = 0.0
  for policy, ref, mask, labels in slots:
    rewards = response_rewards(policy, ref, mask, beta)  # [B]
    labels = labels.astype(jnp.float32)
    loss_sum = loss_sum + outcome_ce_loss(rewards, labels)
    r = sg(rewards)
    # σ(r) > 0.5 ⇔ r > 0: the PRM predicts "correct".
    hits = hits + ((r > 0.0) == (labels > 0.5)).astype(jnp.float32)
    reward_sum = reward_sum + r
    logp_sum = logp_sum + sg(sequence_logps(policy, mask))
    correct_sum, correct_count = correct_sum + labels * r, correct_count + labels
    wrong_sum, wrong_count = wrong_sum + (1.0 - labels) * r, wrong_count + (1.0 - labels)
  n = float(len(slots))
  mean = lambda x: batch_mean(x, inputs)
  loss = mean(loss_sum / n)
  metrics = {
      "prm/accuracy": mean(hits / n),
      "rewards/mean": mean(reward_sum / n),
      "rewards/correct": _safe_ratio(mean(correct_sum), mean(correct_count)),
      "rewards/wrong": _safe_ratio(mean(wrong_sum), mean(wrong_count)),
      "logps/mean": mean(logp_sum / n),
  }
  return loss, metrics


def _dpo_objective(inputs: LossInputs, beta: float) -> tuple[Array, Metrics]:
  if inputs.policy_rejected_logps is None or inputs.rejected_mask is None:
    raise ValueError(
        "implicit_prm with prm_objective='dpo' needs (correct, wrong) pairs: the rejected_* "
        "fields of LossInputs are None")
  chosen, rejected = log_ratios(inputs)
  loss = batch_mean(sigmoid_loss(chosen - rejected, beta), inputs)
  metrics = preference_metrics(inputs, beta * chosen, beta * rejected,
                               *policy_sequence_logps(inputs))
  return loss, metrics


# The CE objective; β = 0.1 here, the paper trains with 0.05 (configs/implicit_prm.py).
@register("implicit_prm",
          requirements=Requirements(reference=True, targets=("chosen_label", "rejected_label"),
                                    unpaired="all"),
          defaults={"beta": 0.1, "prm_objective": "ce"}, validate=_validate_implicit_prm)
def implicit_prm(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """Implicit PRM training loss (Yuan et al. 2024 §3: the CE and DPO instantiations).

  prm_objective="ce": responses in the chosen_* slots with the "chosen_label" target [B] ∈
    {0, 1}; when the rejected_* slots and the "rejected_label" target are filled they are more unpaired
    responses. Loss = pair-weighted mean over all responses of `outcome_ce_loss(βℓ, l)`.
    Metrics: `prm/accuracy` (σ(βℓ) > 0.5 against the labels), `rewards/mean`,
    `rewards/correct`, `rewards/wrong` (mean βℓ over label-1 / label-0 responses),
    `logps/mean`.
  prm_objective="dpo": −log σ(β(ℓ_w − ℓ_l)) with chosen = correct, rejected = wrong;
    labels are not read. Metrics: TRL's preference metrics.

  ℓ is the summed log-ratio over completion tokens.
  """
  if cfg.prm_objective == "ce":
    return _ce_objective(inputs, cfg.beta)
  if cfg.prm_objective == "dpo":
    return _dpo_objective(inputs, cfg.beta)
  raise ValueError(
      f"config.loss.prm_objective must be one of {PRM_OBJECTIVES}, got {cfg.prm_objective!r}")
