"""DPO-Positive (DPOP): DPO with a penalty when the chosen log-ratio falls below zero.

Pal, Karkhanis, Dooley, Roberts, Naidu, White 2024, "Smaug: Fixing Failure Modes of
Preference Optimisation with DPO-Positive", arXiv 2402.13228, Eq. 3:

    L = −log σ( β [ ℓ_w − ℓ_l − λ · max(0, −ℓ_w) ] ),    ℓ = log πθ(y|x) − log π_ref(y|x),

with summed sequence log-probs. DPO's loss depends on ℓ_w − ℓ_l only, so it can lower the
likelihood of the preferred response as long as the rejected one falls faster (the paper's
failure mode on pairs a few tokens apart, e.g. math answers); max(0, log π_ref(y_w)/πθ(y_w))
= max(0, −ℓ_w) is zero while the policy keeps y_w at least as likely as the reference, and
pushes y_w back up once it is not. λ = 0 is DPO.

Hyperparameters (`config.loss`): `beta` (β) and `dpop_lambda` (λ ≥ 0).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, Requirements, register
from algorithms.common import batch_mean, log_ratios, policy_sequence_logps, preference_metrics
from algorithms.validation import check_number


def dpop_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, beta: float,
              lam: float) -> Array:
  """Per pair −log σ(β [ℓ_w − ℓ_l − λ max(0, −ℓ_w)]) (Pal et al. 2024, Eq. 3); ℓ [B]."""
  penalty = jax.nn.relu(-chosen_log_ratio)
  return -jax.nn.log_sigmoid(beta * (chosen_log_ratio - rejected_log_ratio - lam * penalty))


def _validate(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)
  check_number(cfg, "dpop_lambda", low=0.0)


# λ = 50: the value of the paper's experiments [unverified: read from secondary sources, not
# from the paper's tables]; β = 0.1 as DPO.
@register("dpop", requirements=Requirements(reference=True),
          defaults={"beta": 0.1, "dpop_lambda": 50.0}, validate=_validate)
def dpop(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """DPOP, pair-weighted batch mean of `dpop_loss`. Metrics: DPO's (rewards β·ℓ) plus
  `dpop/penalty`, the mean max(0, −ℓ_w)."""
  chosen, rejected = log_ratios(inputs)  # [B] each
  loss = batch_mean(dpop_loss(chosen, rejected, cfg.beta, cfg.dpop_lambda), inputs)
  metrics = preference_metrics(inputs, cfg.beta * chosen, cfg.beta * rejected,
                               *policy_sequence_logps(inputs))
  metrics["dpop/penalty"] = batch_mean(jax.lax.stop_gradient(jnp.maximum(-chosen, 0.0)),
                                       inputs)
  return loss, metrics
