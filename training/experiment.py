"""Building an experiment: mesh, data, tokenizer, model, frozen reference and optimizer state.

    exp = build(config, workdir)

Everything the training loop (`training/loop.py`) and the online rounds
(`training/rounds.py`) need before their first step, made once from a config: the
`Experiment`. Also the small pieces both use: the model's shape from a config or a Hugging
Face checkpoint, parameters created directly in their shardings, the batchers, the train
step of the experiment, and `load_trained` (a finished run's model, e.g. an oracle).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

import algorithms
from data import pipeline
from data import tfds_builders
from data import tokenized_cache
from data.tokenizer import load_tokenizer
import models
from training import config_check
from training import workdir as workdir_lib
from training.checkpoint import Checkpointer
from training.mesh import make_mesh, replicated
from training.optim import learning_rate_schedule, make_optimizer
from training.step import LogpOptions, TrainState, initial_rng, make_train_step


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
  eval_batches: object  # data.EvalBatches over eval_source's tokenized pairs
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


def load_trained(workdir: str, checkpoints: str | None = None, mesh=None):
  """(config, graphdef, params) of the newest checkpoint of a finished run's workdir, e.g. a
  GPM that scores an online round (`config.online.scorer_path`); `checkpoints`: another
  checkpoint directory of the run (default WORKDIR/checkpoints).

  With `mesh`, the state is restored straight into the model's layout on it (params by the
  partition rules, Adam's moments like their params, the rest replicated): each process
  reads its own shards, which is how a run on several hosts loads a model. Without, orbax
  chooses (one host)."""
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
  if mesh is not None:
    param_sharding = _shardings(mesh, models.param_partition_specs(abstract, mesh))
    shardings = like.replace(
        params=param_sharding, opt_state=_like_params(like.opt_state, param_sharding, mesh),
        **{f: replicated(mesh) for f in ("step", "skipped_steps", "rng")})
    like = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        like, shardings)
  with Checkpointer(checkpoints or os.path.join(workdir, "checkpoints")) as ckpt:
    state = ckpt.restore(like)
  return config, graphdef, state.params


def _shardings(mesh, specs):
  return jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def tokenize_limits(config) -> pipeline.TokenizeLimits:
  """What tokenization keeps (config.data's limits and modes; the loss's Requirements say
  whether it trains on unpaired records, and whether it reads prompts alone: the online
  losses, which sample their responses)."""
  d = config.data
  needs = algorithms.get_algorithm(config.loss.name).requirements
  return pipeline.TokenizeLimits(
      max_prompt_len=d.max_prompt_len, max_completion_len=d.max_completion_len,
      on_identical_pair=d.on_identical_pair, on_long_prompt=d.on_long_prompt,
      unpaired=needs.unpaired, prompts_only=needs.online is not None)


def _this_process() -> dict:
  return dict(process_index=jax.process_index(), process_count=jax.process_count())


def make_batcher(config, pairs: pipeline.TokenizedPairs) -> pipeline.PreferenceBatcher:
  """Shuffled training batches of `pairs`; batch `s` depends on (seed, s) only."""
  return pipeline.PreferenceBatcher(pairs, batch_size=config.batch_size, seed=config.seed,
                                    buckets=tuple(config.data.buckets),
                                    pack_rows=config.data.get("pack_rows", 0),
                                    grad_accum_steps=config.grad_accum_steps,
                                    **_this_process())


def make_eval_batches(config, pairs: pipeline.TokenizedPairs) -> pipeline.EvalBatches:
  """Every pair of `pairs` once, in order, with `weight` 0 on filler rows."""
  return pipeline.EvalBatches(pairs, batch_size=config.eval_batch_size,
                              buckets=tuple(config.data.buckets), **_this_process())


def _data_dir(config, workdir: str) -> str:
  return config.data.data_dir or os.path.join(workdir, "tfds")


def _space_check(data_dir: str):
  """`check_space(needed)` for the caches under `data_dir`: refuses a disk without room."""
  return lambda needed: workdir_lib.check_free_space(data_dir, needed, "the data cache")


def _process_zero_first(load, barrier: str):
  """`load()` on every process, process 0 first: the cache it fills is written once, by
  process 0, while the others wait; then they (and process 0 again, cheaply) read it."""
  if jax.process_count() == 1:
    return load()
  if jax.process_index() == 0:
    load()
  multihost_utils.sync_global_devices(barrier)
  return load()


def load_sources(config, workdir):
  """(train, eval) random-access text sources; process 0 prepares the TFDS cache first."""
  d = config.data
  data_dir = _data_dir(config, workdir)
  if d.path:  # an eval split the path lacks is held out of its only split
    kwargs = dict(holdout=tfds_builders.Holdout(d.eval_split, d.eval_fraction, config.seed))
  else:
    kwargs = dict(num_train=d.synthetic_train_size, num_test=d.synthetic_test_size,
                  seed=config.seed)

  def load():
    return tuple(tfds_builders.load_preference_source(d.path, split, data_dir,
                                                      check_space=_space_check(data_dir),
                                                      **kwargs)
                 for split in (d.train_split, d.eval_split))

  return _process_zero_first(load, "tfds prepared")


def load_pairs(config, workdir, tokenizer, sources) -> tuple[pipeline.TokenizedPairs, ...]:
  """`sources` (from `load_sources`) tokenized, read from the tokenized cache beside them
  when an earlier run of the same data, tokenizer and limits wrote it
  (`data/tokenized_cache.py`); process 0 tokenizes and writes first."""
  data_dir, limits = _data_dir(config, workdir), tokenize_limits(config)

  def load():
    return tuple(tokenized_cache.load_tokenized(source, tokenizer, limits, data_dir,
                                                check_space=_space_check(data_dir))
                 for source in sources)

  return _process_zero_first(load, "tokenized splits prepared")


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
  # Tokenizing the eval split here too surfaces its data errors (on_identical_pair="error")
  # before any compute; the dropped / truncated pairs are logged once per split.
  train_pairs, eval_pairs = load_pairs(config, workdir, tokenizer, (train_source, eval_source))
  for split, pairs in ((config.data.train_split, train_pairs),
                       (config.data.eval_split, eval_pairs)):
    logging.info("data split %r: %s", split, pairs.stats.summary())
  # Built before any compute, too: a split with fewer usable pairs than a batch is refused.
  batcher, eval_batches = make_batcher(config, train_pairs), make_eval_batches(config, eval_pairs)

  needs = algorithm.requirements
  graphdef, params = init_params(config, mesh, needs.head)
  ref_params = None
  if (needs.reference or needs.previous_policy) and not needs.online:
    # Online rounds store their frozen models' log-probs with the rows instead.
    # A copy, not an alias: the train step donates the policy params.
    ref_params = jax.tree.map(jnp.copy, params)
  if needs.token_rewards:
    # T-REG: a pairs -> pairs step that needs the reference model, so it runs after it.
    from training.token_rewards import add_token_rewards  # local: T-REG only
    train_pairs, eval_pairs = (add_token_rewards(pairs, graphdef, ref_params, tokenizer, config)
                               for pairs in (train_pairs, eval_pairs))
    batcher = make_batcher(config, train_pairs)
    eval_batches = make_eval_batches(config, eval_pairs)
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


def activation_mesh(config, mesh):
  """The mesh the steps pin activations to (`config.mesh.shard_activations`), else None."""
  return mesh if config.mesh.get("shard_activations", False) else None


def make_train_step_for(exp: Experiment):
  """The experiment's (unjitted) train step."""
  config = exp.config
  return make_train_step(exp.graphdef, exp.algorithm, config.loss, exp.optimizer,
                         exp.schedule, grad_accum_steps=config.grad_accum_steps,
                         logps=logp_options(config,
                                            online=exp.algorithm.requirements.online is not None),
                         mesh=activation_mesh(config, exp.mesh))


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


