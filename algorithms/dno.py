"""DNO: Direct Nash Optimization (Rosset, Cheng, Mitra, Santacroce, Awadallah, Xie 2024,
"Direct Nash Optimization: Teaching Language Models to Self-Improve with General
Preferences", arXiv 2404.03715).

DNO approaches the Nash equilibrium of a general (possibly intransitive) preference P by
batched on-policy rounds. In round t the reward of a response is its expected win-rate
against the current iterate, r_t(x, y) = E_{y'∼π_t}[P(y ≻ y' | x)], and the new policy
regresses its "internal reward" η log π(y|x)/π_t(y|x) onto r_t with a binary cross-entropy on
pairs. THE ANCHOR IS THE PREVIOUS ITERATE π_t, NOT THE SFT MODEL: a fixed reference turns DNO
into plain iterative DPO. With

    ℓ(y) = log πθ(y|x) − log π_t(y|x)   (summed over completion tokens),
    z = η [ℓ(y_w) − ℓ(y_l)],

the two per-pair losses are

  * Algorithm 1 (DNO, Eq. 8 = Eq. 12), the soft two-sided BCE with label p:
        L = −[p log σ(z) + (1 − p) log σ(−z)],   p = σ(r_t(y_1) − r_t(y_2));
  * Algorithm 2 (DNO-Prct, Eq. 13, used in all of the paper's experiments), on the
    large-margin pair (y_t^+, y_t^−) picked by win-rate rank:
        L = −log σ(z).

η is the paper's η (the soft-policy-iteration temperature in π_{t+1} ∝ π_t exp(r_t/η), Eq. 9);
it plays DPO's β and is read from `config.loss.beta`.

Which form runs is decided by the data: no "preference_prob" target -> DNO-Prct (hard),
an array p [B] -> Algorithm 1 (soft). To follow Eq. 8 literally, fill p with
σ(r_t(y_w) − r_t(y_l)) from the estimated win-rates, not with the raw P(y_w ≻ y_l); the loss
accepts any p ∈ [0, 1] and does not clip it (p outside [0, 1] makes the loss unbounded below).
Eq. 8 is symmetric in (y_1, y_2), so which response fills the `chosen_*` slots does not matter
in the soft form.

The round logic (sample K responses from π_t, add the teacher's output, rank by win-rate,
keep large-margin pairs, train, make π_{t+1} the next anchor; Algorithm 2 starts from
π_1 = π_ref) belongs in experiments/iterate.py, not here.

Verified against the arXiv v1 text (stored copy of 2404.03715v1): Algorithm 1 with Eq. (8)
and its derivation Eq. (10)–(12) (internal reward η log π/π_t, BCE target σ(r_t(y_1) −
r_t(y_2)), label on both orderings); Algorithm 2 with Eq. (13) (log σ of η-scaled log-ratios
against π_t, π_1 ← π_ref); sequence log-probs as whole-response log π(y|x) (so summed).
Not verified: the hyper-parameters of §5 (η, K, margin threshold, learning rate), which
algorithms.md §3.2 lists as [unverified].

Config keys read (all in `config.loss`): `beta` (= η); `sft_weight` ≥ 0 adds the NLL of the
chosen responses (`algorithms.base.add_chosen_nll`, Pang et al. 2024; not part of DNO, off by
default). `label_smoothing` must be 0.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, OnlineRound, Requirements, register
from algorithms.common import (add_chosen_nll, batch_mean, frozen_sequence_logps,
                               policy_sequence_logps, preference_metrics)
from algorithms.validation import check_number


def dno_loss(policy_chosen: Array, policy_rejected: Array, prev_chosen: Array,
             prev_rejected: Array, eta: float, target: Optional[Array] = None) -> Array:
  """DNO per pair, on sequence log-probs [B] (summed over completion tokens).

      z = η [(log πθ(y_w) − log π_t(y_w)) − (log πθ(y_l) − log π_t(y_l))]
      target None:  L = −log σ(z)                                 DNO-Prct, Eq. 13
      target = p:   L = −[p log σ(z) + (1 − p) log σ(−z)]         DNO, Eq. 8

  Rosset et al. 2024 (arXiv 2404.03715), Algorithms 2 and 1.
  """
  z = eta * ((policy_chosen - prev_chosen) - (policy_rejected - prev_rejected))
  if target is None:
    return -jax.nn.log_sigmoid(z)
  target = target.astype(jnp.float32)
  return -(target * jax.nn.log_sigmoid(z) + (1.0 - target) * jax.nn.log_sigmoid(-z))


def _validate_dno(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)
  check_number(cfg, "sft_weight", low=0.0)


# η = 0.1 [unverified: DNO's experiments sweep it; see configs/reproduce/dno.py].
@register("dno", requirements=Requirements(reference=False, previous_policy=True,
                                            online=OnlineRound("best_worst"),
                                            targets=("preference_prob",)),
          defaults={"beta": 0.1, "sft_weight": 0.0}, validate=_validate_dno)
def dno(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """DNO (Rosset et al. 2024): pair-weighted mean of `dno_loss` against π_t, η = cfg.beta.

  Hard DNO-Prct form (Eq. 13) when the batch has no "preference_prob" target, soft
  Algorithm 1 form (Eq. 8) with label p = that target otherwise. The `ref_*` fields are ignored.
  Metrics: rewards η·(log πθ − log π_t) (the internal reward of Eq. 10 without its
  partition term), `logps/*` the summed policy log-probs, and `dno/target` the mean label
  (1 for the hard form).
  """
  eta = cfg.beta
  chosen, rejected = policy_sequence_logps(inputs)  # [B] each
  prev_chosen, prev_rejected = frozen_sequence_logps(inputs, "prev")
  soft_label = inputs.targets.get("preference_prob")  # [B] or None
  per_pair = dno_loss(chosen, rejected, prev_chosen, prev_rejected, eta, soft_label)
  loss = batch_mean(per_pair, inputs)
  metrics = preference_metrics(inputs, eta * (chosen - prev_chosen),
                               eta * (rejected - prev_rejected), chosen, rejected)
  if soft_label is None:
    metrics["dno/target"] = jnp.ones((), jnp.float32)
  else:
    metrics["dno/target"] = batch_mean(
        jax.lax.stop_gradient(soft_label.astype(jnp.float32)), inputs)
  return add_chosen_nll(loss, metrics, inputs, cfg.sft_weight)
