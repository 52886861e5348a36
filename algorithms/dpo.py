"""The DPO family: DPO, conservative DPO (cDPO), robust DPO, IPO and the SLiC-style hinge.

Every loss here is a function of the per-pair log-ratio margin

    ℓ_w = log πθ(y_w|x) − log π_ref(y_w|x),   ℓ_l likewise,   h = ℓ_w − ℓ_l,

with sequence log-probs summed over completion tokens (IPO optionally averages them).
The module has two layers, in the style of `optax.losses`:

  * per-pair primitives (`sigmoid_loss`, `robust_loss`, `ipo_loss`, `hinge_loss`) that map
    arrays [B] to per-pair losses [B] and know nothing about batches, masks or configs;
  * registered loss functions (`dpo`, `cdpo`, `robust_dpo`, `ipo`, `hinge`) with the signature
    `loss_fn(inputs: LossInputs, cfg) -> (loss, metrics)` that reduce per-token inputs
    (`log_ratios`), call a primitive, take the pair-weighted batch mean and add TRL metrics.

Config keys read (all in `config.loss`): `beta`, `label_smoothing` (dpo, cdpo, robust_dpo),
`ipo_average_logps` (ipo).

All arithmetic is float32, whatever the dtype of the incoming log-probs.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from algorithms.base import (Array, LossInputs, Metrics, OnlineRound, Requirements,
                             add_chosen_nll, batch_mean, completion_lengths, preference_metrics,
                             register, sequence_logps)

# ---------------------------------------------------------------------------------------
# Per-token -> per-pair reductions shared by the family (and by SimPO).


def masked_float32(logps: Array, mask: Array) -> tuple[Array, Array]:
  """Casts per-token log-probs and mask to float32 and zeroes log-probs under mask 0.

  Zeroing with `where` (not only multiplying by the mask) keeps whatever sits under the
  mask, even inf or NaN, out of both the value and the gradient.
  """
  mask = mask.astype(jnp.float32)
  logps = jnp.where(mask > 0, logps.astype(jnp.float32), 0.0)
  return logps, mask


def policy_sequence_logps(inputs: LossInputs, average: bool = False) -> tuple[Array, Array]:
  """[B] policy log-probs of chosen and rejected, summed (or averaged) over completion tokens."""
  reduce = _mean_reduce if average else _sum_reduce
  return (reduce(inputs.policy_chosen_logps, inputs.chosen_mask),
          reduce(inputs.policy_rejected_logps, inputs.rejected_mask))


def log_ratios(inputs: LossInputs) -> tuple[Array, Array]:
  """[B] log-ratios ℓ_w, ℓ_l = log πθ(y) − log π_ref(y), summed over completion tokens."""
  if inputs.ref_chosen_logps is None or inputs.ref_rejected_logps is None:
    raise ValueError(
        "this loss needs the reference log-probs (ref_chosen_logps, ref_rejected_logps) but "
        "LossInputs has None; the algorithm's Requirements(reference=True) was not honoured")
  chosen = (_sum_reduce(inputs.policy_chosen_logps, inputs.chosen_mask)
            - _sum_reduce(inputs.ref_chosen_logps, inputs.chosen_mask))
  rejected = (_sum_reduce(inputs.policy_rejected_logps, inputs.rejected_mask)
              - _sum_reduce(inputs.ref_rejected_logps, inputs.rejected_mask))
  return chosen, rejected


def per_token_log_ratios(inputs: LossInputs) -> tuple[Array, Array]:
  """[B] ℓ_w/n_w, ℓ_l/n_l: log-ratios divided by the completion lengths (clamped ≥ 1, so an
  empty completion gives 0 rather than NaN), as TRL's IPO."""
  chosen, rejected = log_ratios(inputs)
  return (chosen / completion_lengths(inputs.chosen_mask.astype(jnp.float32)),
          rejected / completion_lengths(inputs.rejected_mask.astype(jnp.float32)))


def _sum_reduce(logps: Array, mask: Array) -> Array:
  return sequence_logps(*masked_float32(logps, mask))


def _mean_reduce(logps: Array, mask: Array) -> Array:
  logps, mask = masked_float32(logps, mask)
  return sequence_logps(logps, mask) / completion_lengths(mask)


# ---------------------------------------------------------------------------------------
# Per-pair primitives: arrays [B] in, per-pair losses [B] out.


def conservative_log_sigmoid_loss(logits: Array, label_smoothing: float = 0.0) -> Array:
  """−(1−ε) log σ(z) − ε log σ(−z): the binary cross-entropy of σ(z) against label 1−ε.

  The shared core of DPO, cDPO and SimPO; `logits` z is already scaled by β.
  With ε = 0 (a Python constant) the second term is not traced at all.
  """
  loss = -jax.nn.log_sigmoid(logits)
  if label_smoothing:
    loss = (1.0 - label_smoothing) * loss - label_smoothing * jax.nn.log_sigmoid(-logits)
  return loss


