"""INPO: Iterative Nash Policy Optimization (Zhang et al., ICLR 2025, arXiv 2407.00617).

INPO plays the two-player preference game regularised by τ·KL(π ‖ π_ref) with online mirror
descent (Hedge) and no-regret self-play. The OMD step from π_t (Eq. 4) has the closed form
(Eq. 5)

    π_{t+1}(y) ∝ exp(P(y ≻ π_t)/η) · π_ref(y)^(τ/η) · π_t(y)^(1 − τ/η),

so with

    h_t(π, y, y') = log π(y)/π(y') − (τ/η) log π_ref(y)/π_ref(y') − ((η − τ)/η) log π_t(y)/π_t(y')

the target satisfies h_t(π_{t+1}, y, y') = (P(y ≻ π_t) − P(y' ≻ π_t))/η (Eq. 6). INPO replaces
the unknown win-rates by a binary preference on pairs sampled from π_t (Eq. 8, Algorithm 1
line 5) and minimises, per labelled pair (y_w, y_l),

    L = (h_t(π, y_w, y_l) − 1/(2η))².

Written with ratio = τ/η and Δ = log-prob of y_w minus that of y_l (SUMMED over completion
tokens): h = Δπ − ratio·Δref − (1 − ratio)·Δ_t. η is the inverse OMD step size (not a learning
rate; a small η means a large target 1/(2η), ≈ 66.7 at the default 0.0075), τ the KL
strength, 0 ≤ τ < η. In round 1 (π_t = π_ref) h = Δπ − Δref and the loss is IPO with β = η on
summed log-probs.

Everything is float32 whatever the input dtype: the target reaches ~67 and the square of a
bf16 difference of that size loses most of its digits.

Verified against the paper text (stored copy of arXiv 2407.00617): the definition of h_t,
Eq. (5)–(8) and Algorithm 1 (π_1 ← π_ref, pairs from π_t, the squared loss above). The
descendant code smiles724/MNPO computes the same loss with one history model
(algorithms.md §4.1). Not verified: whether the authors' (unreleased) trainer averages the
log-probs per token as MNPO's SimPO-derived forward does; the paper's math uses sequence
log-probs, which is what is done here.

Config keys read (all in `config.loss`): `inpo_eta` (η > 0), `inpo_ratio` (τ/η ∈ [0, 1)).
`sft_weight` ≥ 0 adds the NLL of the chosen responses (`algorithms.base.add_chosen_nll`, Pang
et al. 2024; not part of INPO, off by default). `beta` is not used; `label_smoothing` must be 0.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, OnlineRound, Requirements, register
from algorithms.common import (add_chosen_nll, batch_mean, frozen_sequence_logps,
                               policy_sequence_logps, preference_metrics)
from algorithms.dpo import ipo_loss
from algorithms.validation import check_number


def inpo_loss(policy_margin: Array, ref_margin: Array, prev_margin: Array, eta: float,
              ratio: float) -> Array:
  """INPO per pair (Zhang et al. 2025, Algorithm 1 line 5 / Eq. 8):

      h = Δπ − ratio·Δref − (1 − ratio)·Δ_t,   L = (h − 1/(2η))²,   ratio = τ/η,

  where each Δ = log p(y_w) − log p(y_l) is a [B] margin of summed sequence log-probs under
  the policy, the reference and the previous iterate π_t. The square is `dpo.ipo_loss` with
  β = η: INPO changes IPO's margin, not its target.
  """
  return ipo_loss(inpo_h(policy_margin, ref_margin, prev_margin, ratio), eta)


def inpo_h(policy: Array, ref: Array, prev: Array, ratio: float) -> Array:
  """x_π − ratio·x_ref − (1 − ratio)·x_t in float32, for margins or single log-probs.

  Evaluated as (x_π − x_t) − ratio·(x_ref − x_t): the differences of nearby log-probs come
  first, so nothing large cancels after rounding, and with π_t = π_ref it is x_π − x_ref
  exactly, as in IPO.
  """
  policy, ref, prev = (x.astype(jnp.float32) for x in (policy, ref, prev))
  return (policy - prev) - ratio * (ref - prev)


def _validate_inpo(cfg: Mapping) -> None:
  check_number(cfg, "inpo_eta", low=0.0, low_inclusive=False)
  check_number(cfg, "inpo_ratio", low=0.0, high=1.0, high_inclusive=False)
  check_number(cfg, "sft_weight", low=0.0)


# η = 0.0075 and τ/η = 1/3: the INPOConfig / MNPOConfig defaults (research notes §4).
@register("inpo",
          requirements=Requirements(reference=True, previous_policy=True,
                                    online=OnlineRound("best_worst")),
          defaults={"inpo_eta": 0.0075, "inpo_ratio": 1.0 / 3.0, "sft_weight": 0.0},
          validate=_validate_inpo)
def inpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """INPO (Zhang et al. 2025, Eq. 8): pair-weighted mean of `inpo_loss` on summed log-probs.

  Metrics: per-response rewards η·[log πθ(y) − ratio·log π_ref(y) − (1 − ratio)·log π_t(y)],
  so that `rewards/margins` = η·h, the estimate of the win-rate gap
  P(y_w ≻ π_t) − P(y_l ≻ π_t) (Eq. 6), which the loss pulls to 1/2. With π_t = π_ref they
  are IPO's β·ℓ. `logps/*` are the summed policy log-probs; `inpo/h` the mean h.
  """
  eta, ratio = cfg.inpo_eta, cfg.inpo_ratio
  chosen, rejected = policy_sequence_logps(inputs)  # [B] each
  ref_chosen, ref_rejected = frozen_sequence_logps(inputs, "ref")
  prev_chosen, prev_rejected = frozen_sequence_logps(inputs, "prev")
  # h from per-response pieces (each a difference of nearby log-probs, like IPO's ℓ_w, ℓ_l):
  # the same value as inpo_loss on margins, and bit-identical to IPO when π_t = π_ref.
  h_chosen = inpo_h(chosen, ref_chosen, prev_chosen, ratio)  # [B]
  h_rejected = inpo_h(rejected, ref_rejected, prev_rejected, ratio)  # [B]
  h = h_chosen - h_rejected
  loss = batch_mean(ipo_loss(h, eta), inputs)  # (h − 1/(2η))², see inpo_loss
  metrics = preference_metrics(inputs, eta * h_chosen, eta * h_rejected, chosen, rejected)
  metrics["inpo/h"] = batch_mean(jax.lax.stop_gradient(h), inputs)
  return add_chosen_nll(loss, metrics, inputs, cfg.sft_weight)
