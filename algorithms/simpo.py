"""SimPO: Simple Preference Optimization with a Reference-Free Reward (Meng, Xia, Chen 2024).

Reference-free: the implicit reward is β times the policy's per-token AVERAGE log-prob,

    r(y) = β · (1/|y|) Σ_t log πθ(y_t | x, y_<t),

and the Bradley-Terry objective asks the reward gap to exceed a target margin γ.

Config keys read (all in `config.loss`): `beta` (SimPO's β, ~100× DPO's: 2 to 10 in the
paper), `simpo_gamma_beta_ratio` (γ/β, the official code's `gamma_beta_ratio`),
`label_smoothing` (cDPO form, as the official trainer allows) and `sft_weight` (weight of a
cross-entropy term on the chosen completions, the official trainer's `sft_weight`).
"""

from __future__ import annotations

from typing import Mapping

from algorithms.base import Array, LossInputs, Metrics, Requirements, register
from algorithms.common import (add_chosen_nll, batch_mean, policy_sequence_logps,
                               preference_metrics)
from algorithms.dpo import conservative_log_sigmoid_loss
from algorithms.validation import check_number


def simpo_loss(chosen_avg_logps: Array, rejected_avg_logps: Array, beta: float,
               gamma_beta_ratio: float, label_smoothing: float = 0.0) -> Array:
  """SimPO, per pair (Meng et al. 2024, Eq. 6):

      L = −log σ( β/|y_w| log πθ(y_w|x) − β/|y_l| log πθ(y_l|x) − γ ),   γ = β · gamma_beta_ratio

  computed as the official `simpo_trainer.py::simpo_loss` does, −log σ(β (Δ − γ/β)) with
  Δ = the difference of average log-probs. With label_smoothing ε > 0, the conservative
  form −(1−ε) log σ(z) − ε log σ(−z) of the official trainer.
  """
  logits = beta * ((chosen_avg_logps - rejected_avg_logps) - gamma_beta_ratio)
  return conservative_log_sigmoid_loss(logits, label_smoothing)


def _validate_simpo(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)
  check_number(cfg, "simpo_gamma_beta_ratio", low=0.0)
  check_number(cfg, "label_smoothing", low=0.0, high=0.5, high_inclusive=False)
  check_number(cfg, "sft_weight", low=0.0)


# TRL's CPOConfig defaults for loss_type="simpo" (β = 0.1, γ/β = 0.5); the paper's runs use
# β = 2 to 10 (configs/reproduce/simpo.py).
@register("simpo", requirements=Requirements(reference=False),
          defaults={"beta": 0.1, "simpo_gamma_beta_ratio": 0.5, "label_smoothing": 0.0,
                    "sft_weight": 0.0},
          validate=_validate_simpo)
def simpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """SimPO (Meng et al. 2024, Eq. 6), pair-weighted batch mean; see `simpo_loss`.

  Adds `sft_weight` · `chosen_nll` when sft_weight > 0 (logged as `sft_loss`). The reference
  fields of `inputs` are ignored and may be None. Metrics follow the official SimPO trainer:
  rewards β·mean logπ and `logps/*` the per-token MEAN log-probs.
  """
  chosen, rejected = policy_sequence_logps(inputs, average=True)
  per_pair = simpo_loss(chosen, rejected, cfg.beta, cfg.simpo_gamma_beta_ratio,
                        cfg.label_smoothing)
  loss = batch_mean(per_pair, inputs)
  metrics = preference_metrics(inputs, cfg.beta * chosen, cfg.beta * rejected, chosen, rejected)
  return add_chosen_nll(loss, metrics, inputs, cfg.sft_weight)