def sigmoid_loss(margin: Array, beta: float, label_smoothing: float = 0.0) -> Array:
  """DPO, and with ε > 0 conservative DPO, per pair.

      L_DPO  = −log σ(β h)                                   Rafailov et al. 2023, Eq. 7
      L_cDPO = −(1−ε) log σ(β h) − ε log σ(−β h)             Mitchell 2023, "A note on DPO
                                                             with noisy preferences" (cDPO)

  h = `margin` = ℓ_w − ℓ_l with summed sequence log-probs. ε is the probability that a
  preference label is flipped; this is TRL ≤ 0.28 `loss_type="sigmoid"` with
  `label_smoothing=ε` (TRL ≥ 0.29 dropped the smoothing from `sigmoid`).
  """
  return conservative_log_sigmoid_loss(beta * margin, label_smoothing)


def robust_loss(margin: Array, beta: float, label_smoothing: float) -> Array:
  """Robust DPO (rDPO), per pair:

      L = [−(1−ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε),   ε ∈ [0, 0.5)

  Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO" (ICML 2024, arXiv 2403.00409): the
  de-biased loss whose expectation under label flips of rate ε equals the clean DPO loss.
  (Equation number not verified against the paper.) Same as TRL `loss_type="robust"`.
  Unlike cDPO the ε term has a plus sign, so the loss can be negative.
  """
  z = beta * margin
  eps = label_smoothing
  return (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)


def ipo_loss(margin: Array, beta: float) -> Array:
  """IPO, per pair:   L = (h − 1/(2β))²

  Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", Eq. 17 (empirical IPO loss), with β the paper's τ. Pass the per-token-averaged
  h̄ = ℓ_w/n_w − ℓ_l/n_l for TRL's DPOTrainer form, the summed h for the paper's and
  eric-mitchell/direct-preference-optimization's form.
  """
  return jnp.square(margin - 1.0 / (2.0 * beta))


def hinge_loss(margin: Array, beta: float) -> Array:
  """Hinge loss with the reference, per pair:   L = max(0, 1 − β h)

  The rank-calibration hinge of SLiC-HF (Zhao et al. 2023, arXiv 2305.10425) applied to the
  reference-normalised likelihood h, as in RSO (Liu et al. 2023) and TRL
  `loss_type="hinge"`; the margin is 1/β. SLiC-HF's own loss has no reference model and adds
  an SFT term; neither is done here. (Equation number not verified.)
  """
  return jax.nn.relu(1.0 - beta * margin)


# ---------------------------------------------------------------------------------------
# Config validation.


def config_value(cfg: Mapping, key: str):
  """`cfg[key]`, or a ValueError naming `config.loss.<key>` when the key is missing."""
  try:
    return cfg[key]
  except (KeyError, AttributeError) as e:
    raise ValueError(f"config.loss.{key} is required by loss {_cfg_name(cfg)!r}") from e


def optional_value(cfg: Mapping, key: str, default=0.0):
  """`cfg[key]`, or `default` when the config has no such key (an optional knob)."""
  try:
    return cfg[key]
  except (KeyError, AttributeError):
    return default


def _cfg_name(cfg: Mapping) -> str:
  try:
    return cfg["name"]
  except (KeyError, AttributeError):
    return "?"


def check_number(cfg: Mapping, key: str, *, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> float:
  """Checks that `config.loss.<key>` is a finite real number in the given interval."""
  value = config_value(cfg, key)
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(float(value))):
    raise ValueError(f"config.loss.{key} must be a finite number, got {value!r}")
  value = float(value)
  too_low = low is not None and (value < low if low_inclusive else value <= low)
  too_high = high is not None and (value > high if high_inclusive else value >= high)
  if too_low or too_high:
    left = "" if low is None else ("[" if low_inclusive else "(") + f"{low}"
    right = "" if high is None else f"{high}" + ("]" if high_inclusive else ")")
    if low is not None and high is not None:
      want = f"in {left}, {right}"
    elif low is not None:
      want = (">= " if low_inclusive else "> ") + f"{low}"
    else:
      want = ("<= " if high_inclusive else "< ") + f"{high}"
    raise ValueError(
        f"config.loss.{key} must be {want} for loss {_cfg_name(cfg)!r}, got {value!r}")
  return value


def check_bool(cfg: Mapping, key: str) -> bool:
  value = config_value(cfg, key)
  if not isinstance(value, bool):
    raise ValueError(f"config.loss.{key} must be True or False, got {value!r}")
  return value


def check_unused_zero(cfg: Mapping, key: str) -> None:
  """Rejects a non-zero knob that this loss would silently ignore (absent counts as zero)."""
  try:
    value = cfg[key]
  except (KeyError, AttributeError):
    return
  if value:
    raise ValueError(
        f"config.loss.{key}={value!r} has no effect on loss {_cfg_name(cfg)!r}; set it to 0")


