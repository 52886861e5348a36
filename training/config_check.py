"""Rejects bad configs before any compute starts, with messages that name the field.

ml_collections already refuses unknown keys and wrong types on command-line overrides; this
module checks values and the relations between fields (batch vs mesh, lengths vs buckets),
with the same checks (algorithms/validation.py) as the losses' own hyperparameters.
"""

from __future__ import annotations

import math
import os

import jax

import algorithms
from algorithms.validation import ConfigError, boolean, integer, number, one_of, require
from models.config import ATTENTION_IMPLS, REMAT_MODES
from models.heads import GATE_FORMS

# config.online.prompt_order: how each rollout's prompts are drawn (training.rounds)
PROMPT_ORDERS = ("resample", "partition")


def _check_packing(config, batch_devices: int, process_count: int):
  """config.data.pack_rows (data/packing.py): the combinations the packed step supports."""
  rows = config.data.get("pack_rows", 0)
  if not rows:
    return
  require(0 < rows <= 2 * config.batch_size,
          f"config.data.pack_rows must be in [0, 2 * batch_size = {2 * config.batch_size}], "
          f"got {rows}")
  k = config.grad_accum_steps
  require(rows % (batch_devices * k) == 0 and rows % (process_count * k) == 0,
          f"config.data.pack_rows={rows} must be divisible by the mesh's data x fsdp = "
          f"{batch_devices} devices x grad_accum_steps = {k} and by the {process_count} "
          f"processes x {k} (each process's micro-batches pack into their own rows, split "
          f"evenly over the devices)")
  require(not config.model.get("share_prompt", False),
          "config.data.pack_rows and config.model.share_prompt are two layouts of the same "
          "forward; set one of them")
  require(config.model.get("logits_on", "all") == "all",
          "config.data.pack_rows projects every position (model.logits_on='all'), got "
          f"model.logits_on={config.model.logits_on!r}")


