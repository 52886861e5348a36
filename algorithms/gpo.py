"""GPO (General Preference Optimization) and SPPO: self-play regression on preference targets.

GPO (Zhang et al., "Beyond Bradley-Terry Models: A General Preference Model for Language
Model Alignment", ICML 2025, arXiv 2410.02197) maximises E_{y∼πθ, y'∼π'}[s(y ≻ y' | x)] −
β KL(πθ ‖ π_ref) with the GPM score s. In practice (the repository's `LLM-Alignment`
scripts) it is SPPO-style self-play (Wu et al., "Self-Play Preference Optimization for
Language Model Alignment", arXiv 2405.00675): per round,

  1. sample K responses per prompt from π_t and score every ordered pair with the GPM,
     table[i, j] = s(y_i ≻ y_j)/τ (`gpo_targets` takes s and τ);
  2. rm_scores_i = mean_j (table[i, j] − table[j, i]); chosen = argmax, rejected = argmin;
  3. targets, the sum over j including j = i (which adds 0 to Ŝ and σ(0) = ½ to P̂):
       Ŝ_i = (1/K) Σ_j (table[i, j] − table[j, i])       (GPO, "score" table)
       P̂_i = (1/K) Σ_j σ(table[i, j] − table[j, i])      (SPPO + GPM, "prob" table)
  4. regress the log-ratio against π_t on the targets (`gpo`, below), π_t as reference.

What was verified, and where (algorithms.md §5.2, and a look at the code for this module):
  * Steps 2-3 [code]: general-preference/general-preference-model
    `LLM-Alignment/scripts/RMs/ranker.py::get_scores_from_cmps` (rm_scores as the mean of
    table − tableᵀ), `general_preference/scripts/compute_score_from_raw.py` (Ŝ = row sum of
    table − tableᵀ divided by K; chosen/rejected by argmax/argmin of rm_scores) and
    `compute_prob_from_raw.py` (P̂ likewise with σ), and `RMs/reward_model.py`
    (table = s/τ with a zero diagonal; BT tables are r_i − r_j without τ).
  * The "sppo" loss [code]: uclaml/SPPO `sppo/trainer.py` (loss_type "sppo"),
    ½[(ℓ_w − (P̂_w − ½)/β)² + (ℓ_l − (P̂_l − ½)/β)²].
  * The "sppo_score" loss [UNVERIFIED]: the GPM scripts train with `--loss_type=sppo_score`
    (`general_preference/scripts/pipeline_score_table.sh`) and export CLAMP_THRES=1000
    (`run_gpo_llama-3_table_gp.sh`), but the modified SPPO trainer that implements it is not
    public, and neither the code/docs/pages search nor the project page shows its formula.
    We use the analogue of SPPO's loss without the ½ baseline (s(π_t ≻ π_t) = 0 for an
    antisymmetric s): ½[(ℓ_w − Ŝ_w/β)² + (ℓ_l − Ŝ_l/β)²]. How CLAMP_THRES is applied is
    unknown; we clamp the regression targets (Ŝ/β or (P̂ − ½)/β) to ±gpo_target_clamp.

Config keys read (`config.loss`): `beta` (β; 1e-3 in the official scripts), `gpo_loss_type`
("sppo_score" or "sppo"), `gpo_target_clamp` (CLAMP_THRES, default 1000). `gpo_targets`
takes `preference_tau` from the caller.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, OnlineRound, Requirements, register
from algorithms.common import batch_mean, log_ratios, policy_sequence_logps, preference_metrics
from algorithms.validation import check_choice, check_number

GPO_LOSS_TYPES = ("sppo_score", "sppo")

# ---------------------------------------------------------------------------------------
# Targets from a score table (the data side of one round).


class GPOTargets(NamedTuple):
  """Selection and regression targets for one round; [...] = the prompt axes (or none).

  rm_scores:      [..., K] mean_j (table − tableᵀ)[i, j]; equals score_targets.
  chosen_index:   [...] int32 argmax of rm_scores (first on ties, as numpy).
  rejected_index: [...] int32 argmin of rm_scores (equal to chosen_index when all tie).
  score_targets:  [..., K] Ŝ_i = (1/K) Σ_j (table − tableᵀ)[i, j]   (loss "sppo_score").
  prob_targets:   [..., K] P̂_i = (1/K) Σ_j σ((table − tableᵀ)[i, j]) (loss "sppo").
  """

  rm_scores: Array
  chosen_index: Array
  rejected_index: Array
  score_targets: Array
  prob_targets: Array


def gpo_targets(score_table: Array, tau: float) -> GPOTargets:
  """Selection and targets from the pairwise scores of K responses (algorithms.md §5.2).

  Args:
    score_table: [K, K] or [N, K, K] with score_table[..., i, j] = s(y_i ≻ y_j) (GPM
      scores from `algorithms.preference.gpm_score_table`, or r_i − r_j for a BT model).
    tau: the GPM temperature; the official table holds s/τ. Pass τ = 1 for a BT table, which
      the official code does not divide by τ.

  The official pipeline uses table − tableᵀ, which for an antisymmetric table is 2·s/τ:
  that factor 2 is kept, and the mean over j includes j = i.
  """
  table = jnp.asarray(score_table, jnp.float32) / tau
  k = table.shape[-1]
  if table.ndim < 2 or table.shape[-2] != k:
    raise ValueError(f"score_table must be [..., K, K], got {table.shape}")
  wins = table - jnp.swapaxes(table, -1, -2)  # [..., K, K], 2 s(i, j)/τ when antisymmetric
  rm_scores = jnp.sum(wins, axis=-1) / k
  probs = jnp.sum(jax.nn.sigmoid(wins), axis=-1) / k
  return GPOTargets(
      rm_scores=rm_scores,
      chosen_index=jnp.argmax(rm_scores, axis=-1).astype(jnp.int32),
      rejected_index=jnp.argmin(rm_scores, axis=-1).astype(jnp.int32),
      score_targets=rm_scores,
      prob_targets=probs,
  )


def pair_targets(targets: GPOTargets, loss_type: str) -> tuple[Array, Array]:
  """([...], [...]) the chosen and rejected response's target for `gpo_loss_type`: Ŝ for
  "sppo_score", P̂ for "sppo" (the "chosen_score" / "rejected_score" targets)."""
  if loss_type not in GPO_LOSS_TYPES:
    raise ValueError(f"gpo_loss_type={loss_type!r} not in {GPO_LOSS_TYPES}")
  per_response = targets.score_targets if loss_type == "sppo_score" else targets.prob_targets
  take = lambda idx: jnp.take_along_axis(per_response, idx[..., None], axis=-1)[..., 0]
  return take(targets.chosen_index), take(targets.rejected_index)


# ---------------------------------------------------------------------------------------
# The loss.


def regression_targets(chosen_targets: Array, rejected_targets: Array, beta: float,
                       loss_type: str, clamp: float) -> tuple[Array, Array]:
  """[B] targets for the log-ratios: Ŝ/β ("sppo_score") or (P̂ − ½)/β ("sppo"), clamped to
  ±clamp (β = 1e-3 makes 1/β = 1000 scale them)."""
  baseline = 0.5 if loss_type == "sppo" else 0.0
  scale = lambda x: jnp.clip((jnp.asarray(x, jnp.float32) - baseline) / beta, -clamp, clamp)
  return scale(chosen_targets), scale(rejected_targets)


def squared_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, chosen_target: Array,
                 rejected_target: Array) -> Array:
  """Per pair ½[(ℓ_w − t_w)² + (ℓ_l − t_l)²] (SPPO, uclaml/SPPO `sppo/trainer.py`)."""
  return 0.5 * (jnp.square(chosen_log_ratio - chosen_target)
                + jnp.square(rejected_log_ratio - rejected_target))


def _validate_gpo(cfg: Mapping) -> None:
  check_number(cfg, "beta", low=0.0, low_inclusive=False)
  check_number(cfg, "gpo_target_clamp", low=0.0, low_inclusive=False)
  check_choice(cfg, "gpo_loss_type", GPO_LOSS_TYPES)


@register("gpo", requirements=Requirements(reference=False, previous_policy=True,
                                            online=OnlineRound("gpo_targets"),
                                            targets=("chosen_score", "rejected_score")),
          # The GPO scripts' CLAMP_THRES = 1000 and Ŝ targets; β [unverified] (the SPPO
          # scripts use 0.001, configs/reproduce/gpo.py).
          defaults={"beta": 0.1, "gpo_loss_type": "sppo_score", "gpo_target_clamp": 1000.0},
          validate=_validate_gpo)
def gpo(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """GPO / SPPO squared regression against the previous iterate π_t:

      L = mean_b ½[(ℓ_w − t_w)² + (ℓ_l − t_l)²],   ℓ = log πθ(y|x) − log π_t(y|x) (summed),
      t = Ŝ/β                  gpo_loss_type "sppo_score" (GPO; assumed form, see module doc)
      t = (P̂ − ½)/β            gpo_loss_type "sppo"       (SPPO, Wu et al. 2024; equation
                                                          number not verified)

  with t clamped to ±gpo_target_clamp. Targets come from the "chosen_score" /
  "rejected_score" targets (Ŝ or P̂ as the loss type says; see `gpo_targets`). Rewards are logged
  as β·ℓ (TRL / SPPO trainer), plus `gpo/target_{chosen,rejected}` (mean t) and
  `gpo/clamped_fraction`.
  """
  beta, clamp = cfg.beta, cfg.gpo_target_clamp
  raw_w = inputs.target("chosen_score", "gpo").astype(jnp.float32)  # [B]
  raw_l = inputs.target("rejected_score", "gpo").astype(jnp.float32)
  chosen, rejected = log_ratios(inputs, "prev")  # ℓ against π_t
  policy_chosen, policy_rejected = policy_sequence_logps(inputs)
  t_w, t_l = regression_targets(raw_w, raw_l, beta, cfg.gpo_loss_type, clamp)
  loss = batch_mean(squared_loss(chosen, rejected, t_w, t_l), inputs)
  metrics = preference_metrics(inputs, beta * chosen, beta * rejected, policy_chosen,
                               policy_rejected)
  clamped = (jnp.abs(t_w) >= clamp).astype(jnp.float32) + (jnp.abs(t_l) >= clamp)
  metrics.update({
      "gpo/target_chosen": batch_mean(t_w, inputs),
      "gpo/target_rejected": batch_mean(t_l, inputs),
      "gpo/clamped_fraction": batch_mean(clamped / 2.0, inputs),
  })
  return loss, metrics
