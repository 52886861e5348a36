"""T-REG: Preference Optimization with Token-Level Reward Regularization (Zhou, Zhang, Zhao,
Meng, ACL 2025, arXiv 2412.02685).

DPO learns an implicit token reward β log πθ(y_t|·)/π_ref(y_t|·) from sequence-level labels
only. T-REG adds a weak token-level signal r̂_t ∈ [−0.5, 0.5], self-generated offline by
contrastive ("opposite") prompting of an evaluator model π_eval on the SAME response tokens:

    r̂_t = σ( log π_eval(y_t | x_better, y_<t) − log π_eval(y_t | x_worse, y_<t) ) − 0.5,

where x_better asks for a helpful/correct/coherent/concise revision and x_worse for the
opposite (see `contrastive_token_rewards`). Maximising the agreement Σ_t r_token(y_t)·r̂_t of the
implicit token rewards with r̂ reduces, after dropping the θ-free π_ref part, to a weighted
language-modelling term per response

    L_REG(y) = − Σ_t β · r̂_t · log πθ(y_t | x, y_<t)      (summed over completion tokens),

which raises tokens with r̂ > 0 and lowers tokens with r̂ < 0, in y_w and y_l alike. Each pair's
regulariser is scaled by the weight the base loss's own gradient carries,
w = σ(r(y_l) − r(y_w)) = σ(−z) with z the base loss's logit (DPO: z = β h), held constant:

    L = L_base + α · w · (L_REG(y_w) + L_REG(y_l)).

`t_reg_base` picks the base: "dpo" (DPO-REG, −log σ(β h), h on summed log-ratios against the
reference) or "simpo" (SimPO-REG: SimPO's reference-free loss from `algorithms.simpo` with its
logit z = β(Δavg − γ/β)). With the SimPO base the reference fields of `LossInputs` are ignored
(the registry still declares Requirements(reference=True), the DPO default, so the loop
computes a reference that SimPO-REG does not use). L_REG keeps the same β·Σ_t form for both
bases.

Provenance — the official code wzhouad/T-REG is not in any store we can search, and the
paper body could not be read; what is here rests on a detailed third-party paper note
(checked for this module: papernotes ACL 2025 "T-REG", via the code index) and
algorithms.md §6 [secondary]. Verified against that note: r̂'s formula and range, r̂ computed
with a single model π_eval = the reference/SFT model ("using only the reference model via
two forward passes"), L_REG = −Σ_t β r̂_t log π (a SUM over tokens), w = σ(r_DPO(y_l) −
r_DPO(y_w)) "extracted from the DPO gradient", the objective above, α ∈ {0.1, 0.25, 0.5}, and
that SimPO-REG exists. Not verified (decisions taken here): that w is stop-gradient (the
note's "a weight extracted from the gradient" suggests it; a w that carried gradient would
add a term the paper does not describe); whether SimPO-REG length-normalises L_REG like
SimPO's reward (β/|y|) — here it does not; the paper's equation numbers.

Config keys read (all in `config.loss`): `beta`, `t_reg_alpha` (α ≥ 0), `t_reg_base`
("dpo" | "simpo"), and `simpo_gamma_beta_ratio` for the SimPO base. `label_smoothing` and
`sft_weight` must be 0.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, Requirements, register
from algorithms.common import (batch_mean, log_ratios, masked_float32, policy_sequence_logps,
                               preference_metrics)
from algorithms.dpo import sigmoid_loss
from algorithms.validation import check_choice, check_number
from algorithms.simpo import simpo_loss

BASES = ("dpo", "simpo")


def contrastive_token_rewards(better_logps: Array, worse_logps: Array, mask: Array) -> Array:
  """[B, T] token rewards r̂_t = σ(better_t − worse_t) − 0.5 on mask, 0 elsewhere.

  `better_logps`, `worse_logps` [B, T]: log π_eval of the same response tokens after the
  "better" and the "worse" revision prompts (aligned token for token: tokenise the response
  once and splice it after each prompt). Zhou et al. 2025, §"self-generated token rewards".
  Float32; inf/NaN under mask 0 never reaches the result.
  """
  on = mask > 0
  diff = jnp.where(on, better_logps.astype(jnp.float32) - worse_logps.astype(jnp.float32), 0.0)
  return jnp.where(on, jax.nn.sigmoid(diff) - 0.5, 0.0)


def token_reward_regularizer(policy_logps: Array, token_rewards: Array, mask: Array,
                             beta: float) -> Array:
  """[B] L_REG(y) = −Σ_t β · r̂_t · log πθ(y_t | x, y_<t) over completion tokens.

  The token rewards are constants (targets from a frozen evaluator), so no gradient flows
  into them.
  """
  logps, mask = masked_float32(policy_logps, mask)  # [B, T]
  rewards = jax.lax.stop_gradient(
      jnp.where(mask > 0, token_rewards.astype(jnp.float32), 0.0))  # [B, T]
  return -beta * jnp.sum(rewards * logps, axis=-1)


def _base_loss_and_logit(inputs: LossInputs, cfg: Mapping):
  """Per-pair base loss [B], its logit z [B] and the (chosen, rejected) implicit rewards."""
  beta = cfg.beta
  if cfg.t_reg_base == "dpo":
    chosen, rejected = log_ratios(inputs)  # raises when the reference is missing
    logit = beta * (chosen - rejected)
    return sigmoid_loss(chosen - rejected, beta), logit, beta * chosen, beta * rejected
  if cfg.t_reg_base == "simpo":
    chosen, rejected = policy_sequence_logps(inputs, average=True)
    ratio = cfg.simpo_gamma_beta_ratio
    logit = beta * ((chosen - rejected) - ratio)  # the logit inside simpo_loss
    return (simpo_loss(chosen, rejected, beta, ratio), logit, beta * chosen, beta * rejected)
  raise ValueError(f"config.loss.t_reg_base must be one of {BASES}, got {cfg.t_reg_base!r}")


def _validate_t_reg(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)
  check_number(cfg, "t_reg_alpha", low=0.0)
  check_choice(cfg, "t_reg_base", BASES)
  check_number(cfg, "simpo_gamma_beta_ratio", low=0.0)  # read with the SimPO base


# α = 0.25 [unverified: the paper's value per base model; configs/reproduce/t_reg.py].
@register("t_reg",
          requirements=Requirements(reference=True,
                                    targets=("chosen_token_rewards", "rejected_token_rewards")),
          defaults={"beta": 0.1, "t_reg_alpha": 0.25, "t_reg_base": "dpo",
                    "simpo_gamma_beta_ratio": 0.5},
          validate=_validate_t_reg)
def t_reg(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """T-REG (Zhou et al. 2025): mean_b [L_base + α · sg(σ(−z)) · (L_REG(y_w) + L_REG(y_l))].

  Token rewards come from the "chosen_token_rewards" / "rejected_token_rewards" targets [B, T]
  (e.g. `contrastive_token_rewards` of the evaluator's log-probs). Metrics: the base loss's
  TRL metrics (DPO base: rewards β·ℓ and summed `logps/*`; SimPO base: rewards β·mean log π
  and mean `logps/*`, as `algorithms.simpo`), plus `t_reg/weight` (mean w),
  `t_reg/reg_chosen`, `t_reg/reg_rejected` (mean L_REG) and `t_reg/base_loss`.
  """
  chosen_rewards = inputs.target("chosen_token_rewards", "t_reg")  # [B, T]
  rejected_rewards = inputs.target("rejected_token_rewards", "t_reg")
  beta = cfg.beta
  base, logit, chosen_reward, rejected_reward = _base_loss_and_logit(inputs, cfg)  # [B] each
  # The weight of the base loss's gradient, σ(r(y_l) − r(y_w)); a constant, not a target.
  weight = jax.lax.stop_gradient(jax.nn.sigmoid(-logit))
  reg_chosen = token_reward_regularizer(inputs.policy_chosen_logps, chosen_rewards,
                                        inputs.chosen_mask, beta)
  reg_rejected = token_reward_regularizer(inputs.policy_rejected_logps, rejected_rewards,
                                          inputs.rejected_mask, beta)
  per_pair = base + cfg.t_reg_alpha * weight * (reg_chosen + reg_rejected)
  loss = batch_mean(per_pair, inputs)
  average = cfg.t_reg_base == "simpo"
  metrics = preference_metrics(inputs, chosen_reward, rejected_reward,
                               *policy_sequence_logps(inputs, average=average))
  sg = jax.lax.stop_gradient
  metrics["t_reg/weight"] = batch_mean(weight, inputs)
  metrics["t_reg/reg_chosen"] = batch_mean(sg(reg_chosen), inputs)
  metrics["t_reg/reg_rejected"] = batch_mean(sg(reg_rejected), inputs)
  metrics["t_reg/base_loss"] = batch_mean(sg(base), inputs)
  return loss, metrics