def _validate_beta(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)


def _validate_dpo(cfg: Mapping) -> None:
  _validate_beta(cfg)
  check_number(cfg, "label_smoothing", low=0.0, high=0.5, high_inclusive=False)
  check_number(cfg, "sft_weight", low=0.0)


def _validate_cdpo(cfg: Mapping) -> None:
  _validate_beta(cfg)
  check_number(cfg, "label_smoothing", low=0.0, high=0.5, low_inclusive=False,
               high_inclusive=False)
  check_unused_zero(cfg, "sft_weight")


def _validate_ipo(cfg: Mapping) -> None:
  _validate_beta(cfg)
  check_bool(cfg, "ipo_average_logps")
  check_unused_zero(cfg, "label_smoothing")
  check_unused_zero(cfg, "sft_weight")


def _validate_hinge(cfg: Mapping) -> None:
  _validate_beta(cfg)
  check_unused_zero(cfg, "label_smoothing")
  check_unused_zero(cfg, "sft_weight")


# ---------------------------------------------------------------------------------------
# Registered losses.


def _reference_loss(inputs: LossInputs, beta: float,
                    per_pair: Callable[[Array], Array],
                    average: bool = False) -> tuple[Array, Metrics]:
  """Pair-weighted mean of `per_pair(h)` plus TRL metrics with rewards β·ℓ (summed ℓ)."""
  chosen, rejected = log_ratios(inputs)
  if average:
    chosen_avg, rejected_avg = per_token_log_ratios(inputs)
    h = chosen_avg - rejected_avg
  else:
    h = chosen - rejected
  loss = batch_mean(per_pair(h), inputs)
  metrics = preference_metrics(inputs, beta * chosen, beta * rejected,
                               *policy_sequence_logps(inputs))
  return loss, metrics


@register("dpo", requirements=Requirements(reference=True), validate=_validate_dpo)
def dpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """DPO (Rafailov et al. 2023, Eq. 7): mean_b −log σ(β h_b); cDPO when label_smoothing > 0;
  RPO (Pang et al. 2024) when sft_weight > 0 (`add_chosen_nll`).

  See `sigmoid_loss`. Rewards logged as β·ℓ_w, β·ℓ_l.
  """
  loss, metrics = _reference_loss(
      inputs, cfg.beta, lambda h: sigmoid_loss(h, cfg.beta, cfg.label_smoothing))
  return add_chosen_nll(loss, metrics, inputs, optional_value(cfg, "sft_weight"))


# Online DPO, the baseline every online table compares against: DPO's loss on best / worst
# pairs of the policy's own samples, round after round, against the FIXED starting policy
# π_0 (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv
# 2402.04792, keep the SFT model as reference). DNO differs only in moving the anchor.
register("online_dpo", requirements=Requirements(reference=True, online=OnlineRound("best_worst")),
         validate=_validate_dpo)(dpo)


@register("cdpo", requirements=Requirements(reference=True), validate=_validate_cdpo)
def cdpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """Conservative DPO (Mitchell 2023): mean_b [−(1−ε) log σ(β h_b) − ε log σ(−β h_b)].

  The same function as `dpo` with label_smoothing = ε, under its own name so that a config
  says what it runs; validation requires ε ∈ (0, 0.5).
  """
  return dpo(inputs, cfg)


@register("robust_dpo", requirements=Requirements(reference=True), validate=_validate_dpo)
def robust_dpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """Robust DPO (Chowdhury et al. 2024): see `robust_loss`; ε = label_smoothing ∈ [0, 0.5)."""
  return _reference_loss(
      inputs, cfg.beta, lambda h: robust_loss(h, cfg.beta, cfg.label_smoothing))


@register("ipo", requirements=Requirements(reference=True), validate=_validate_ipo)
def ipo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """IPO (Azar et al. 2023, Eq. 17): mean_b (h_b − 1/(2β))².

  `ipo_average_logps=True` (default) uses h̄ = ℓ_w/n_w − ℓ_l/n_l as TRL's DPOTrainer does
  (TRL PR #1265); False uses summed log-ratios as the paper's derivation, the
  eric-mitchell reference code and TRL's Online DPO do. Rewards are logged as β·ℓ with
  summed ℓ in both cases, as TRL (≥ 0.29) logs them.
  """
  return _reference_loss(inputs, cfg.beta, lambda h: ipo_loss(h, cfg.beta),
                         average=cfg.ipo_average_logps)


@register("hinge", requirements=Requirements(reference=True), validate=_validate_hinge)
def hinge(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """SLiC-style hinge with the reference (TRL `hinge`): mean_b max(0, 1 − β h_b)."""
  return _reference_loss(inputs, cfg.beta, lambda h: hinge_loss(h, cfg.beta))