def validate(config, *, num_devices: int | None = None, process_count: int | None = None):
  """Raises ConfigError (or the algorithm's ValueError) for the first bad field found."""
  try:
    algorithm = algorithms.get_algorithm(config.loss.name)
  except KeyError as e:
    raise ConfigError(f"config.loss.name: {e.args[0]}") from None
  algorithm.validate(config.loss)
  # After the loss's own checks: a bad value there is refused before the backends start.
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count

  require(config.total_steps > 0, f"config.total_steps must be > 0, got {config.total_steps}")
  require(config.batch_size > 0, f"config.batch_size must be > 0, got {config.batch_size}")
  require(config.grad_accum_steps >= 1,
          f"config.grad_accum_steps must be >= 1, got {config.grad_accum_steps}")
  require(config.batch_size % config.grad_accum_steps == 0,
          f"config.batch_size={config.batch_size} must be divisible by "
          f"config.grad_accum_steps={config.grad_accum_steps}")

  boolean(config.mesh.get("shard_activations", False), "mesh.shard_activations")
  from training.mesh import mesh_shape  # local: keeps this module import-light
  try:
    data, fsdp, _ = mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  micro = config.batch_size // config.grad_accum_steps
  require(micro % (data * fsdp) == 0,
          f"the micro-batch of {micro} pairs (config.batch_size / config.grad_accum_steps) must "
          f"be divisible by the mesh's data x fsdp = {data * fsdp} devices")
  require(config.batch_size % process_count == 0,
          f"config.batch_size={config.batch_size} must be divisible by the {process_count} "
          "processes")
  integer(config.eval_batch_size, "eval_batch_size", low=1)
  require(config.eval_batch_size % (data * fsdp) == 0,
          f"config.eval_batch_size={config.eval_batch_size} must be a positive multiple of "
          f"data x fsdp = {data * fsdp}")

  _check_packing(config, data * fsdp, process_count)

  opt = config.optimizer
  require(opt.learning_rate >= 0, f"config.optimizer.learning_rate must be >= 0, got "
          f"{opt.learning_rate}")
  require(0 <= opt.warmup_steps <= config.total_steps,
          f"config.optimizer.warmup_steps must be in [0, total_steps={config.total_steps}], "
          f"got {opt.warmup_steps}")
  one_of(opt.decay, ("cosine", "linear", "constant"), "optimizer.decay")
  require(0 <= opt.end_lr_factor <= 1, "config.optimizer.end_lr_factor must be in [0, 1]")
  require(opt.weight_decay >= 0, "config.optimizer.weight_decay must be >= 0")
  require(0 <= opt.b1 < 1 and 0 <= opt.b2 < 1, "config.optimizer.b1/b2 must be in [0, 1)")
  require(opt.eps > 0, "config.optimizer.eps must be > 0")
  require(opt.grad_clip_norm >= 0, "config.optimizer.grad_clip_norm must be >= 0 (0 = off)")

  one_of(config.reference.mode, ("in_step", "precomputed"), "reference.mode")
  one_of(config.nonfinite, ("skip", "halt"), "nonfinite")
  one_of(config.model.dtype, ("float32", "bfloat16", "float16"), "model.dtype")
  one_of(config.model.param_dtype, ("float32", "bfloat16"), "model.param_dtype")
  one_of(config.model.remat, REMAT_MODES, "model.remat")
  # XLA:CPU has no pinned host memory apart from the device's own to offload to.
  require(config.model.remat != "offload" or jax.default_backend() != "cpu",
          "config.model.remat='offload' moves saved activations to pinned host memory, "
          "which only GPU and TPU backends have; on CPU use 'dots' or 'nothing'")
  one_of(config.model.get("attention_impl", "custom_vjp"), ATTENTION_IMPLS,
         "model.attention_impl")
  # Mosaic compiles the Pallas TPU kernel for a TPU only (elsewhere: its interpret mode).
  require(config.model.get("attention_impl") != "pallas" or jax.default_backend() == "tpu",
          "config.model.attention_impl='pallas' is the Pallas TPU flash-attention kernel, "
          f"which needs a TPU (this backend is {jax.default_backend()!r}); use 'dot_product' "
          "(cuDNN on NVIDIA GPUs), 'custom_vjp', or 'pallas_interpret' (the kernel in "
          "Pallas's interpret mode: slow, for tests)")
  one_of(config.model.get("logits_on", "all"), ("all", "completion"), "model.logits_on")
  if not config.model.init_from:
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads"):
      value = config.model[field]
      require(value > 0, f"config.model.{field} must be > 0, got {value}")
    require(config.model.num_heads % config.model.num_kv_heads == 0,
            f"config.model.num_heads={config.model.num_heads} must be a multiple of "
            f"config.model.num_kv_heads={config.model.num_kv_heads}")

  d = config.data
  require(d.max_prompt_len > 0, f"config.data.max_prompt_len must be > 0, got {d.max_prompt_len}")
  require(d.max_completion_len > 0,
          f"config.data.max_completion_len must be > 0, got {d.max_completion_len}")
  buckets = tuple(d.buckets)
  require(all(isinstance(b, int) and not isinstance(b, bool) for b in buckets),
          f"config.data.buckets must be integer lengths, got {buckets!r}")
  require(len(buckets) > 0 and all(b > 0 for b in buckets) and list(buckets) == sorted(buckets),
          f"config.data.buckets must be increasing positive lengths, got {buckets}")
  require(len(set(buckets)) == len(buckets),
          f"config.data.buckets must be strictly increasing, got {buckets}")
  require(config.log_every > 0, f"config.log_every must be > 0, got {config.log_every}")
  for field in ("eval_every", "checkpoint_every"):
    require(config[field] >= 0, f"config.{field} must be >= 0, got {config[field]}")
  require(config.keep_checkpoints >= 1,
          f"config.keep_checkpoints must be >= 1, got {config.keep_checkpoints}")

  # Checks added with docs/reliability.md: everything below would otherwise fail only
  # after data loading or model init (or with a traceback that names no field).
  longest = d.max_prompt_len + d.max_completion_len
  require(buckets[-1] >= longest,
          f"config.data.buckets: the largest bucket {buckets[-1]} is shorter than "
          f"max_prompt_len + max_completion_len = {longest}, so a sequence might not fit")
  require(config.eval_batch_size % process_count == 0,
          f"config.eval_batch_size={config.eval_batch_size} must be divisible by the "
          f"{process_count} processes")
  for field in ("learning_rate", "end_lr_factor", "weight_decay", "b1", "b2", "eps",
                "grad_clip_norm"):
    number(opt[field], f"optimizer.{field}")
  _check_allowed_changes(config)
  _check_export(config, algorithm.requirements, process_count)
  _check_data_modes(d)
  _check_data_source(config)
  _check_model_source(config)
  _check_algorithm_needs(config, algorithm.requirements)


