"""The one training loop: data -> sharded train step -> metrics, eval and checkpoints.

    summary = train(config, workdir)

Everything an algorithm needs beyond its loss is here once: building the (sharded) model,
the frozen or precomputed reference, the optimizer, the jitted step with explicit shardings,
periodic eval on the held-out split, orbax checkpoints with exact resume, SIGTERM handling,
metrics to JSONL/TensorBoard/progress bar and the PNG of the curves at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

import algorithms
from data import pipeline
from data import tfds_builders
from data.tokenizer import load_tokenizer
import models
from training import config_check
from training import online
from training.checkpoint import Checkpointer, data_position_fn
from training.mesh import batch_sharding, make_mesh, put_batch, replicated
from training.metrics import MetricsWriter, plot_curves, read_metrics
from training.optim import learning_rate_schedule, make_optimizer
from training.reference import ReferenceCache, fingerprint
from training.step import (LogpOptions, TrainState, initial_rng, make_eval_step,
                           make_train_step, pair_logps)


class NonFiniteError(FloatingPointError):
  """Raised by `config.nonfinite = "halt"` (the update of that step was not applied).

  Attributes: `step` (the update that failed, as logged in metrics.jsonl), `batch_index`
  (= step - 1, the `PreferenceBatcher.batch` index), `example_ids` of this process's rows,
  `nonfinite`, the names of the non-finite metrics (`loss` and/or `grad_norm` first), and
  `state`, the TrainState after the rejected update (params and optimizer state unchanged).
  """

  def __init__(self, step: int, example_ids: list[int], metrics: dict, state=None):
    values = {k: float(np.asarray(v)) for k, v in metrics.items() if np.size(v) == 1}
    first = [k for k in ("loss", "grad_norm") if not np.isfinite(values.get(k, 0.0))]
    self.step, self.batch_index, self.example_ids = step, step - 1, list(example_ids)
    self.state = state
    self.nonfinite = first + sorted(k for k, v in values.items()
                                    if not np.isfinite(v) and k not in first)
    shown = ", ".join(f"{k}={values[k]}" for k in self.nonfinite)
    super().__init__(
        f"non-finite {' and '.join(first) or 'metrics'} at step {step} (batch {step - 1}, "
        f"example ids {self.example_ids}): {shown}; the update was not applied and the run "
        "stopped without checkpointing this step (config.nonfinite='halt')")


@dataclasses.dataclass
class Experiment:
  """Everything `train` builds before the first step (also used by tests and the benchmark)."""

  config: object
  mesh: jax.sharding.Mesh
  algorithm: algorithms.Algorithm
  graphdef: object
  state: TrainState
  state_sharding: object
  ref_params: object  # frozen reference params, or None (precomputed / not needed)
  tokenizer: object
  train_source: object
  train_batches: object  # data.PreferenceBatcher
  eval_source: object
  eval_batches: object  # data.EvalBatches over eval_source, tokenized once
  schedule: object
  optimizer: object


def model_config(config) -> models.ModelConfig:
  """The model shape: from the checkpoint when `init_from` is set, else from the config."""
  m = config.model
  precision = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat)
  if m.init_from:
    return models.load_hf_config(m.init_from, **precision)
  fields = {f.name for f in dataclasses.fields(models.ModelConfig)}
  return models.ModelConfig(**{k: v for k, v in m.to_dict().items() if k in fields})


def _with_head(config, head: str, backbone):
  """`backbone` (a Transformer) as is for head "lm", else inside a reward / preference model."""
  if head == "lm":
    return backbone
  from models.heads import build_preference_model  # local: only reward-model runs need it
  return build_preference_model(backbone, head, config.preference_model,
                                rngs=nnx.Rngs(params=config.seed + 1))


def _new_model(config, head: str, seed: int):
  """A randomly initialised model of the config's shape, with the head `head` asks for."""
  return _with_head(config, head,
                    models.Transformer(model_config(config), rngs=nnx.Rngs(params=seed)))


