"""LD-DPO: Length Desensitization in Direct Preference Optimization (Liu et al. 2024,
arXiv 2409.06411).

DPO's summed log-likelihood grows with the completion length, so its implicit reward is
correlated with length and DPO drifts towards verbose answers. LD-DPO re-models the likelihood
of each pair's LONGER response: with the public length l_p = min(|y_w|, |y_l|),

    log π̂(y|x) = Σ_{i ≤ l_p} log p(y_i|·) + α Σ_{i > l_p} log p(y_i|·),        α ∈ [0, 1],

i.e. the tokens beyond the shorter response's length count with weight α (the paper splits
each excess token's probability into p^α, "human-like", and p^(1−α), "verbosity", and drops
the latter). The shorter response has no tail and is unchanged. The loss is DPO on π̂:

    L = −log σ(β [(log π̂θ(y_w) − log π_ref(y_w)) − (log π̂θ(y_l) − log π_ref(y_l))]).

α = 1 is DPO exactly; α = 0 truncates the longer response to the shorter one's length.

Token index i is COMPLETION-relative: i = cumsum(mask), so the prompt, left padding, or any
hole of mask zeros inside the row never shifts the split. (TRL ≤ 0.28's
`concatenated_forward` used absolute row positions, which drops completion tokens sitting at
positions ≥ |y| and shifts the split by the prompt length; TRL ≥ 0.29 and LlamaFactory count
from the completion start, as here.)

Whether the reference log-prob is re-modelled too is not settled by the paper:
`ld_apply_to_ref=True` weights policy AND reference (TRL HEAD, `compute_ref_log_probs` and
`_compute_loss` share the masks); False weights the policy only (TRL ≤ 0.28 and LlamaFactory,
which skip LD for the reference model). The two give materially different losses
(algorithms.md §2.4: 0.6588 vs 0.7007 at α = 0.5).

Config keys read (all in `config.loss`): `beta`, `ld_alpha` (α ∈ [0, 1]), `ld_apply_to_ref`.
`label_smoothing` and `sft_weight` must be 0 (not combined with LD here).

Provenance: the formula is from the paper via a secondary summary and matches TRL HEAD's code
(algorithms.md §2.1–2.2); the paper's equation number was not checked.

What it does to length, measured in small worlds (docs/ld_dpo_length.md): the stop-or-go-on
decision of a pair always lies inside the shared part, so with the reference weighted too the
minimisers keep DPO's length drift; with the policy only, the unweighted reference tail acts
as a length penalty of size (1 − α)·|log π_ref(tail)|, which can also over-shorten.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, Requirements, register
from algorithms.common import (batch_mean, frozen_sequence_logps, masked_float32,
                               preference_metrics, sequence_logps)
from algorithms.dpo import sigmoid_loss
from algorithms.validation import check_bool, check_number


def _completion_positions(mask: Array) -> Array:
  """[B, T] 1-based index of each completion token within its completion, 0 off completion.

  A running count of mask ones, so it ignores where in the row the completion sits.
  Integer arithmetic keeps the count exact for any T.
  """
  on = mask > 0
  return jnp.where(on, jnp.cumsum(on.astype(jnp.int32), axis=-1), 0)


def _ld_reduce(logps: Array, mask: Array, public_length: Array, alpha: float) -> Array:
  """[B] Σ_{i ≤ l_p} logp_i + α Σ_{i > l_p} logp_i over the completion tokens of a row."""
  logps, mask = masked_float32(logps, mask)  # [B, T], masked positions already 0
  pos = _completion_positions(mask)  # [B, T]
  shared = (pos > 0) & (pos <= public_length[:, None])
  tail = pos > public_length[:, None]
  return (jnp.sum(jnp.where(shared, logps, 0.0), axis=-1)
          + alpha * jnp.sum(jnp.where(tail, logps, 0.0), axis=-1))


def public_lengths(mask_w: Array, mask_l: Array) -> Array:
  """[B] l_p = min(n_w, n_l), the completion-token count the two responses share (int32)."""
  n_w = jnp.sum((mask_w > 0).astype(jnp.int32), axis=-1)
  n_l = jnp.sum((mask_l > 0).astype(jnp.int32), axis=-1)
  return jnp.minimum(n_w, n_l)


def ld_sequence_logps(logps_w: Array, mask_w: Array, logps_l: Array, mask_l: Array,
                      alpha: float) -> tuple[Array, Array]:
  """Length-desensitised sequence log-probs of a pair: ([B], [B]) float32.

      log π̂(y) = Σ_{i ≤ l_p} logp_i + α Σ_{i > l_p} logp_i,   l_p = min(n_w, n_l),

  with i counted over completion tokens only (i = cumsum(mask)), so prompt tokens and padding
  anywhere in the [B, T] rows do not move the split. `logps_*` [B, T] per-token log-probs,
  `mask_*` [B, T] completion masks (chosen and rejected may have different T). Whatever sits
  under mask 0, inf and NaN included, reaches neither the value nor the gradient. α = 1 gives
  the plain masked sums.
  """
  if isinstance(alpha, (int, float)) and alpha == 1.0:
    # Plain sums, bit for bit the reduction DPO uses (no tail split to round differently).
    return sequence_logps(logps_w, mask_w), sequence_logps(logps_l, mask_l)
  l_p = public_lengths(mask_w, mask_l)  # [B]
  return (_ld_reduce(logps_w, mask_w, l_p, alpha), _ld_reduce(logps_l, mask_l, l_p, alpha))


# ---------------------------------------------------------------------------------------


def _validate_ld_dpo(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)
  check_number(cfg, "ld_alpha", low=0.0, high=1.0)
  check_bool(cfg, "ld_apply_to_ref")


def _reference_logps(inputs: LossInputs, alpha: float, apply_to_ref: bool):
  plain = frozen_sequence_logps(inputs, "ref")  # also checks the reference is there
  if not apply_to_ref:
    return plain
  return ld_sequence_logps(inputs.ref_chosen_logps, inputs.chosen_mask,
                           inputs.ref_rejected_logps, inputs.rejected_mask, alpha)


# α = 0.5, the paper's suggested default; the reference split as TRL HEAD does.
@register("ld_dpo", requirements=Requirements(reference=True),
          defaults={"beta": 0.1, "ld_alpha": 0.5, "ld_apply_to_ref": True},
          validate=_validate_ld_dpo)
def ld_dpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """LD-DPO (Liu et al. 2024): mean_b −log σ(β h̃_b), h̃ on length-desensitised log-probs.

  h̃ = (log π̂θ(y_w) − ref_w) − (log π̂θ(y_l) − ref_l), where ref_* are LD-weighted too when
  `ld_apply_to_ref` (TRL HEAD) and plain sums otherwise; see `ld_sequence_logps`.

  Metrics: rewards β·(log π̂θ − ref) and `logps/*` the LD-weighted policy log-probs (what the
  loss sees, as TRL HEAD logs them); `ld/public_length` the mean l_p.
  """
  alpha = cfg.ld_alpha
  chosen, rejected = ld_sequence_logps(inputs.policy_chosen_logps, inputs.chosen_mask,
                                       inputs.policy_rejected_logps, inputs.rejected_mask,
                                       alpha)
  ref_chosen, ref_rejected = _reference_logps(inputs, alpha, cfg.ld_apply_to_ref)
  chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected  # [B]
  loss = batch_mean(sigmoid_loss(chosen_ratio - rejected_ratio, cfg.beta), inputs)
  metrics = preference_metrics(inputs, cfg.beta * chosen_ratio, cfg.beta * rejected_ratio,
                               chosen, rejected)
  metrics["ld/public_length"] = batch_mean(
      public_lengths(inputs.chosen_mask, inputs.rejected_mask).astype(jnp.float32), inputs)
  return loss, metrics
