"""Rejects bad configs before any compute starts, with messages that name the field.

ml_collections already refuses unknown keys and wrong types on command-line overrides; this
module checks values and the relations between fields (batch vs mesh, lengths vs buckets).
"""

from __future__ import annotations

import jax

import algorithms


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def _require(condition: bool, message: str):
  if not condition:
    raise ConfigError(message)


def _one_of(value, choices, field):
  _require(value in choices, f"config.{field} must be one of {list(choices)}, got {value!r}")


def validate(config, *, num_devices: int | None = None, process_count: int | None = None):
  """Raises ConfigError (or the algorithm's ValueError) for the first bad field found."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count

  try:
    algorithm = algorithms.get_algorithm(config.loss.name)
  except KeyError as e:
    raise ConfigError(f"config.loss.name: {e.args[0]}") from None
  algorithm.validate(config.loss)

  _require(config.total_steps > 0, f"config.total_steps must be > 0, got {config.total_steps}")
  _require(config.batch_size > 0, f"config.batch_size must be > 0, got {config.batch_size}")
  _require(config.grad_accum_steps >= 1,
           f"config.grad_accum_steps must be >= 1, got {config.grad_accum_steps}")
  _require(config.batch_size % config.grad_accum_steps == 0,
           f"config.batch_size={config.batch_size} must be divisible by "
           f"config.grad_accum_steps={config.grad_accum_steps}")

  from training.mesh import mesh_shape  # local: keeps this module import-light
  try:
    data, fsdp, _ = mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  micro = config.batch_size // config.grad_accum_steps
  _require(micro % (data * fsdp) == 0,
           f"the micro-batch of {micro} pairs (config.batch_size / config.grad_accum_steps) must "
           f"be divisible by the mesh's data x fsdp = {data * fsdp} devices")
  _require(config.batch_size % process_count == 0,
           f"config.batch_size={config.batch_size} must be divisible by the {process_count} "
           "processes")
  _require(config.eval_batch_size > 0 and config.eval_batch_size % (data * fsdp) == 0,
           f"config.eval_batch_size={config.eval_batch_size} must be a positive multiple of "
           f"data x fsdp = {data * fsdp}")

  opt = config.optimizer
  _require(opt.learning_rate >= 0, f"config.optimizer.learning_rate must be >= 0, got "
           f"{opt.learning_rate}")
  _require(0 <= opt.warmup_steps <= config.total_steps,
           f"config.optimizer.warmup_steps must be in [0, total_steps={config.total_steps}], "
           f"got {opt.warmup_steps}")
  _one_of(opt.decay, ("cosine", "linear", "constant"), "optimizer.decay")
  _require(0 <= opt.end_lr_factor <= 1, "config.optimizer.end_lr_factor must be in [0, 1]")
  _require(opt.weight_decay >= 0, "config.optimizer.weight_decay must be >= 0")
  _require(0 <= opt.b1 < 1 and 0 <= opt.b2 < 1, "config.optimizer.b1/b2 must be in [0, 1)")
  _require(opt.eps > 0, "config.optimizer.eps must be > 0")
  _require(opt.grad_clip_norm >= 0, "config.optimizer.grad_clip_norm must be >= 0 (0 = off)")

  _one_of(config.reference.mode, ("in_step", "precomputed"), "reference.mode")
  _one_of(config.nonfinite, ("skip", "halt"), "nonfinite")
  _one_of(config.model.dtype, ("float32", "bfloat16", "float16"), "model.dtype")
  _one_of(config.model.param_dtype, ("float32", "bfloat16"), "model.param_dtype")
  _one_of(config.model.remat, ("none", "block"), "model.remat")
  if not config.model.init_from:
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads"):
      value = config.model[field]
      _require(value > 0, f"config.model.{field} must be > 0, got {value}")
    _require(config.model.num_heads % config.model.num_kv_heads == 0,
             f"config.model.num_heads={config.model.num_heads} must be a multiple of "
             f"config.model.num_kv_heads={config.model.num_kv_heads}")

  d = config.data
  _require(d.max_prompt_len > 0, f"config.data.max_prompt_len must be > 0, got {d.max_prompt_len}")
  _require(d.max_completion_len > 0,
           f"config.data.max_completion_len must be > 0, got {d.max_completion_len}")
  buckets = tuple(d.buckets)
  _require(len(buckets) > 0 and all(b > 0 for b in buckets) and list(buckets) == sorted(buckets),
           f"config.data.buckets must be increasing positive lengths, got {buckets}")
  for field in ("log_every", "eval_batch_size"):
    _require(config[field] > 0, f"config.{field} must be > 0, got {config[field]}")
  for field in ("eval_every", "checkpoint_every"):
    _require(config[field] >= 0, f"config.{field} must be >= 0, got {config[field]}")
  _require(config.keep_checkpoints >= 1,
           f"config.keep_checkpoints must be >= 1, got {config.keep_checkpoints}")
