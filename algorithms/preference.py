"""Reward-model training losses: the Bradley-Terry reward model and the General Preference
embedding Model (GPM).

GPM (Zhang, Zhang, Wu, Xu, Gu, "Beyond Bradley-Terry Models: A General Preference Model for
Language Model Alignment", ICML 2025, arXiv 2410.02197) embeds each response as
v = v_{y|x} ∈ ℝ^{2k} and scores a pair with a skew-symmetric operator

    s(y_i ≻ y_j | x) = ⟨R v_i, v_j⟩,   R = blockdiag(R_1, …, R_k),   R_l = [[0, −λ_l], [λ_l, 0]],
    P(y_i ≻ y_j | x) = σ(s / τ),

λ_l = 1, or the prompt-dependent gates λ(x) of the prompt head. Computed as the official code
does (`general_preference/models/loss.py`, `chosen @ R.T · rejected`):

    s = (v_i Rᵀ) · v_j = Σ_l λ_l (v_i[2l] v_j[2l+1] − v_i[2l+1] v_j[2l]),

so s(i, j) = −s(j, i) and s(i, i) = 0, and the k = 1 case is c0·r1 − c1·r0
(`GeneralPreferenceLoss`). A BT reward model is the scalar special case s = r_i − r_j.

These losses read the head outputs, not log-probs: `LossInputs.chosen_values` /
`rejected_values` ([B, D]) and `preference_gates` ([B, k] or None); the log-prob fields are
None and never touched.

Config keys read (`config.loss`): `preference_tau` (τ > 0; official default 0.1) and
`preference_margin` (m ≥ 0, the official `--margin_loss` shift; default 0).
The value normalisation and the prompt head are model options (`models/heads.py`,
`config.preference_model`), shared by training and scoring.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from algorithms.base import Array, LossInputs, Metrics, Requirements, register
from algorithms.common import batch_mean
from algorithms.validation import check_number

# ---------------------------------------------------------------------------------------
# The skew-symmetric score.


def skew_operator(k: int, gates: Array | None = None) -> Array:
  """R = blockdiag(R_1..R_k), R_l = [[0, −λ_l], [λ_l, 0]]: [2k, 2k], or [..., 2k, 2k] for
  gates [..., k] (λ = 1 without gates). For tests and inspection; `gpm_scores` never builds it.
  """
  lam = jnp.ones((k,), jnp.float32) if gates is None else jnp.asarray(gates, jnp.float32)
  if lam.shape[-1] != k:
    raise ValueError(f"gates have {lam.shape[-1]} entries, expected k={k}")
  blocks = jnp.arange(k)
  r = jnp.zeros(lam.shape[:-1] + (2 * k, 2 * k), jnp.float32)
  r = r.at[..., 2 * blocks, 2 * blocks + 1].set(-lam)
  return r.at[..., 2 * blocks + 1, 2 * blocks].set(lam)


def gpm_scores(v_i: Array, v_j: Array, gates: Array | None = None) -> Array:
  """s(y_i ≻ y_j) = ⟨R v_i, v_j⟩ = Σ_l λ_l (v_i[2l] v_j[2l+1] − v_i[2l+1] v_j[2l]), float32.

  Zhang et al. 2025 (arXiv 2410.02197): the preference score of the preference embedding
  with the skew-symmetric block operator (equation number not verified). Equal to the
  official `(v_i @ R.T) · v_j` but from k pairwise products instead of a [2k, 2k] matrix.

  Args:
    v_i, v_j: [..., 2k] embeddings (broadcastable).
    gates: optional [..., k] eigenvalues λ(x) (broadcastable); None means λ = 1.

  Returns:
    [...] scores.
  """
  v_i = jnp.asarray(v_i, jnp.float32)
  v_j = jnp.asarray(v_j, jnp.float32)
  if v_i.shape[-1] != v_j.shape[-1] or v_i.shape[-1] % 2:
    raise ValueError(f"GPM embeddings need the same even last dimension 2k, got "
                     f"{v_i.shape} and {v_j.shape}")
  per_block = v_i[..., 0::2] * v_j[..., 1::2] - v_i[..., 1::2] * v_j[..., 0::2]  # [..., k]
  if gates is not None:
    per_block = per_block * jnp.asarray(gates, jnp.float32)
  return jnp.sum(per_block, axis=-1)


def gpm_score_table(values: Array, gates: Array | None = None) -> Array:
  """All ordered pairs of K responses to one prompt: [..., K, 2k] -> table [..., K, K] with
  table[..., i, j] = s(y_i ≻ y_j) (antisymmetric, zero diagonal).

  gates: [..., k], one λ(x) per prompt (the responses share it), or None.
  """
  g = None if gates is None else jnp.asarray(gates)[..., None, None, :]
  return gpm_scores(values[..., :, None, :], values[..., None, :, :], g)


def bt_score_table(rewards: Array) -> Array:
  """[..., K] scalar rewards -> [..., K, K] table r_i − r_j (the BT special case of s)."""
  rewards = jnp.asarray(rewards, jnp.float32)
  return rewards[..., :, None] - rewards[..., None, :]


def preference_nll(scores: Array, tau: float, margin: float = 0.0) -> Array:
  """Per pair −log σ((s − m)/τ): the negative log-likelihood of "chosen ≻ rejected" under
  P = σ(s/τ), shifted by a margin m (official `HighDimGeneralPreferenceLoss` /
  `PairWiseLoss` with `--margin_loss`)."""
  return -jax.nn.log_sigmoid((scores - margin) / tau)


# ---------------------------------------------------------------------------------------
# Registered losses.


def _validate_preference(cfg: Mapping) -> None:
  check_number(cfg, "preference_tau", low=0.0, low_inclusive=False)
  check_number(cfg, "preference_margin", low=0.0)


# τ = 0.1, no margin: the GPM repository's defaults [unverified for BT, whose classic form is
# τ = 1 (configs/bt_reward.py)].
PREFERENCE_DEFAULTS = {"preference_tau": 0.1, "preference_margin": 0.0}


def _head_values(inputs: LossInputs, loss_name: str) -> tuple[Array, Array]:
  if inputs.chosen_values is None or inputs.rejected_values is None:
    raise ValueError(
        f"loss {loss_name!r} needs chosen_values and rejected_values (the reward/preference "
        "head outputs) but LossInputs has None; Requirements(head=...) was not honoured")
  return (jnp.asarray(inputs.chosen_values, jnp.float32),
          jnp.asarray(inputs.rejected_values, jnp.float32))


def _pairwise_metrics(inputs: LossInputs, scores: Array, loss: Array, tau: float) -> Metrics:
  """rewards/accuracies (s > 0; a tie counts ½), rewards/margins (mean s), the mean model
  probability P(chosen ≻ rejected) = σ(s/τ), and the loss; gradients stopped."""
  s = jax.lax.stop_gradient(scores)
  mean = lambda x: batch_mean(x, inputs)
  return {
      "rewards/accuracies": mean(jnp.where(s == 0, 0.5, (s > 0).astype(jnp.float32))),
      "rewards/margins": mean(s),
      "preference/probability": mean(jax.nn.sigmoid(s / tau)),
      "loss": jax.lax.stop_gradient(loss),
  }


@register("gpm", requirements=Requirements(reference=False, head="gpm"),
          defaults=PREFERENCE_DEFAULTS, validate=_validate_preference)
def gpm(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """GPM training loss (Zhang et al. 2025, arXiv 2410.02197, the preference-embedding
  log-likelihood, equation number not verified; official `HighDimGeneralPreferenceLoss`):

      L = mean_b −log σ((s(y_w ≻ y_l | x) − m) / τ),   s from `gpm_scores`.

  Reads chosen_values / rejected_values [B, 2k] and preference_gates [B, k] or None.
  """
  chosen, rejected = _head_values(inputs, "gpm")
  scores = gpm_scores(chosen, rejected, inputs.preference_gates)  # [B]
  loss = batch_mean(preference_nll(scores, cfg.preference_tau, cfg.preference_margin), inputs)
  return loss, _pairwise_metrics(inputs, scores, loss, cfg.preference_tau)


@register("bt_reward", requirements=Requirements(reference=False, head="bt_reward"),
          defaults=PREFERENCE_DEFAULTS, validate=_validate_preference)
def bt_reward(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """Bradley-Terry reward model (Bradley & Terry 1952; the InstructGPT reward-model loss,
  Ouyang et al. 2022, Eq. 1), with the temperature τ and margin m of the GPM repository's
  `PairWiseLoss`:

      L = mean_b −log σ((r_w − r_l − m) / τ).

  Reads chosen_values / rejected_values [B, 1] (or [B]). Logs rewards/chosen and
  rewards/rejected (the mean raw rewards) besides the pairwise metrics.
  """
  chosen, rejected = _head_values(inputs, "bt_reward")
  if chosen.ndim == 2:
    if chosen.shape[-1] != 1 or rejected.shape[-1] != 1:
      raise ValueError(f"loss 'bt_reward' needs scalar rewards [B, 1], got {chosen.shape} "
                       f"and {rejected.shape}")
    chosen, rejected = chosen[:, 0], rejected[:, 0]
  scores = chosen - rejected  # [B]
  loss = batch_mean(preference_nll(scores, cfg.preference_tau, cfg.preference_margin), inputs)
  metrics = _pairwise_metrics(inputs, scores, loss, cfg.preference_tau)
  metrics["rewards/chosen"] = batch_mean(jax.lax.stop_gradient(chosen), inputs)
  metrics["rewards/rejected"] = batch_mean(jax.lax.stop_gradient(rejected), inputs)
  return loss, metrics
