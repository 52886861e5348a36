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
from typing import Any, Callable, Mapping, Optional

import flax.struct
import jax
import ml_collections

from algorithms.validation import check_hyperparameters

Array = jax.Array
Metrics = dict[str, Array]


# The targets a loss may read from `LossInputs.targets`, by the data layer's own names (a
# record's field, a batch's key: data/readers.py PAIR_FIELDS and TOKEN_FIELDS), with shapes.
TARGETS = {
    "preference_prob": "[B] oracle probability P(y_w ≻ y_l | x), a soft label (DNO Alg. 1)",
    "chosen_score": "[B] per-response regression target (GPO's / SPPO's score or win rate)",
    "rejected_score": "[B] the same for the rejected response",
    "chosen_label": "[B] outcome label in {0, 1} (implicit PRM's CE, PRIME's verifier)",
    "rejected_label": "[B] the same for the rejected response",
    "chosen_token_rewards": "[B, T] token rewards of the chosen response, 0 off completion "
                            "(T-REG)",
    "rejected_token_rewards": "[B, T] token rewards of the rejected response",
    "chosen_advantages": "[B, T] per-token advantages, 0 off completion (PRIME's RLOO)",
}


@flax.struct.dataclass
class LossInputs:
  """Per-token quantities for a batch of B preference pairs ([B, T] unless stated).

  A typed core that every loss may read, plus `targets`: the per-pair or per-token numbers
  that come with the data (see `TARGETS`), keyed by the data layer's names. Optional fields
  are None when the algorithm does not ask for them (its `Requirements` say which the loop
  fills), so that every loss keeps the same signature. Response-level algorithms without
  pairs (implicit PRM's CE objective, PRIME) use the `chosen_*` slots for their responses
  and leave the `rejected_*` ones None.
  """

  policy_chosen_logps: Array
  policy_rejected_logps: Optional[Array]
  chosen_mask: Array
  rejected_mask: Optional[Array]
  ref_chosen_logps: Optional[Array] = None
  ref_rejected_logps: Optional[Array] = None
  # [B, T] log-probs under the previous iterate π_t (DNO, INPO, GPO/SPPO; PRIME's old policy).
  prev_chosen_logps: Optional[Array] = None
  prev_rejected_logps: Optional[Array] = None
  # [B] weight of each pair in batch means: 1 for real pairs, 0 for the filler pairs that pad
  # the last eval batch. None means all ones.
  pair_weights: Optional[Array] = None
  # [] what a loss averaged over the batch's completion TOKENS divides by: the pair-weighted
  # number of chosen completion tokens of the whole optimizer batch divided by the number of
  # micro-batches it is split into (gradient accumulation), so that the mean of micro-batch
  # gradients is the whole batch's. None: this batch's own count.
  chosen_token_count: Optional[Array] = None
  # [B, D] reward / preference head outputs at the last token (BT: D = 1; GPM: D = 2k).
  chosen_values: Optional[Array] = None
  rejected_values: Optional[Array] = None
  # [B, k] GPM's prompt-dependent eigenvalues λ(x) (prompt head), None for λ = 1.
  preference_gates: Optional[Array] = None
  # The data's targets the algorithm declared in `Requirements.targets` and the batch holds.
  targets: Mapping[str, Array] = flax.struct.field(default_factory=dict)

  def target(self, name: str, loss: str) -> Array:
    """`targets[name]`, or a ValueError saying which loss needed it and where it comes from."""
    if name not in self.targets:
      raise ValueError(
          f"loss {loss!r} needs the target {name!r} ({TARGETS.get(name, '?')}) but LossInputs "
          f"has only {sorted(self.targets) or 'none'}; declare it in Requirements(targets=...) "
          "and give it in the data")
    return self.targets[name]

  def with_targets(self, **targets: Optional[Array]) -> "LossInputs":
    """A copy with `targets` set (by the data's names); a None value removes that target."""
    merged = {**self.targets, **targets}
    return self.replace(targets={k: v for k, v in merged.items() if v is not None})


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
  targets: the `TARGETS` the loss reads from `LossInputs.targets`; the step passes each one
    the batch holds. Two imply work before the step: "chosen_token_rewards" (T-REG's
    contrastive prompting, computed from the reference before training) and "chosen_label"
    (pairs without labels get chosen = 1, rejected = 0: the chosen answer is the correct one).
  unpaired: how the loss trains on unpaired records (prompt / completion / label, one
    response in the chosen_* slots with its label as the "chosen_label" target): None
    refuses them (the loss needs pairs), "all" takes every response, "desirable" only those
    labelled true (data.pipeline.UNPAIRED_MODES).
  """

  reference: bool = True
  previous_policy: bool = False
  head: str = "lm"
  online: Optional[OnlineRound] = None
  targets: tuple[str, ...] = ()
  unpaired: Optional[str] = None

  def __post_init__(self):
    unknown = [t for t in self.targets if t not in TARGETS]
    if unknown:
      raise ValueError(f"Requirements.targets: unknown {unknown}; the data gives "
                       f"{sorted(TARGETS)}")

  @property
  def token_rewards(self) -> bool:
    """T-REG's token rewards are computed before training."""
    return "chosen_token_rewards" in self.targets

  @property
  def outcome_labels(self) -> bool:
    """The loss reads outcome labels (pairs without them count chosen as correct)."""
    return "chosen_label" in self.targets


