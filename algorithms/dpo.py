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

Hyperparameters (`config.loss`, defaults in each `register`): `beta`; `label_smoothing` (dpo,
cdpo, robust_dpo); `sft_weight` (dpo, online_dpo); `ipo_average_logps` (ipo). The reductions
come from `algorithms.common` (float32 whatever the incoming dtype).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, OnlineRound, Requirements, register
from algorithms.common import (add_chosen_nll, batch_mean, log_ratios, per_token_log_ratios,
                               policy_sequence_logps, preference_metrics)
from algorithms.validation import check_bool, check_number

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
# Hyperparameters: defaults and checks.

# DPO's β = 0.1 (Rafailov et al. 2023, §6 and TRL's default); ε = 0 (no label smoothing);
# no NLL term.
DPO_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "sft_weight": 0.0}


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


def _validate_robust_dpo(cfg: Mapping) -> None:
  _validate_beta(cfg)
  check_number(cfg, "label_smoothing", low=0.0, high=0.5, high_inclusive=False)


def _validate_ipo(cfg: Mapping) -> None:
  _validate_beta(cfg)
  check_bool(cfg, "ipo_average_logps")


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


@register("dpo", requirements=Requirements(reference=True), defaults=DPO_DEFAULTS,
          validate=_validate_dpo)
def dpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """DPO (Rafailov et al. 2023, Eq. 7): mean_b −log σ(β h_b); cDPO when label_smoothing > 0;
  RPO (Pang et al. 2024) when sft_weight > 0 (`add_chosen_nll`).

  See `sigmoid_loss`. Rewards logged as β·ℓ_w, β·ℓ_l.
  """
  loss, metrics = _reference_loss(
      inputs, cfg.beta, lambda h: sigmoid_loss(h, cfg.beta, cfg.label_smoothing))
  return add_chosen_nll(loss, metrics, inputs, cfg.get("sft_weight", 0.0))


# Online DPO, the baseline every online table compares against: DPO's loss on best / worst
# pairs of the policy's own samples, round after round, against the FIXED starting policy
# π_0 (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv
# 2402.04792, keep the SFT model as reference). DNO differs only in moving the anchor.
register("online_dpo", requirements=Requirements(reference=True, online=OnlineRound("best_worst")),
         defaults=DPO_DEFAULTS, validate=_validate_dpo)(dpo)


# cDPO needs ε > 0; 0.1 is this codebase's choice [unverified: the cDPO note states none].
@register("cdpo", requirements=Requirements(reference=True),
          defaults={"beta": 0.1, "label_smoothing": 0.1}, validate=_validate_cdpo)
def cdpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """Conservative DPO (Mitchell 2023): mean_b [−(1−ε) log σ(β h_b) − ε log σ(−β h_b)].

  The same function as `dpo` with label_smoothing = ε, under its own name so that a config
  says what it runs; validation requires ε ∈ (0, 0.5).
  """
  return dpo(inputs, cfg)


@register("robust_dpo", requirements=Requirements(reference=True),
          defaults={"beta": 0.1, "label_smoothing": 0.0}, validate=_validate_robust_dpo)
def robust_dpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """Robust DPO (Chowdhury et al. 2024): see `robust_loss`; ε = label_smoothing ∈ [0, 0.5)."""
  return _reference_loss(
      inputs, cfg.beta, lambda h: robust_loss(h, cfg.beta, cfg.label_smoothing))


@register("ipo", requirements=Requirements(reference=True),
          defaults={"beta": 0.1, "ipo_average_logps": True}, validate=_validate_ipo)
def ipo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """IPO (Azar et al. 2023, Eq. 17): mean_b (h_b − 1/(2β))².

  `ipo_average_logps=True` (default) uses h̄ = ℓ_w/n_w − ℓ_l/n_l as TRL's DPOTrainer does
  (TRL PR #1265); False uses summed log-ratios as the paper's derivation, the
  eric-mitchell reference code and TRL's Online DPO do. Rewards are logged as β·ℓ with
  summed ℓ in both cases, as TRL (≥ 0.29) logs them.
  """
  return _reference_loss(inputs, cfg.beta, lambda h: ipo_loss(h, cfg.beta),
                         average=cfg.ipo_average_logps)


@register("hinge", requirements=Requirements(reference=True), defaults={"beta": 0.1},
          validate=_validate_beta)
def hinge(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """SLiC-style hinge with the reference (TRL `hinge`): mean_b max(0, 1 − β h_b)."""
  return _reference_loss(inputs, cfg.beta, lambda h: hinge_loss(h, cfg.beta))