def _check_algorithm_needs(config, needs):
  """What the algorithm's Requirements ask of the run: heads, an online round."""
  if needs.head == "gpm":
    k2 = config.preference_model.value_dim
    require(isinstance(k2, int) and k2 >= 2 and k2 % 2 == 0,
            f"config.preference_model.value_dim must be an even number >= 2 (the GPM "
            f"embedding is k 2x2 blocks), got {k2!r}")
    one_of(config.preference_model.gate_form, GATE_FORMS, "preference_model.gate_form")
  if needs.head == "bt_reward":
    pm = config.preference_model
    require(not pm.normalize and not pm.prompt_head,
            f"config.preference_model.normalize={pm.normalize!r} and prompt_head="
            f"{pm.prompt_head!r}: both are GPM options; set them to False for loss "
            f"'bt_reward'")
  if needs.online is None:
    return
  o = config.online
  require(config.reference.mode == "in_step", "config.reference.mode='precomputed' does "
          "not apply to online algorithms: each round stores its frozen models' log-probs "
          "with its rows")
  from training import oracles  # local: oracles load models, config_check must stay light
  oracles.check_oracle_config(o)
  if needs.online.rows == "groups":
    require(o.scorer == "verifier", f"config.online.scorer={o.scorer!r}: PRIME's outcome "
            "reward is the verifier's correctness; use scorer 'verifier'")
  for field in ("rounds", "rollouts_per_round", "num_prompts", "max_new_tokens",
                "eval_prompts"):
    integer(o[field], f"online.{field}", low=1)
  number(o.verifier_tau, "online.verifier_tau", low=0.0, low_inclusive=False)
  one_of(o.prompt_order, PROMPT_ORDERS, "online.prompt_order")
  require(o.num_samples >= 2, f"config.online.num_samples must be >= 2 (pairs and "
          f"leave-one-out baselines need two responses), got {o.num_samples}")
  require(o.temperature >= 0, f"config.online.temperature must be >= 0, got {o.temperature}")
  require(o.eval_temperature >= 0,
          f"config.online.eval_temperature must be >= 0, got {o.eval_temperature}")
  require(o.sft_steps >= 0, f"config.online.sft_steps must be >= 0, got {o.sft_steps}")
  require(math.isfinite(o.min_margin) and 0 <= o.min_margin < 1,
          f"config.online.min_margin must be in [0, 1) (a win-rate margin), got "
           f"{o.min_margin}")
  if needs.online.rows != "best_worst":
    for flag in ("teacher", "soft_labels", "min_margin"):
      require(not o[flag], f"config.online.{flag}={o[flag]!r} applies to best/worst pairs "
              f"(online_dpo, dno, inpo), not to loss {config.loss.name!r}")
  if o.soft_labels:
    require(config.loss.name == "dno", "config.online.soft_labels=True is DNO's soft form "
            f"(Alg. 1); loss {config.loss.name!r} reads no soft labels")
  low, high = o.accuracy_range
  require(0 <= low <= high <= 1,
          f"config.online.accuracy_range must be 0 <= low <= high <= 1, got {o.accuracy_range}")
  require(o.max_new_tokens <= config.data.max_completion_len,
          f"config.online.max_new_tokens={o.max_new_tokens} must be <= "
          f"config.data.max_completion_len={config.data.max_completion_len} (the sampled "
          "responses are batched like the data's completions)")