LossFn = Callable[[LossInputs, Mapping], tuple[Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A registered loss: its function, what the loop computes for it, its hyperparameters
  (`config.loss` is built from `defaults`) and their checks."""

  name: str
  loss_fn: LossFn
  requirements: Requirements
  check_values: Callable[[Mapping], None]
  defaults: Mapping[str, Any]

  def validate(self, cfg: Mapping) -> None:
    """Raises ConfigError for a key of `cfg` that is not this loss's, a missing one, or a
    bad value (algorithms/validation.py)."""
    check_hyperparameters(cfg, self.defaults)
    self.check_values(cfg)

  def loss_config(self, **overrides) -> ml_collections.ConfigDict:
    """`config.loss` for this loss: `name`, the defaults, then `overrides` (known keys only)."""
    unknown = sorted(set(overrides) - set(self.defaults))
    if unknown:
      raise KeyError(f"loss {self.name!r} has no hyperparameter {unknown[0]!r}; its "
                     f"hyperparameters: {', '.join(sorted(self.defaults)) or 'none'}")
    return ml_collections.ConfigDict({"name": self.name, **self.defaults, **overrides})


_REGISTRY: dict[str, Algorithm] = {}


def _no_validation(cfg: Mapping) -> None:
  del cfg


def register(name: str, *, requirements: Requirements = Requirements(),
             defaults: Optional[Mapping[str, Any]] = None,
             validate: Callable[[Mapping], None] = _no_validation):
  """Decorator: makes `loss_fn` selectable as `config.loss.name = name`.

  `defaults` are the loss's hyperparameters, each with its default value (the paper's or
  TRL's); a config's `config.loss` holds exactly these keys and `name`. `validate(cfg)`
  raises on a bad value of one of them (algorithms/validation.py).
  """

  def wrap(loss_fn: LossFn) -> LossFn:
    if name in _REGISTRY:
      raise ValueError(f"loss {name!r} is registered twice")
    if "name" in (defaults or {}):
      raise ValueError(f"loss {name!r}: 'name' is not a hyperparameter")
    _REGISTRY[name] = Algorithm(name, loss_fn, requirements, validate, dict(defaults or {}))
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


def loss_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.loss` for the registered loss `name`: its defaults, then `overrides`."""
  return get_algorithm(name).loss_config(**overrides)


def registered_names() -> list[str]:
  return sorted(_REGISTRY)
