"""PRIME: Process Reinforcement through IMplicit rEwards (Cui et al. 2025, arXiv 2502.01456).

Online RL with an implicit PRM (`algorithms.implicit_prm`) as a dense reward. One step, in
the form of the official PRIME-RL/PRIME code (`training/verl/workers/actor/dp_prime.py`,
`training/verl/trainer/ppo/core_algos.py`), with n responses sampled per prompt:

  1. rollout and rule-verifier labels acc ∈ {0, 1} (the loop; prompts whose mean accuracy
     over their n samples is outside [0.2, 0.8] are filtered out there);
  2. process rewards from the PRM π_φ against its reference, **without β**:
        q_t = log π_φ(y_t|·) − log π_ref(y_t|·)                  `implicit_process_rewards`
  3. online PRM update on the same forward pass (`update=after`): the CE loss of
        σ(β_train Σ_t q_t) against acc, β_train = `prm_beta`      `prm_update_loss`
     This is exactly `implicit_prm` with prm_objective="ce" and beta = prm_beta: both call
     `implicit_prm.response_rewards` and `implicit_prm.outcome_ce_loss`. The rewards used
     by the policy come from the PRM before its optimizer step;
  4. `batch_norm_rewards`: divide q by max over the batch of |reverse cumsum| + 1e-6;
  5. RLOO baseline per reward source (`rloo_token_rewards`) over each group of n samples,
     for the process rewards on every completion token and for the outcome reward on each
     response's last token (`outcome_token_rewards`), then `returns` (γ = 1) of each source,
     summed, and `masked_whiten`ed over the whole batch: `prime_advantages`;
  6. the policy update: PPO-clip (ε = 0.2) with token-mean advantages, 1 epoch with the
     mini-batch = the whole batch (so ratio = 1 at the only step), no KL, no entropy:
     the registered loss `prime` (`ppo_clip_loss`).

Process-reward baseline, paper vs code (`form`, `config.loss.prime_rloo_form`). With m_j
the per-token mean of sample j's rewards over its completion tokens:
  * "paper" (Cui et al. 2025, the RLOO estimator of their §3, leave-one-out):
        A_t^i = r_t^i − (1/(n−1)) Σ_{j≠i} m_j
  * "code" (official `compute_rloo_returns`; the default, for parity with the reported
    numbers):
        A_t^i = r_t^i · n/(n−1) − (1/(n−1)) Σ_j m_j
              = r_t^i − (1/(n−1)) Σ_{j≠i} m_j + (r_t^i − m_i)/(n−1).
  For the outcome reward (one token per response, m_i = r^i) both are the standard
  leave-one-out r^i − mean_{j≠i} r^j.

Where the official repository and its verl recipe (`recipe/prime/prime_core_algos.py`,
`prime_dp_rm.py`) differ, this module follows the official repository (the paper's numbers
come from it) and exposes the verl behaviour as keyword options of `prime_returns`:
  * coefficients: the original does not apply `rm_coef` / `reward_coef` in the RLOO
    (`process_coef` = `outcome_coef` = 1); verl multiplies `dpo_coef`, `gt_coef` (5, 5);
  * β in r: the original uses q without β; verl uses β_train·q (pass
    `implicit_process_rewards(..., beta=β_train)`; batch_norm removes the scale anyway);
  * last token: verl's `token` granularity writes no process reward on the last completion
    token (`drop_last_token_reward=True`); the original keeps all L tokens;
  * `update=before` (score again after the PRM step) is broken in the original
    `dp_prime.py`; the loop should use `after` (this module is agnostic).
Other choices: returns discount per completion token (identical to the official per-position
discount for contiguous completions, and γ = 1 is the default anyway); an empty completion
has m = 0 where the official code would produce NaN; whitening is over the whole batch, not
per group, as in the official code (so the batch layout matters).

Config keys read (all in `config.loss`): `ppo_clip` (the loss); `prm_beta` and
`prime_rloo_form` are validated here and read by the loop for `prm_update_loss` and
`prime_advantages`.

Section references to Cui et al. 2025 are from the notes in shared/research/algorithms.md §8;
equation numbers in the paper were not verified, so none are cited.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from algorithms import implicit_prm
from algorithms.base import Array, LossInputs, Metrics, OnlineRound, Requirements, register
from algorithms.common import batch_mean, masked_float32
from algorithms.validation import check_choice, check_number

RLOO_FORMS = ("code", "paper")
_TINY = jnp.finfo(jnp.float32).tiny

# ---------------------------------------------------------------------------------------
# Rewards.


def implicit_process_rewards(prm_logps: Array, ref_logps: Array, mask: Array,
                             beta: float = 1.0) -> Array:
  """[B, T] q_t = β (log π_φ(y_t|·) − log π_ref(y_t|·)) on completion tokens, 0 elsewhere.

  Cui et al. 2025, the implicit PRM's token reward r_φ(y_t) (§3). The official PRIME code uses
  β = 1 (no β, the default); the verl recipe uses β = β_train.
  """
  return implicit_prm.token_rewards(prm_logps, ref_logps, mask, beta)


def batch_norm_rewards(q: Array, mask: Array) -> Array:
  """[B, T] q / (max_{b,t} |Σ_{s≥t} q_{b,s}| + 1e-6): the official `prime_norm=batch_norm`.

  One scale for the whole batch: the largest absolute reverse cumulative sum (the largest
  process return) becomes ≈ 1.
  """
  q, mask = masked_float32(q, mask)
  reverse_cumsum = jnp.flip(jnp.cumsum(jnp.flip(q, -1), axis=-1), -1)
  return q / (jnp.max(jnp.abs(reverse_cumsum)) + 1e-6)


def last_token_mask(mask: Array) -> Array:
  """[B, T] 1 at the last completion token of each row, 0 elsewhere (all 0 if none)."""
  valid = mask > 0
  length = mask.shape[-1]
  last = length - 1 - jnp.argmax(jnp.flip(valid, -1), axis=-1)  # [B]
  one_hot = jnp.arange(length)[None, :] == last[:, None]
  return (one_hot & jnp.any(valid, axis=-1, keepdims=True)).astype(jnp.float32)


def outcome_token_rewards(labels: Array, mask: Array) -> tuple[Array, Array]:
  """[B] outcome labels -> ([B, T] rewards with the label on each row's last completion
  token, [B, T] that token's mask)."""
  last = last_token_mask(mask)
  return last * labels.astype(jnp.float32)[:, None], last


def rloo_token_rewards(rewards: Array, mask: Array, group_size: int,
                       form: str = "code") -> Array:
  """[B, T] rewards -> [B, T] rewards minus the RLOO baseline of their group.

  Rows come in consecutive groups of n = `group_size` responses to the same prompt. With
  m_j = mean over the valid tokens of row j in the group (0 for a row without any):
    form="code":  r_t^i · n/(n−1) − Σ_j m_j/(n−1)    (official `compute_rloo_returns`)
    form="paper": r_t^i − Σ_{j≠i} m_j/(n−1)          (leave-one-out, Cui et al. 2025 §3)
  on valid tokens, 0 elsewhere. For outcome rewards pass the last-token mask of
  `outcome_token_rewards`: then m_j = r^j and both forms are standard RLOO.
  """
  if form not in RLOO_FORMS:
    raise ValueError(f"rloo_token_rewards: form must be one of {RLOO_FORMS}, got {form!r}")
  rewards, mask = masked_float32(rewards, mask)
  batch, length = rewards.shape
  n = int(group_size)
  if n < 2 or batch % n:
    raise ValueError(
        f"rloo_token_rewards: group_size must be >= 2 and divide the batch ({batch}), got {n}")
  r = rewards.reshape(batch // n, n, length)  # [G, n, T]
  m = mask.reshape(batch // n, n, length)
  means = jnp.sum(r, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)  # [G, n]
  total = jnp.sum(means, axis=-1, keepdims=True)  # [G, 1]
  if form == "code":
    out = r * (n / (n - 1)) - (total / (n - 1))[..., None]
  else:
    out = r - ((total - means) / (n - 1))[..., None]
  return jnp.where(m > 0, out, 0.0).reshape(batch, length)


def returns(token_rewards: Array, mask: Array, gamma: float = 1.0) -> Array:
  """[B, T] G_t = Σ_{s ≥ t} γ^{(s−t)} r_s over completion tokens, 0 off completion.

  The exponent counts completion tokens (positions under mask 0 are skipped), which equals
  the official per-position discount for contiguous completions. γ = 1 is a reverse cumsum;
  other γ scan right to left.
  """
  rewards, mask = masked_float32(token_rewards, mask)
  if gamma == 1.0:
    out = jnp.flip(jnp.cumsum(jnp.flip(rewards, -1), axis=-1), -1)
  else:
    def step(carry, xs):  # carry [B]: the return from the next completion token on
      r_t, m_t = xs
      g = jnp.where(m_t > 0, r_t + gamma * carry, carry)
      return g, g

    _, out = jax.lax.scan(step, jnp.zeros(rewards.shape[:1], jnp.float32),
                          (rewards.T, mask.T), reverse=True)
    out = out.T
  return jnp.where(mask > 0, out, 0.0)


def masked_whiten(x: Array, mask: Array) -> Array:
  """[B, T] (x − mean)/sqrt(var + 1e-8) over the valid tokens of the whole batch, 0 elsewhere.

  var is the unbiased (Bessel-corrected) variance, as verl's `masked_whiten`; with a single
  valid token the variance is taken as 0 instead of raising.
  """
  x, mask = masked_float32(x, mask)
  count = jnp.sum(mask)
  mean = jnp.sum(x) / jnp.maximum(count, 1.0)
  centered = jnp.where(mask > 0, x - mean, 0.0)
  var = jnp.sum(jnp.square(centered)) / jnp.maximum(count - 1.0, 1.0)
  return centered * jax.lax.rsqrt(var + 1e-8)


def prime_returns(q: Array, mask: Array, labels: Array, group_size: int, form: str = "code", *,
                  normalize: bool = True, process_coef: float = 1.0,
                  outcome_coef: float = 1.0, process_gamma: float = 1.0,
                  outcome_gamma: float = 1.0,
                  drop_last_token_reward: bool = False) -> Array:
  """[B, T] PRIME returns: RLOO process return + RLOO outcome return (official defaults).

  q: [B, T] process rewards (`implicit_process_rewards`); labels: [B] verifier outcomes.
  Options (defaults = the official PRIME repository; verl recipe in brackets):
    normalize: `batch_norm_rewards` on q first (prime_norm=batch_norm) [True];
    process_coef, outcome_coef: multiply each RLOO'd source (1, 1) [dpo_coef, gt_coef = 5, 5];
    process_gamma, outcome_gamma: reward_model_gamma, verifier_gamma (1, 1) [1, 1];
    drop_last_token_reward: no process reward on the last completion token [True].
  No gradient flows through the result: advantages are constants for the policy update.
  """
  q = jax.lax.stop_gradient(q)
  labels = jax.lax.stop_gradient(labels)
  q, maskf = masked_float32(q, mask)
  if drop_last_token_reward:
    q = jnp.where(last_token_mask(maskf) > 0, 0.0, q)
  if normalize:
    q = batch_norm_rewards(q, maskf)
  process = rloo_token_rewards(q, maskf, group_size, form)
  outcome, outcome_mask = outcome_token_rewards(labels, maskf)
  outcome = rloo_token_rewards(outcome, outcome_mask, group_size, form)
  return (process_coef * returns(process, maskf, process_gamma)
          + outcome_coef * returns(outcome, maskf, outcome_gamma))


def prime_advantages(q: Array, mask: Array, labels: Array, group_size: int,
                     form: str = "code", **options) -> Array:
  """[B, T] PRIME advantages: `masked_whiten(prime_returns(...))` over the whole batch.

  batch_norm -> RLOO of process and outcome rewards -> returns, summed -> whitened
  (official `compute_rloo_returns`). `options` are `prime_returns`' keyword options.
  """
  return masked_whiten(prime_returns(q, mask, labels, group_size, form, **options), mask)


# ---------------------------------------------------------------------------------------
# Losses.


def prm_update_loss(prm_logps: Array, ref_logps: Array, mask: Array, labels: Array,
                    beta: float, weights: Optional[Array] = None) -> Array:
  """PRIME's online PRM loss (official `compute_ce_dpo_loss_rm`):

      mean_b BCE(σ(β Σ_t mask·(log π_φ − log π_ref)), acc_b),    β = β_train = `prm_beta`.

  The same computation as `implicit_prm` with prm_objective="ce" (shared primitives).
  `weights` [B] are optional row weights (None: all ones).
  """
  rewards = implicit_prm.response_rewards(prm_logps, ref_logps, mask, beta)
  losses = implicit_prm.outcome_ce_loss(rewards, labels)
  if weights is None:
    return jnp.mean(losses)
  weights = weights.astype(jnp.float32)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def ppo_clip_loss(logps: Array, old_logps: Array, advantages: Array, mask: Array,
                  clip: float, weights: Optional[Array] = None,
                  token_count: Optional[Array] = None) -> tuple[Array, Metrics]:
  """PPO-clip policy loss, token mean over every valid token of the batch (Schulman et al.
  2017, Eq. 7; verl `compute_policy_loss` as used by PRIME):

      L = Σ_{b,t} w_b m_bt max(−A_bt ρ_bt, −A_bt clip(ρ_bt, 1−ε, 1+ε)) / Σ_{b,t} w_b m_bt,
      ρ = exp(log π − log π_old).

  old_logps and advantages are treated as constants. Metrics (gradients stopped):
  `clipfrac`, the fraction of tokens where the clipped term is the larger one, and
  `approx_kl`, the token mean of log π_old − log π (verl's `ppo_kl`).
  """
  logps, maskf = masked_float32(logps, mask)
  old, _ = masked_float32(jax.lax.stop_gradient(old_logps), maskf)
  adv, _ = masked_float32(jax.lax.stop_gradient(advantages), maskf)
  log_ratio = logps - old  # 0 off completion, so exp is 1 there
  ratio = jnp.exp(log_ratio)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
  per_token = jnp.maximum(unclipped, clipped)
  token_weights = maskf if weights is None else maskf * weights.astype(jnp.float32)[:, None]
  # token_count: the whole batch's share under gradient accumulation (LossInputs docs).
  denominator = jnp.maximum(jnp.sum(token_weights) if token_count is None else token_count,
                            _TINY)
  token_mean = lambda x: jnp.sum(jnp.where(token_weights > 0, x, 0.0) * token_weights) / denominator
  sg = jax.lax.stop_gradient
  metrics = {
      "clipfrac": token_mean((sg(clipped) > sg(unclipped)).astype(jnp.float32)),
      "approx_kl": token_mean(-sg(log_ratio)),
  }
  return token_mean(per_token), metrics


def _validate_prime(cfg: Mapping) -> None:
  check_number(cfg, "ppo_clip", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
  check_number(cfg, "prm_beta", low=0.0, low_inclusive=False)
  check_choice(cfg, "prime_rloo_form", RLOO_FORMS)


# ε = 0.2 (PPO's clip) and the PRM's β = 0.05, the official recipe; the RLOO baseline of the
# official code (research notes §8).
@register("prime", requirements=Requirements(reference=False, previous_policy=True,
                                             online=OnlineRound("groups", prm=True),
                                             targets=("chosen_advantages", "chosen_label")),
          defaults={"ppo_clip": 0.2, "prm_beta": 0.05, "prime_rloo_form": "code"},
          validate=_validate_prime)
def prime(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """PRIME's policy update (Cui et al. 2025, §3): `ppo_clip_loss` with ε = ppo_clip.

  Responses sit in the chosen_* slots (rejected_* are None and ignored); old log-probs are
  `prev_chosen_logps` and the "chosen_advantages" target [B, T] comes from
  `prime_advantages`, computed before
  the step from the PRM's forward pass on the same responses. The PRM itself is trained by
  `prm_update_loss` (= `implicit_prm`, prm_objective="ce", beta=prm_beta). Filler pairs drop
  out through `pair_weights`. Also logs `logps/mean` and `advantages/mean`.
  """
  if inputs.prev_chosen_logps is None:
    raise ValueError("prime needs the old policy's log-probs (prev_chosen_logps) but it is "
                     "None; Requirements(previous_policy=True) was not honoured")
  advantages = inputs.target("chosen_advantages", "prime")  # [B, T]
  loss, metrics = ppo_clip_loss(inputs.policy_chosen_logps, inputs.prev_chosen_logps,
                                advantages, inputs.chosen_mask, cfg.ppo_clip,
                                inputs.pair_weights, inputs.chosen_token_count)
  logps, maskf = masked_float32(jax.lax.stop_gradient(inputs.policy_chosen_logps),
                                inputs.chosen_mask)
  adv, _ = masked_float32(jax.lax.stop_gradient(advantages), maskf)
  # Token mean of the advantages as a ratio of two pair-weighted batch means.
  tokens = batch_mean(jnp.sum(maskf, axis=-1), inputs)
  metrics["logps/mean"] = batch_mean(jnp.sum(logps, axis=-1), inputs)
  metrics["advantages/mean"] = (batch_mean(jnp.sum(adv, axis=-1), inputs)
                                / jnp.maximum(tokens, _TINY))
  return loss, metrics