def init_params(config, mesh, head: str = "lm"):
  """(graphdef, params) with params created directly in their shardings on the mesh.

  `head` ("lm", "bt_reward", "gpm": the algorithm's Requirements.head) puts a reward or
  preference head on the decoder (models/heads.py).
  """
  mcfg = model_config(config)
  if config.model.init_from:
    model = _with_head(config, head, models.from_hf(
        config.model.init_from, dtype=mcfg.dtype, param_dtype=mcfg.param_dtype,
        remat=mcfg.remat))
    graphdef, state = nnx.split(model, nnx.Param)
    specs = models.param_partition_specs(state, mesh)
    params = jax.device_put(nnx.to_pure_dict(state), _shardings(mesh, specs))
    return graphdef, params

  def create():
    return _new_model(config, head, config.seed)

  graphdef, abstract_state = nnx.split(nnx.eval_shape(create), nnx.Param)
  specs = models.param_partition_specs(abstract_state, mesh)
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.split(create(), nnx.Param)[1]),
                   out_shardings=_shardings(mesh, specs))()
  return graphdef, params


def load_trained(workdir: str):
  """(config, graphdef, params) of the newest checkpoint of a finished run's workdir, e.g. a
  GPM that scores an online round (`config.online.scorer_path`)."""
  import ml_collections

  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  head = algorithms.get_algorithm(config.loss.name).requirements.head
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _new_model(config, head, 0)), nnx.Param)
  params = nnx.to_pure_dict(abstract)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  scalar = lambda dtype, shape=(): jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
  like = TrainState(step=scalar(jnp.int32), params=params,
                    opt_state=jax.eval_shape(optimizer.init, params),
                    skipped_steps=scalar(jnp.int32), rng=scalar(jnp.uint32, (2,)))
  state = Checkpointer(os.path.join(workdir, "checkpoints")).restore(like)
  return config, graphdef, state.params


def _shardings(mesh, specs):
  return jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def _length_limits(config) -> dict:
  d = config.data
  return dict(max_prompt_len=d.max_prompt_len, max_completion_len=d.max_completion_len,
              buckets=tuple(d.buckets), process_index=jax.process_index(),
              process_count=jax.process_count(), on_identical_pair=d.on_identical_pair,
              on_long_prompt=d.on_long_prompt)


def make_batcher(config, tokenizer, source) -> pipeline.PreferenceBatcher:
  """Shuffled training batches; batch `s` depends on (seed, s) only."""
  return pipeline.PreferenceBatcher(source, tokenizer, batch_size=config.batch_size,
                                    seed=config.seed, pack_rows=config.data.get("pack_rows", 0),
                                    grad_accum_steps=config.grad_accum_steps,
                                    **_length_limits(config))


def make_eval_batches(config, tokenizer, source) -> pipeline.EvalBatches:
  """Every example of `source` once, in order, with `weight` 0 on filler rows."""
  return pipeline.eval_batches(source, tokenizer, batch_size=config.eval_batch_size,
                               **_length_limits(config))


def load_sources(config, workdir):
  """(train, eval) random-access sources; process 0 prepares the TFDS cache first."""
  d = config.data
  data_dir = d.data_dir or os.path.join(workdir, "tfds")
  kwargs = {} if d.path else dict(num_train=d.synthetic_train_size,
                                  num_test=d.synthetic_test_size, seed=config.seed)

  def load():
    return tuple(tfds_builders.load_preference_source(d.path, split, data_dir, **kwargs)
                 for split in (d.train_split, d.eval_split))

  if jax.process_count() == 1:
    return load()
  if jax.process_index() == 0:
    load()
  multihost_utils.sync_global_devices("tfds prepared")
  return load()


