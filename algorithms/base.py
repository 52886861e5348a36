"""The one interface every algorithm implements.

A loss is a pure function of per-token log-probabilities:

    loss_fn(inputs: LossInputs, cfg: ConfigDict) -> (loss: scalar, metrics: dict[str, scalar])

It never calls a model and never sees an optimizer. The training loop computes exactly the
forward passes an algorithm declares in its `Requirements` and hands the results over as
`LossInputs`.

Conventions (shared with `../docs/ARCHITECTURE.md`):
  * `logp[b, t] = log π(y_t | x, y_<t)`, already aligned with the input ids: the logits at
    position t-1 score the token at position t. Position 0 carries 0 and mask 0.
  * `mask[b, t]` is 1 on completion tokens only (never on prompt or padding).
  * A sequence log-prob is the masked SUM over tokens, unless a loss says otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]


@flax.struct.dataclass
class LossInputs:
  """Per-token quantities for a batch of B preference pairs ([B, T] unless stated).

  Optional fields are None when the algorithm does not ask for them (its `Requirements`
  say which the loop fills), so that every loss keeps the same signature. Response-level
  algorithms without pairs (implicit PRM's CE objective, PRIME) use the `chosen_*` slots
  for their responses and leave the `rejected_*` ones None.
  """

  policy_chosen_logps: Array
  policy_rejected_logps: Optional[Array]
  chosen_mask: Array
  rejected_mask: Optional[Array]
  ref_chosen_logps: Optional[Array] = None
  ref_rejected_logps: Optional[Array] = None
  # [B] weight of each pair in batch means: 1 for real pairs, 0 for the filler pairs that pad
  # the last eval batch. None means all ones.
  pair_weights: Optional[Array] = None
  # [B, T] log-probs under the previous iterate π_t (DNO, INPO, GPO/SPPO; PRIME's old policy).
  prev_chosen_logps: Optional[Array] = None
  prev_rejected_logps: Optional[Array] = None
  # [B] oracle probability P(y_w ≻ y_l | x) used as a soft label (DNO's soft form).
  preference_probs: Optional[Array] = None
  # [B] per-response regression targets from an oracle (GPO's / SPPO's win-rate scores).
  chosen_scores: Optional[Array] = None
  rejected_scores: Optional[Array] = None
  # [B, T] token-level rewards (T-REG's contrastive-prompting rewards), 0 off completion.
  chosen_token_rewards: Optional[Array] = None
  rejected_token_rewards: Optional[Array] = None
  # [B, T] 1 at the last token of each reasoning step (implicit PRM / PRIME step rewards).
  chosen_step_ends: Optional[Array] = None
  rejected_step_ends: Optional[Array] = None
  # [B] outcome labels in {0, 1} (answer correct or not): implicit PRM's CE, PRIME's verifier.
  chosen_labels: Optional[Array] = None
  rejected_labels: Optional[Array] = None
  # [B, D] reward / preference head outputs at the last token (BT: D = 1; GPM: D = 2k).
  chosen_values: Optional[Array] = None
  rejected_values: Optional[Array] = None
  # [B, k] GPM's prompt-dependent eigenvalues λ(x) (prompt head), None for λ = 1.
  preference_gates: Optional[Array] = None
  # [B, T] per-token advantages (PRIME's RLOO returns, whitened), 0 off completion.
  advantages: Optional[Array] = None
  # [] what a loss averaged over the batch's completion TOKENS divides by: the pair-weighted
  # number of chosen completion tokens of the whole optimizer batch divided by the number of
  # micro-batches it is split into (gradient accumulation), so that the mean of micro-batch
  # gradients is the whole batch's. None: this batch's own count.
  chosen_token_count: Optional[Array] = None


ROUND_ROWS = ("best_worst", "gpo_targets", "groups")


@dataclasses.dataclass(frozen=True)
class OnlineRound:
  """How an online algorithm's round turns its scored samples into training rows.

  A round (experiments/iterate.py, training/rounds.py) samples K responses per prompt from
  the current policy π_t, asks an oracle, builds rows as `rows` says, trains, and the trained
  policy becomes π_{t+1}. Which frozen models the step reads is `Requirements.reference`
  (π_ref = π_0, the policy the run starts from, never moves) and
  `Requirements.previous_policy` (π_t, the policy that sampled the round: it moves every
  round); their log-probs are computed once per round and stored with the rows.

  rows:
    "best_worst"   the best and the worst of the K responses by win-rate against the others
                   (DNO-Prct, Rosset et al. 2024, Alg. 2; INPO's oracle-labelled pairs;
                   online DPO); pairs below `config.online.min_margin` dropped; with
                   `config.online.soft_labels` each pair carries DNO Alg. 1's soft label;
    "gpo_targets"  GPO / SPPO's chosen and rejected with their score or win-rate targets
                   (`algorithms.gpo.gpo_targets`);
    "groups"       every response its own row, K consecutive rows per prompt, with its
                   outcome label and PRIME's advantages (`algorithms.prime.prime_advantages`).
  prm: an implicit PRM is carried from round to round: its process rewards enter the
    advantages, and it is updated on every rollout batch with the outcome labels (PRIME,
    Cui et al. 2025, Alg. 1).
  """

  rows: str
  prm: bool = False

  def __post_init__(self):
    if self.rows not in ROUND_ROWS:
      raise ValueError(f"OnlineRound.rows must be one of {ROUND_ROWS}, got {self.rows!r}")


@dataclasses.dataclass(frozen=True)
class Requirements:
  """What the training loop must compute for an algorithm: the whole declaration.

  reference: ref_{chosen,rejected}_logps from the frozen reference policy (for an online
    algorithm: π_0, fixed for the whole run).
  previous_policy: prev_{chosen,rejected}_logps from the previous iterate π_t (online: the
    policy that sampled the round; it moves after every round).
  head: the model trained: "lm" (the policy's log-probs), "bt_reward" (a scalar reward head)
    or "gpm" (the General Preference Model's 2k-dim embedding head); for the heads the loop
    fills `chosen_values` / `rejected_values` instead of the log-prob fields.
  online: None for a fixed dataset; an `OnlineRound` when the training rows come from
    sampling the policy and scoring the samples, round after round.
  token_rewards: {chosen,rejected}_token_rewards (T-REG's contrastive prompting).
  outcome_labels: {chosen,rejected}_labels and step_ends (implicit PRM).
  unpaired: how the loss trains on unpaired records (prompt / completion / label, one
    response in the chosen_* slots with its label as `chosen_labels`): None refuses them
    (the loss needs pairs), "all" takes every response, "desirable" only those labelled
    true (data.pipeline.UNPAIRED_MODES).
  """

  reference: bool = True
  previous_policy: bool = False
  head: str = "lm"
  online: Optional[OnlineRound] = None
  token_rewards: bool = False
  outcome_labels: bool = False
  unpaired: Optional[str] = None


LossFn = Callable[[LossInputs, Mapping], tuple[Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  name: str
  loss_fn: LossFn
  requirements: Requirements
  validate: Callable[[Mapping], None]


_REGISTRY: dict[str, Algorithm] = {}


def _no_validation(cfg: Mapping) -> None:
  del cfg


def register(name: str, *, requirements: Requirements = Requirements(),
             validate: Callable[[Mapping], None] = _no_validation):
  """Decorator: makes `loss_fn` selectable as `config.loss.name = name`."""

  def wrap(loss_fn: LossFn) -> LossFn:
    if name in _REGISTRY:
      raise ValueError(f"loss {name!r} is registered twice")
    _REGISTRY[name] = Algorithm(name, loss_fn, requirements, validate)
    return loss_fn

  return wrap


def get_algorithm(name: str) -> Algorithm:
  if name not in _REGISTRY:
    raise KeyError(
        f"unknown loss {name!r}; registered losses: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def get_loss(name: str) -> LossFn:
  """The registered loss function for a config name such as 'dpo' or 'ipo'."""
  return get_algorithm(name).loss_fn


def registered_names() -> list[str]:
  return sorted(_REGISTRY)


# ---------------------------------------------------------------------------------------
# Small helpers every loss uses.


def sequence_logps(logps: Array, mask: Array) -> Array:
  """[B, T] per-token log-probs -> [B] summed over completion tokens.

  `where`, not `logps * mask`: an inf or NaN under mask 0 (a masked log-softmax, a filler row)
  must not reach the sum or its gradient.
  """
  return jnp.sum(jnp.where(mask > 0, logps, 0.0), axis=-1)


def completion_lengths(mask: Array) -> Array:
  """[B] number of completion tokens, clamped at 1 so that means never divide by zero."""
  return jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def mean_logps(logps: Array, mask: Array) -> Array:
  """[B] per-token average log-prob over completion tokens."""
  return sequence_logps(logps, mask) / completion_lengths(mask)


def weighted_token_count(mask: Array, pair_weights: Optional[Array] = None) -> Array:
  """[] Σ_b w_b Σ_t mask_bt: completion tokens of a batch, each pair counted with its weight."""
  tokens = jnp.sum(mask.astype(jnp.float32), axis=-1)
  if pair_weights is not None:
    tokens = tokens * pair_weights.astype(jnp.float32)
  return jnp.sum(tokens)


def chosen_token_count(inputs: LossInputs) -> Array:
  """[] pair-weighted count of chosen completion tokens a token mean divides by (see
  `LossInputs.chosen_token_count`), at least float32 tiny so it never divides by zero."""
  count = (weighted_token_count(inputs.chosen_mask, inputs.pair_weights)
           if inputs.chosen_token_count is None
           else inputs.chosen_token_count.astype(jnp.float32))
  return jnp.maximum(count, jnp.finfo(jnp.float32).tiny)


def batch_mean(values: Array, inputs: LossInputs) -> Array:
  """Mean of per-pair values [B] over the batch, weighted by `inputs.pair_weights`."""
  if inputs.pair_weights is None:
    return jnp.mean(values)
  w = inputs.pair_weights.astype(values.dtype)
  return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def preference_metrics(inputs: LossInputs, chosen_rewards: Array, rejected_rewards: Array,
                       chosen_logps: Array, rejected_logps: Array) -> Metrics:
  """TRL's metric names, so curves are comparable across codebases.

  All arguments are per pair ([B]): the algorithm's implicit rewards and the policy's
  sequence log-probs. Gradients are stopped. `rewards/accuracies` counts a tie as half a
  win: at step 0 the policy equals the reference, every reward is 0, and the metric reads
  0.5 (chance), where TRL's strict `>` reads 0.0. Ties are measure-zero afterwards, so
  curves match TRL's from the first update on.
  """
  sg = jax.lax.stop_gradient
  chosen_rewards, rejected_rewards = sg(chosen_rewards), sg(rejected_rewards)
  mean = lambda x: batch_mean(x, inputs)
  return {
      "rewards/chosen": mean(chosen_rewards),
      "rewards/rejected": mean(rejected_rewards),
      "rewards/accuracies": mean(
          jnp.where(chosen_rewards == rejected_rewards, 0.5,
                    (chosen_rewards > rejected_rewards).astype(jnp.float32))),
      "rewards/margins": mean(chosen_rewards - rejected_rewards),
      "logps/chosen": mean(sg(chosen_logps)),
      "logps/rejected": mean(sg(rejected_logps)),
  }


def chosen_nll(inputs: LossInputs) -> Array:
  """Token-weighted cross-entropy of the chosen completions over the batch.

  −Σ_b w_b Σ_t m_bt logπ_bt / Σ_b w_b n_b, i.e. HF `CrossEntropyLoss` over every chosen
  completion token of the batch (what the SimPO trainer's `sft_weight` term uses), with pair
  weights w. Under gradient accumulation the denominator is the whole batch's share
  (`chosen_token_count`), so micro-batch gradients average to the whole batch's.
  """
  mask = inputs.chosen_mask
  logps = jnp.where(mask > 0, inputs.policy_chosen_logps.astype(jnp.float32), 0.0)
  nll = -jnp.sum(logps, axis=-1)  # [B]
  if inputs.pair_weights is not None:
    nll = nll * inputs.pair_weights.astype(jnp.float32)
  # No completion token at all: the sum is 0 too, so the term is 0 rather than NaN.
  return jnp.sum(nll) / chosen_token_count(inputs)


def add_chosen_nll(loss: Array, metrics: Metrics, inputs: LossInputs, weight: float):
  """loss + weight · `chosen_nll` (metric `sft_loss`) when weight > 0, else loss unchanged.

  The NLL term of RPO / iterative reasoning preference optimisation (Pang et al. 2024,
  "Iterative Reasoning Preference Optimization", arXiv 2404.19733, Eq. 1; TRL's `rpo_alpha`):
  on verifiable tasks a pairwise loss alone lowers the likelihood of the chosen (correct)
  answers along with the rejected ones, and the term keeps it up.
  """
  if not weight:
    return loss, metrics
  sft = chosen_nll(inputs)
  return loss + weight * sft, dict(metrics, sft_loss=jax.lax.stop_gradient(sft))
