"""The one train step, shared by every algorithm, and the eval step.

`train_step(state, ref_params, batch) -> (state, metrics)` is a pure function, jitted once
with explicit shardings over the mesh (pjit semantics):

  1. chosen and rejected run through the policy in ONE forward pass ([2B, T]);
  2. the reference log-probs come from the batch when precomputed, or from a forward pass of
     the frozen `ref_params` (no gradient) when the algorithm needs them in-step;
  3. the algorithm's loss (a pure function of `LossInputs`) is differentiated;
  4. with `grad_accum_steps = k` the batch is split into k micro-batches scanned in sequence,
     and their gradients are averaged (see "Gradient accumulation" below);
  5. a non-finite loss or gradient norm leaves params and optimizer state untouched and is
     counted in `state.skipped_steps` (the loop halts on it when `config.nonfinite = "halt"`);
  6. `state.rng` advances by `fold_in(rng, step)`, so the key of step s depends on (seed, s)
     only and a resumed run draws the same keys as an uninterrupted one.

Gradient accumulation: the plain average of k micro-batch gradients equals the gradient of
one batch k times larger exactly when the loss is a mean over PAIRS (micro-batches have
equal sizes): the DPO family, LD-DPO, DNO, INPO, GPO, T-REG, implicit PRM, GPM/BT. Losses
that average over the TOKENS of the whole batch (`sft`, SimPO's `sft_weight` term, PRIME's
PPO loss) divide by `LossInputs.chosen_token_count`, which the step sets to the whole batch's
pair-weighted chosen-token count / k, so their micro-batch gradients average exactly too
(tests/test_resilience.py checks every registered loss).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from algorithms import Algorithm, LossInputs
from algorithms.common import weighted_token_count
from models.partitioning import batch_sharded_activations
from training.fused_logprobs import completion_token_logps
from training.logprobs import token_logps
from training.shared_prompt import shared_prompt_token_logps

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32, number of optimizer updates applied
  params: PyTree  # nested dict of arrays (nnx.to_pure_dict of the model's params)
  opt_state: PyTree
  skipped_steps: jax.Array  # [] int32, updates skipped for non-finite loss or gradients
  # [2] uint32 raw key data (wrap with `jax.random.wrap_key_data`), advanced every step; plain
  # uint32 so that shardings, donation and checkpoints treat it like any other array. None
  # for states built without one (they simply carry no key).
  rng: jax.Array | None = None


# Folded into the seed's key so the step's stream is independent of parameter init.
_STEP_RNG_STREAM = 0x5354  # "ST"


def initial_rng(seed: int) -> jax.Array:
  """The `TrainState.rng` of step 0 for `seed`."""
  return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), _STEP_RNG_STREAM))


def advance_rng(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(rng of the next step, typed key for this step's own sampling).

  A function of (rng, step) only, so a resumed run continues the same chain; the two
  outputs come from one split, so the key a step consumes is never reused by the chain.
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
  carry, step_key = jax.random.split(key)
  return jax.random.key_data(carry), step_key


def sides(batch) -> tuple[str, ...]:
  """("chosen", "rejected") for pairs; ("chosen",) for single responses (PRIME's samples)."""
  return ("chosen", "rejected") if "rejected_ids" in batch else ("chosen",)


def _stacked(batch, key: str):
  """The `{side}_{key}` arrays of every side, stacked on the batch axis: [S*B, ...]."""
  return jnp.concatenate([batch[f"{side}_{key}"] for side in sides(batch)], axis=0)


def _unstack(x, batch):
  """Inverse of `_stacked`: (chosen part, rejected part or None)."""
  num_rows = batch["chosen_ids"].shape[0]
  return x[:num_rows], (x[num_rows:] if "rejected_ids" in batch else None)


LOGITS_ON = ("all", "completion")


def check_logits_on(logits_on: str):
  if logits_on not in LOGITS_ON:
    raise ValueError(f"config.model.logits_on must be one of {list(LOGITS_ON)}, got "
                     f"{logits_on!r}")


@dataclasses.dataclass(frozen=True)
class LogpOptions:
  """How `pair_logps` computes log-probs. None of them changes a value a loss reads.

  chunk_size: > 0 projects all positions `chunk_size` at a time (logits_on="all" only).
  logits_on: "all" projects every position; "completion" only a window of
    `max_completion_len` positions that holds each row's loss-mask tokens, with a fused
    backward (training/fused_logprobs.py).
  max_completion_len: that window (0: T − 1).
  share_prompt: pairs run their common prompt through the model once, both completions
    attending to it (training/shared_prompt.py); implies the completion window head.
    Batches without a rejected side use the options above.
  max_prompt_len: the prompt window of `share_prompt` (0: T − 1).
  """
  chunk_size: int = 0
  logits_on: str = "all"
  max_completion_len: int = 0
  share_prompt: bool = False
  max_prompt_len: int = 0

  def __post_init__(self):
    check_logits_on(self.logits_on)


def pair_logps(graphdef, params, batch, options: LogpOptions = LogpOptions()):
  """Policy log-probs for chosen and rejected in one forward: two [B, T] arrays (the second
  None for a batch of single responses), computed as `options` says (`LogpOptions`).

  The ways agree wherever the loss mask is 1. Elsewhere the windowed ones hold 0, and a row
  whose completion overruns the window (or, with `share_prompt`, a pair whose two rows do not
  share their prompt) is NaN: the step's non-finite guard then skips the update.
  """
  model = nnx.merge(graphdef, params)
  if "packed_ids" in batch:
    return _packed_logps(model, batch, options)
  ids, attention = _stacked(batch, "ids"), _stacked(batch, "attention_mask")  # [S*B, T]
  if options.share_prompt and "rejected_ids" in batch:
    logps = shared_prompt_token_logps(model, ids, attention, _stacked(batch, "loss_mask"),
                                      num_sides=2, max_prompt_len=options.max_prompt_len,
                                      max_completion_len=options.max_completion_len)
  elif options.logits_on == "completion" or options.share_prompt:
    logps = completion_token_logps(model, ids, attention, _stacked(batch, "loss_mask"),
                                   max_completion_len=options.max_completion_len)
  else:
    logps = token_logps(model, ids, attention, chunk_size=options.chunk_size)
  return _unstack(logps, batch)


def _packed_logps(model, batch, options: LogpOptions):
  """`pair_logps` of a packed batch (data/packing.py): one forward over the [R, T] packed
  rows, then each side's [B, T] log-probs gathered from them (0 where the index is −1)."""
  packed = token_logps(model, batch["packed_ids"], None, chunk_size=options.chunk_size,
                       positions=batch["packed_positions"],
                       segment_ids=batch["packed_segment_ids"]).reshape(-1)  # [R*T]

  def unpack(side):
    index = batch[f"{side}_packed_index"]  # [B, T]
    return jnp.where(index >= 0, packed[jnp.maximum(index, 0)], 0.0)

  return unpack("chosen"), (unpack("rejected") if "rejected_ids" in batch else None)


def head_values(graphdef, params, batch):
  """A reward / preference model's outputs for chosen and rejected in one forward.

  Returns (chosen values [B, D], rejected values [B, D], prompt gates [B, k] or None); the
  gates are read at the last prompt token (the token before the first completion token).
  """
  from models.heads import last_prompt_index  # local: only reward-model steps need it

  model = nnx.merge(graphdef, params)
  attention = _stacked(batch, "attention_mask")
  values, gates = model.values(
      _stacked(batch, "ids"), attention,
      prompt_last_index=last_prompt_index(attention, _stacked(batch, "loss_mask")))
  chosen, rejected = _unstack(values, batch)
  return chosen, rejected, None if gates is None else _unstack(gates, batch)[0]


def loss_targets(batch, needs) -> dict:
  """The `LossInputs.targets`: each target the algorithm declares that the batch holds, under
  the batch's own key (data/readers.py PAIR_FIELDS, TOKEN_FIELDS)."""
  targets = {name: batch[name] for name in needs.targets if name in batch}
  if needs.outcome_labels and "chosen_label" not in batch and "rejected_ids" in batch:
    # Preference pairs without labels: the chosen answer is the correct one.
    ones = jnp.ones(batch["chosen_ids"].shape[:1], jnp.float32)
    targets.update(chosen_label=ones, rejected_label=jnp.zeros_like(ones))
  return targets


def loss_inputs(graphdef, params, ref_params, batch, algorithm: Algorithm,
                logps: LogpOptions = LogpOptions()) -> LossInputs:
  """Runs exactly the forward passes `algorithm` asks for and packs their results.

  Frozen log-probs come from the batch when it carries them (`ref_*_logps`: a precomputed
  reference; `ref_*` and `prev_*_logps`: an online round, which stores π_ref's and π_t's
  log-probs with its rows, training/rounds.py); otherwise from a forward pass of the frozen
  `ref_params`, which then serves every frozen slot the algorithm asks for. `logps` says how
  `pair_logps` computes log-probs, for the policy and the frozen model alike.
  """
  needs = algorithm.requirements
  masks = dict(chosen_mask=batch["chosen_loss_mask"],
               rejected_mask=batch.get("rejected_loss_mask"),
               pair_weights=batch.get("weight"),
               chosen_token_count=batch.get("chosen_token_count"),
               targets=loss_targets(batch, needs))
  if needs.head != "lm":
    chosen, rejected, gates = head_values(graphdef, params, batch)
    return LossInputs(policy_chosen_logps=None, policy_rejected_logps=None,
                      chosen_values=chosen, rejected_values=rejected, preference_gates=gates,
                      **masks)
  policy_chosen, policy_rejected = pair_logps(graphdef, params, batch, logps)
  ref = prev = (None, None)
  if needs.reference:
    ref = _frozen_logps(graphdef, ref_params, batch, "ref", logps)
  if needs.previous_policy:
    prev = _frozen_logps(graphdef, ref_params, batch, "prev", logps)
  return LossInputs(
      policy_chosen_logps=policy_chosen,
      policy_rejected_logps=policy_rejected,
      ref_chosen_logps=ref[0],
      ref_rejected_logps=ref[1],
      prev_chosen_logps=prev[0],
      prev_rejected_logps=prev[1],
      **masks,
  )


def _frozen_logps(graphdef, params, batch, prefix: str, logps: LogpOptions):
  """[B, T] chosen and rejected log-probs of a frozen model: the batch's `{prefix}_*_logps`
  if given, else a forward of `params` without gradient."""
  if f"{prefix}_chosen_logps" in batch:
    return batch[f"{prefix}_chosen_logps"], batch.get(f"{prefix}_rejected_logps")
  if params is None:
    raise ValueError(f"the batch has no {prefix}_chosen_logps and no frozen params were given")
  return jax.lax.stop_gradient(pair_logps(graphdef, params, batch, logps))


def _update_if_finite(finite, optimizer, grads, params, opt_state):
  """`(params, opt_state)` after one optimizer update when `finite`, else unchanged.

  A `lax.cond`, not `where(finite, new, old)` over the trees: the update runs only in the
  taken branch, so the donated state is read and written in place. With the `where`, the
  parameter update and the new moments were two fusions that both read the old moments and
  one of them overwrote them, so XLA copied every donated moment at the start of the step and
  kept the copies to its end (SimPO's 8B plan on fsdp=8: 582 copies, 7.48 GiB per device;
  docs/recipes.md). The skipped branch returns its operands: a NaN in the rejected update
  never reaches the state.
  """

  def update(params, opt_state):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.lax.cond(finite, update, lambda params, opt_state: (params, opt_state),
                      params, opt_state)


def make_train_step(graphdef, algorithm: Algorithm, loss_cfg, optimizer, schedule, *,
                    grad_accum_steps: int = 1, logps: LogpOptions = LogpOptions(),
                    mesh=None):
  """Returns the (unjitted) train step; `training.loop` jits it with shardings.

  `logps`: how log-probs are computed (`LogpOptions`). `mesh`: the mesh the step is jitted
  for; the model's activations are then split over its batch axes
  (`models.partitioning.batch_sharded_activations`).
  """

  def loss_and_metrics(params, ref_params, batch):
    with batch_sharded_activations(mesh):
      inputs = loss_inputs(graphdef, params, ref_params, batch, algorithm, logps)
    return algorithm.loss_fn(inputs, loss_cfg)

  grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)

  def accumulated_grads(params, ref_params, batch):
    if grad_accum_steps == 1:
      return grad_fn(params, ref_params, batch)

    # Micro-batch k holds pairs k, k + K, k + 2K, ...: a reshape that keeps every device's
    # rows on that device, so splitting needs no communication.
    def split(x):
      x = x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:])
      return jnp.swapaxes(x, 0, 1)

    micro_batches = jax.tree.map(split, batch)
    # Token-averaged losses divide by the whole batch's share of chosen tokens, so that the
    # mean of the micro-batch gradients is the whole batch's (LossInputs.chosen_token_count).
    tokens = weighted_token_count(batch["chosen_loss_mask"], batch.get("weight"))
    micro_batches["chosen_token_count"] = jnp.full((grad_accum_steps,),
                                                   tokens / grad_accum_steps)

    def accumulate(carry, micro):
      (loss, metrics), grads = grad_fn(params, ref_params, micro)
      return jax.tree.map(jnp.add, carry, ((loss, metrics), grads)), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    rest = jax.tree.map(lambda x: x[1:], micro_batches)
    total, _ = jax.lax.scan(accumulate, grad_fn(params, ref_params, first), rest)
    return jax.tree.map(lambda x: x / grad_accum_steps, total)

  def train_step(state: TrainState, ref_params, batch):
    (loss, metrics), grads = accumulated_grads(state.params, ref_params, batch)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = _update_if_finite(finite, optimizer, grads, state.params,
                                          state.opt_state)
    rng = state.rng
    if rng is not None:
      # No algorithm samples yet; one that does takes the second key of advance_rng.
      rng, _ = advance_rng(rng, state.step)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        rng=rng,
    )
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   learning_rate=schedule(state.step), nonfinite=(~finite).astype(jnp.float32))
    return new_state, metrics

  return train_step


def make_eval_step(graphdef, algorithm: Algorithm, loss_cfg, *,
                   logps: LogpOptions = LogpOptions(), mesh=None):
  """Returns `eval_step(params, ref_params, batch) -> (weighted metric sums, weight sum)`.

  Summing both over batches and dividing gives exact split averages even when the last
  batch is padded with filler pairs of weight 0. `logps` and `mesh` as in `make_train_step`.
  """

  def eval_step(params, ref_params, batch):
    with batch_sharded_activations(mesh):
      inputs = loss_inputs(graphdef, params, ref_params, batch, algorithm, logps)
    loss, metrics = algorithm.loss_fn(inputs, loss_cfg)
    weight = jnp.sum(batch["weight"]) if "weight" in batch else jnp.float32(
        batch["chosen_ids"].shape[0])
    sums = {k: v * weight for k, v in dict(metrics, loss=loss).items()}
    return sums, weight

  return eval_step