def build(config, workdir: str) -> Experiment:
  """Validates the config, then builds mesh, data, model, reference and optimizer state."""
  config_check.validate(config)
  algorithm = algorithms.get_algorithm(config.loss.name)
  mesh = make_mesh(config.mesh)
  tokenizer = load_tokenizer(config.data.tokenizer)
  if tokenizer.vocab_size > model_config(config).vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary "
                     f"is {model_config(config).vocab_size} (config.model.vocab_size)")
  train_source, eval_source = load_sources(config, workdir)
  batcher = make_batcher(config, tokenizer, train_source)
  # Dropped / truncated pairs are logged once per split; tokenizing the eval split here
  # also surfaces its data errors (on_identical_pair="error") before any compute.
  eval_batches = make_eval_batches(config, tokenizer, eval_source)
  eval_stats = eval_batches.stats
  for split, stats in ((config.data.train_split, batcher.stats),
                       (config.data.eval_split, eval_stats)):
    logging.info("data split %r: %s", split, stats.summary())

  needs = algorithm.requirements
  graphdef, params = init_params(config, mesh, needs.head)
  ref_params = None
  if needs.reference or needs.previous_policy:
    # A copy, not an alias: the train step donates the policy params.
    ref_params = jax.tree.map(jnp.copy, params)
  if needs.token_rewards:
    from training.token_rewards import add_token_rewards  # local: T-REG only
    for batches in (batcher, eval_batches):
      batches.pairs = add_token_rewards(batches.pairs, graphdef, ref_params, tokenizer, config)
  schedule = learning_rate_schedule(config.optimizer, config.total_steps)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  param_sharding = jax.tree.map(lambda x: x.sharding, params)
  opt_sharding = _like_params(jax.eval_shape(optimizer.init, params), param_sharding, mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_sharding)(params)
  scalar = replicated(mesh)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), scalar), params=params,
                     opt_state=opt_state,
                     skipped_steps=jax.device_put(jnp.zeros((), jnp.int32), scalar),
                     rng=jax.device_put(initial_rng(config.seed), scalar))
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  return Experiment(config, mesh, algorithm, graphdef, state, state_sharding, ref_params,
                    tokenizer, train_source, batcher, eval_source, eval_batches, schedule,
                    optimizer)


def make_train_step_for(exp: Experiment):
  """The experiment's (unjitted) train step."""
  config = exp.config
  return make_train_step(exp.graphdef, exp.algorithm, config.loss, exp.optimizer,
                         exp.schedule, grad_accum_steps=config.grad_accum_steps,
                         logps=logp_options(config, online=exp.algorithm.requirements.online))


def logp_options(config, *, online: bool = False) -> LogpOptions:
  """How the run computes log-probs (`training.step.LogpOptions`), from `config.model`.

  The completion window must hold every completion: an online round's samples are bounded
  by online.max_new_tokens, not by data.max_completion_len (the pipeline checks only their
  total length), so `online=True` widens it.
  """
  window = config.data.max_completion_len
  if online:
    window = max(window, config.online.max_new_tokens)
  m = config.model
  # .get: a run's config.json from before a knob existed still loads (load_trained).
  return LogpOptions(chunk_size=m.get("logp_chunk_size", 0), logits_on=m.get("logits_on", "all"),
                     max_completion_len=window, share_prompt=m.get("share_prompt", False),
                     max_prompt_len=config.data.max_prompt_len)


def _like_params(tree, param_sharding, mesh):
  """Shardings for an optimizer state: a leaf that mirrors a parameter (Adam's mu and nu
  hold a copy of the params tree) is sharded like it; anything else is replicated."""
  by_path = {path: sharding for path, sharding in
             jax.tree_util.tree_flatten_with_path(param_sharding)[0]}

  def pick(path, leaf):
    if leaf.ndim:
      for start in range(len(path)):
        sharding = by_path.get(tuple(path[start:]))
        if sharding is not None:
          return sharding
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree)