def _check_export(config, needs, process_count: int):
  if config.get("export", {}).get("hf_dir"):
    require(needs.head == "lm",
            f"config.export.hf_dir: a {config.loss.name!r} run trains a model with a "
            f"{needs.head} head, which has no Hugging Face causal-LM class to export to")
    require(process_count == 1,
            f"config.export.hf_dir: a run on {process_count} processes cannot write the "
            "whole model from one; export it afterwards on one host with "
            "`python -m experiments.export --workdir=... --out=...`")


def _check_allowed_changes(config):
  from training.workdir import allowed_changes, flatten  # local: keeps this module light

  fields = flatten(config.to_dict())
  for name in allowed_changes(config):
    require(any(f == name or f.startswith(name + ".") for f in fields),
            f"config.resume.allow_changes: {name!r} is not a config field (a dotted path such "
            "as loss.beta or a section such as optimizer)")


def _check_data_modes(d):
  from data import pipeline  # local: keeps this module import-light

  one_of(d.on_identical_pair, pipeline.IDENTICAL_PAIR_MODES, "data.on_identical_pair")
  one_of(d.on_long_prompt, pipeline.LONG_PROMPT_MODES, "data.on_long_prompt")


def _check_data_source(config):
  """The data path and its splits exist (a directory listing, no records read)."""
  from data import readers
  from data.errors import DataError

  d = config.data
  fraction = d.eval_fraction
  require(isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 <= fraction < 1,
          f"config.data.eval_fraction must be in [0, 1), got {fraction!r}")
  if not d.path:  # the built-in task
    for field in ("train_split", "eval_split"):
      one_of(d[field], ("train", "test", "validation"), f"data.{field} (built-in task)")
    for field in ("synthetic_train_size", "synthetic_test_size"):
      require(d[field] > 0, f"config.data.{field} must be > 0, got {d[field]}")
    require(d.synthetic_train_size >= config.batch_size,
            f"config.data.synthetic_train_size={d.synthetic_train_size} must be >= "
            f"config.batch_size={config.batch_size}")
    return
  require(os.path.exists(d.path), f"config.data.path: {d.path} does not exist")
  for field in ("train_split", "eval_split"):
    if field == "eval_split" and fraction > 0 and (
        readers.held_out_of(d.path, d.eval_split) == d.train_split):
      continue  # held out of the training split (data.tfds_builders.Holdout)
    try:
      readers.split_files(d.path, d[field])
    except DataError as e:
      raise ConfigError(f"config.data.{field}={d[field]!r}: {e}") from None


def _check_model_source(config):
  """The tokenizer and checkpoint directories hold the files their loaders open; a model
  built from the config has usable shape numbers."""
  tok = config.data.tokenizer
  if tok:
    file = tok if os.path.basename(tok) == "tokenizer.json" else os.path.join(tok, "tokenizer.json")
    require(os.path.isfile(file), f"config.data.tokenizer: {file} not found (expected a "
            "Hugging Face tokenizer directory with tokenizer.json)")
  src = config.model.init_from
  if not src:
    m = config.model
    for field in ("rms_norm_eps", "rope_theta", "max_position_embeddings"):
      require(m[field] > 0, f"config.model.{field} must be > 0, got {m[field]}")
    require(m.head_dim is None or m.head_dim > 0,
            f"config.model.head_dim must be > 0 (or None), got {m.head_dim}")
    return
  require(os.path.isdir(src), f"config.model.init_from: {src} is not a directory (expected a "
          "Hugging Face checkpoint directory with config.json and *.safetensors)")
  cfg_file = os.path.join(src, "config.json")
  require(os.path.isfile(cfg_file), f"config.model.init_from: {cfg_file} not found")
  from models.hf import INDEX_FILE, SINGLE_FILE, load_hf_config

  require(any(os.path.isfile(os.path.join(src, f)) for f in (SINGLE_FILE, INDEX_FILE)),
          f"config.model.init_from: no {SINGLE_FILE} or {INDEX_FILE} in {src}")
  try:
    load_hf_config(src)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"config.model.init_from: cannot use {cfg_file}: "
                      f"{type(e).__name__}: {e}") from None