def _reference_cache(exp: Experiment, workdir: str) -> tuple[ReferenceCache, ReferenceCache]:
  """Computes (or loads) the reference log-probs of the train and eval splits."""
  config = exp.config
  key = fingerprint({"data": config.data.to_dict(), "model": config.model.to_dict(),
                     "seed": config.seed, "process": jax.process_index(),
                     "source": [len(exp.train_source), len(exp.eval_source)]})
  logps_fn = jax.jit(lambda p, b: pair_logps(exp.graphdef, p, b, logp_options(config)))
  caches = []
  for split, source in (("train", exp.train_source), ("eval", exp.eval_source)):
    path = os.path.join(workdir, "reference_cache", f"{split}-{key}.npz")
    if os.path.exists(path):
      caches.append(ReferenceCache.load(path))
      continue
    logging.info("precomputing reference log-probs for the %s split -> %s", split, path)
    cache = ReferenceCache.compute(
        lambda b: logps_fn(exp.ref_params, put_batch(b, exp.mesh)),
        make_eval_batches(config, exp.tokenizer, source),
        gather=_whole_batch if jax.process_count() > 1 else jax.device_get)
    cache.save(path)
    caches.append(cache)
  return caches[0], caches[1]


def _whole_batch(x):
  """This process's slice of a batch array (numpy), or a batch-sharded global array -> the
  whole global batch on this host: the processes' slices in process order."""
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(x, tiled=True)


def evaluate(exp: Experiment, eval_fn, params, ref_params, ref_cache=None) -> dict:
  """Exact averages of the loss metrics over the whole eval split."""
  totals, weight = None, 0.0
  for batch in exp.eval_batches:
    if ref_cache is not None:
      batch = ref_cache.attach(batch)
    sums, w = jax.device_get(eval_fn(params, ref_params, put_batch(batch, exp.mesh)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    weight += float(w)
  return {f"eval/{k}": float(v) / weight for k, v in totals.items()}


class _StopRequest:
  """SIGTERM/SIGINT ask the loop to checkpoint at the next step boundary and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: checkpointing at the next step boundary", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _tokens(batch) -> int:
  return int(sum(np.sum(v) for k, v in batch.items() if k.endswith("_attention_mask")))


def _train_side_model(exp: Experiment, loss_name: str, loss_cfg, opt_cfg, steps: int, params,
                      ref_params, batches):
  """`steps` plain jitted updates of a model beside the run (the SFT warm-up, PRIME's PRM):
  no checkpoints, metrics files or eval. Returns (params, per-step losses)."""
  optimizer = make_optimizer(opt_cfg, steps)
  step_fn = jax.jit(make_train_step(exp.graphdef, algorithms.get_algorithm(loss_name), loss_cfg,
                                    optimizer, learning_rate_schedule(opt_cfg, steps)))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params), skipped_steps=jnp.zeros((), jnp.int32))
  losses = []
  for step in range(steps):
    state, metrics = step_fn(state, ref_params, put_batch(batches.batch(step), exp.mesh))
    losses.append(metrics["loss"])
  return state.params, [float(x) for x in jax.device_get(losses)]


def sft_warmup(exp: Experiment) -> None:
  """`config.online.sft_steps` steps of SFT on the train split's chosen responses.

  Deterministic (same seed, data and steps give the same params), so a resumed online run
  recomputes the same SFT policy for its reference and π_t instead of storing it.
  """
  config = exp.config
  steps = config.online.sft_steps
  opt_cfg = config.optimizer.copy_and_resolve_references()
  opt_cfg.learning_rate = config.online.sft_learning_rate
  opt_cfg.warmup_steps = min(opt_cfg.warmup_steps, steps)
  params, losses = _train_side_model(exp, "sft", config.loss, opt_cfg, steps,
                                     exp.state.params, None, exp.train_batches)
  logging.info("SFT warm-up: %d steps, last loss %.4f", steps, losses[-1])
  params = jax.device_put(params, jax.tree.map(lambda x: x.sharding, exp.state.params))
  exp.state = exp.state.replace(params=params)
  exp.ref_params = jax.tree.map(jnp.copy, params)


def start_online_round(exp: Experiment, workdir: str) -> None:
  """Replaces the experiment's training batches with one online round's samples."""
  if exp.config.online.sft_steps:
    sft_warmup(exp)
  scorer = None
  if exp.config.online.scorer == "gpm":
    scorer = load_trained(exp.config.online.scorer_path)
  pairs = online.run_round(exp.algorithm.name, exp.graphdef, exp.state.params, exp.ref_params,
                           exp.train_source, exp.tokenizer, exp.config, workdir, scorer)
  exp.train_batches = make_batcher(exp.config, exp.tokenizer, pairs)
  if exp.algorithm.name == "prime":
    update_prm(exp, workdir)


def update_prm(exp: Experiment, workdir: str) -> None:
  """PRIME's online PRM update (Cui et al. 2025; the official code's `compute_ce_dpo_loss_rm`):
  the implicit PRM π_φ (the SFT policy in the first round) takes one epoch of the CE
  objective (`implicit_prm`, β = config.loss.prm_beta) on the round's responses and their
  verifier labels.

  The round's advantages were computed before this update (PRIME's `update=after`: one
  forward gives both); the updated PRM scores the next round (experiments/iterate.py, not
  built yet). Saved with its losses to WORKDIR/online/prm_round_0; skipped when present.
  """
  import orbax.checkpoint as ocp  # local: only PRIME runs save a PRM

  path = os.path.join(os.path.abspath(workdir), "online", "prm_round_0")
  if os.path.exists(path):
    return
  config = exp.config
  prm_cfg = config.loss.copy_and_resolve_references()
  prm_cfg.update(beta=config.loss.prm_beta, prm_objective="ce")
  steps = exp.train_batches.num_batches_per_epoch
  # π_φ starts as the SFT policy, which is also the PRM's frozen reference.
  params, losses = _train_side_model(exp, "implicit_prm", prm_cfg, config.optimizer, steps,
                                     exp.ref_params, exp.ref_params, exp.train_batches)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, params)
  checkpointer.wait_until_finished()
  with open(path + ".json", "w") as f:
    json.dump({"steps": steps, "beta": config.loss.prm_beta, "losses": losses}, f)
  logging.info("PRIME: PRM updated for %d steps (CE loss %.4f -> %.4f), saved to %s", steps,
               losses[0], losses[-1], path)


def evaluate_online(exp: Experiment, params) -> dict:
  """Mean verifier reward of greedy responses to held-out prompts."""
  return {"eval/verifier_reward": online.sample_accuracy(
      exp.graphdef, params, exp.eval_source, exp.tokenizer, exp.config,
      num_prompts=exp.config.online.eval_prompts)}


def _checkpoint(checkpointer: Checkpointer, writer: MetricsWriter, step: int, state, *,
                force: bool = False) -> bool:
  """Saves a due checkpoint after making metrics.jsonl durable; True if one was due.

  Order matters for resume: metrics.jsonl is truncated to the checkpoint's step on restart,
  so it must hold every step up to the checkpoint even after a machine crash (fsync first);
  lines logged after the checkpoint are rewritten by the resumed run.
  """
  if not checkpointer.is_due(step, force=force):
    return False
  writer.sync()
  checkpointer.maybe_save(step, state, force=force)
  return True


def train(config, workdir: str, *, stop_at: int | None = None) -> dict:
  """Runs (or resumes) training; returns a summary with the first and last eval metrics.

  `stop_at` ends this run after that step with a checkpoint, as a preemption would (for
  time-sliced jobs and resume tests); a later call with the same workdir continues.
  """
  exp = build(config, workdir)
  needs = exp.algorithm.requirements
  if jax.process_index() == 0:  # what the run was, for readers of the workdir (scorers too)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  if needs.online:
    start_online_round(exp, workdir)
  mesh, state = exp.mesh, exp.state
  ref_params = exp.ref_params
  train_cache = eval_cache = None
  if ref_params is not None and config.reference.mode == "precomputed":
    train_cache, eval_cache = _reference_cache(exp, workdir)
    ref_params = None  # the step never sees the reference weights
  exp.ref_params = None

  ref_sharding = None if ref_params is None else jax.tree.map(lambda x: x.sharding, ref_params)
  train_step = jax.jit(make_train_step_for(exp),
                       in_shardings=(exp.state_sharding, ref_sharding, batch_sharding(mesh)),
                       out_shardings=(exp.state_sharding, replicated(mesh)), donate_argnums=(0,))
  if needs.online:
    # Online losses need targets only a round provides (GPO's scores, PRIME's advantages):
    # held-out quality is measured by sampling instead.
    evaluate_split = lambda params: evaluate_online(exp, params)  # noqa: E731
  else:
    eval_fn = jax.jit(make_eval_step(exp.graphdef, exp.algorithm, config.loss,
                                     logps=logp_options(config)))
    evaluate_split = lambda params: evaluate(exp, eval_fn, params, ref_params,  # noqa: E731
                                             eval_cache)

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                              keep=config.keep_checkpoints, save_every=config.checkpoint_every,
                              data_position=data_position_fn(exp.train_batches))
  writer = None
  # From here on SIGTERM/SIGINT end the run cleanly (exit 0 from the CLI) at the next step
  # boundary, with a checkpoint; a restore or eval in progress finishes first.
  with _StopRequest() as stop:
    try:
      if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        logging.info("resumed from step %d", int(state.step))
      start = int(state.step)
      writer = MetricsWriter(workdir, total_steps=config.total_steps, start_step=start,
                             progress_bar=config.progress_bar)
      summary = {"start_step": start}
      if start == 0:
        writer.write(0, evaluate_split(state.params))
      writer.restart_clock(start)

      step, metrics = start, {}
      last = config.total_steps if stop_at is None else min(stop_at, config.total_steps)
      while step < last and not stop.requested:
        batch = exp.train_batches.batch(step)
        if train_cache is not None:
          batch = train_cache.attach(batch)
        state, metrics = train_step(state, ref_params, put_batch(batch, mesh))
        step += 1
        log_now = step % config.log_every == 0 or step == config.total_steps
        if log_now:  # throughput is measured on finished steps, not dispatched ones
          metrics = jax.block_until_ready(metrics)
        rates = writer.advance(step, _tokens(batch) * jax.process_count(), measure=log_now)
        if config.nonfinite == "halt" and float(metrics["nonfinite"]):
          raise NonFiniteError(step, batch["example_id"].tolist(), jax.device_get(metrics),
                               state)
        logged = {}
        if log_now:
          logged.update(jax.device_get(metrics), skipped_steps=int(state.skipped_steps), **rates)
        evaluate_now = ((config.eval_every and step % config.eval_every == 0)
                        or step == config.total_steps)
        if evaluate_now:
          logged.update(evaluate_split(state.params))
        if logged:
          writer.write(step, logged)
        if _checkpoint(checkpointer, writer, step, state, force=stop.requested) or evaluate_now:
          writer.restart_clock(step)
      _checkpoint(checkpointer, writer, step, state, force=True)
    finally:
      # Also on an exception (a halt included): an in-flight save completes instead of
      # leaving a tmp directory behind; the state of a failed step is never saved.
      checkpointer.close()
      if writer is not None:
        writer.close()
  if stop.requested:
    logging.warning("stopped on request after step %d; its checkpoint is complete", step)

  summary.update(final_step=step, stopped_early=step < config.total_steps,
                 final_metrics={k: float(np.asarray(v)) for k, v in metrics.items()},
                 skipped_steps=int(state.skipped_steps))
  if step == config.total_steps and jax.process_index() == 0:
    evals = [r for r in read_metrics(workdir) if any(k.startswith("eval/") for k in r)]
    if evals:
      summary["first_eval"] = {k: v for k, v in evals[0].items() if k.startswith("eval/")}
      summary["final_eval"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
    summary["plot"] = plot_curves(workdir)
  summary["state"] = state
  return summary
