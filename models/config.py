"""Architecture configuration for Llama-family decoders (Llama, Qwen2, Mistral).

`ModelConfig` is a frozen (hashable) dataclass so it can live as a static
attribute on an NNX module and be used as a static argument to `jax.jit`.

It converts to and from the Hugging Face `config.json` of
`LlamaForCausalLM`, `Qwen2ForCausalLM` and `MistralForCausalLM`. Anything in a
`config.json` that would change the maths of the forward pass but that this
implementation does not support (sliding windows in use, unknown RoPE
scaling, biases other than Qwen2's q/k/v bias, non-SiLU activations, ...)
is rejected with a `ValueError` naming the field, rather than silently
producing a different model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

ARCHITECTURES = ('llama', 'qwen2', 'mistral')
REMAT_MODES = ('none', 'block')
# How the MLP and attention are differentiated: 'custom_vjp' uses the hand-written backward
# passes of models/kernels.py (faster on XLA:CPU), 'autodiff' the plain formulas.
KERNEL_IMPLS = ('custom_vjp', 'autodiff')
ROPE_SCALING_TYPES = ('llama3',)
_LLAMA3_KEYS = (
    'factor',
    'low_freq_factor',
    'high_freq_factor',
    'original_max_position_embeddings',
)

# `architecture` -> (model_type, HF class name) in config.json.
_HF_NAMES = {
    'llama': ('llama', 'LlamaForCausalLM'),
    'qwen2': ('qwen2', 'Qwen2ForCausalLM'),
    'mistral': ('mistral', 'MistralForCausalLM'),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a Llama-family decoder-only transformer.

  Attributes:
    vocab_size: V, number of token embeddings (and logits).
    hidden_size: D, width of the residual stream.
    intermediate_size: F, width of the SwiGLU MLP.
    num_layers: L, number of decoder blocks.
    num_heads: N, number of query heads.
    num_kv_heads: K, number of key/value heads (grouped-query attention;
      N must be a multiple of K).
    head_dim: H, per-head width. None -> hidden_size // num_heads.
    rms_norm_eps: epsilon inside every RMSNorm.
    rope_theta: RoPE base wavelength.
    rope_scaling: None, or a Llama-3 ('llama3') scaling dict with keys
      factor, low_freq_factor, high_freq_factor,
      original_max_position_embeddings (a 'rope_type' key is accepted).
    qkv_bias: add a bias to the q/k/v projections (Qwen2).
    tie_word_embeddings: use the input embedding as the lm_head.
    max_position_embeddings: informational (RoPE needs no table); exported.
    dtype: compute dtype ('float32', or 'bfloat16' on accelerators).
    param_dtype: storage dtype of the parameters.
    remat: 'none', or 'block' to rematerialise each decoder block in the
      backward pass (saves activation memory).
    mlp_impl, attention_impl: 'custom_vjp' (models/kernels.py) or
      'autodiff'; the same maths, only the backward pass differs.
    attention_query_blocks: causal query blocks of the custom-VJP attention
      (block i only meets keys before its end; 1 = one full block).
    architecture: 'llama' | 'qwen2' | 'mistral'; only decides the HF class
      written on export (the maths is shared).
    bos_token_id, eos_token_id, pad_token_id: carried through so a
      `config.json` round-trips; unused by the model itself.
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: dict[str, Any] | None = None
  qkv_bias: bool = False
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'
  mlp_impl: str = 'custom_vjp'
  attention_impl: str = 'custom_vjp'
  attention_query_blocks: int = 4
  architecture: str = 'llama'
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    # Frozen dataclass: normalise fields through object.__setattr__.
    if self.head_dim is None:
      if self.num_heads > 0 and self.hidden_size % self.num_heads:
        raise ValueError(
            f'hidden_size={self.hidden_size} is not divisible by '
            f'num_heads={self.num_heads}; pass head_dim explicitly.'
        )
      object.__setattr__(
          self, 'head_dim', self.hidden_size // max(self.num_heads, 1)
      )
    if isinstance(self.eos_token_id, list):
      # Lists are unhashable; Llama 3 has several eos ids.
      object.__setattr__(self, 'eos_token_id', tuple(self.eos_token_id))
    if self.rope_scaling is not None:
      object.__setattr__(
          self, 'rope_scaling', _normalise_rope_scaling(self.rope_scaling)
      )
    for name in ('dtype', 'param_dtype'):
      value = getattr(self, name)
      try:
        dt = jnp.dtype(value)
      except TypeError as e:
        raise ValueError(f'{name}={value!r} is not a dtype name.') from e
      if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f'{name}={value!r} must be a floating dtype.')
      object.__setattr__(self, name, dt.name)  # canonical string
    self._validate()

  def _validate(self):
    for name in ('vocab_size', 'hidden_size', 'intermediate_size',
                 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim',
                 'max_position_embeddings'):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'{name} must be a positive int, got {value!r}.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'num_heads={self.num_heads} must be divisible by '
          f'num_kv_heads={self.num_kv_heads} (grouped-query attention).'
      )
    if self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even for RoPE.')
    if not self.rms_norm_eps > 0:
      raise ValueError(f'rms_norm_eps must be > 0, got {self.rms_norm_eps}.')
    if not self.rope_theta > 0:
      raise ValueError(f'rope_theta must be > 0, got {self.rope_theta}.')
    if self.remat not in REMAT_MODES:
      raise ValueError(f'remat={self.remat!r} not in {REMAT_MODES}.')
    for name in ('mlp_impl', 'attention_impl'):
      if getattr(self, name) not in KERNEL_IMPLS:
        raise ValueError(
            f'{name}={getattr(self, name)!r} not in {KERNEL_IMPLS}.')
    if (not isinstance(self.attention_query_blocks, int)
        or self.attention_query_blocks < 1):
      raise ValueError('attention_query_blocks must be an int >= 1, got '
                       f'{self.attention_query_blocks!r}.')
    if self.architecture not in ARCHITECTURES:
      raise ValueError(
          f'architecture={self.architecture!r} not in {ARCHITECTURES}.'
      )

  def __hash__(self):
    # The generated hash would fail on the rope_scaling dict.
    fields = dataclasses.astuple(self)
    return hash(tuple(
        tuple(sorted(f.items())) if isinstance(f, dict) else f for f in fields
    ))

  # --------------------------------------------------------------------------
  # Convenience.

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> ModelConfig:
    """A copy with `changes` applied (head_dim stays as resolved)."""
    return dataclasses.replace(self, **changes)

  # --------------------------------------------------------------------------
  # Hugging Face config.json.

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
    """Builds a config from a HF `config.json` dict (transformers 4.x or 5.x).

    Args:
      hf: the parsed `config.json`.
      **overrides: ModelConfig fields to set on top (e.g. dtype, remat).

    Raises:
      ValueError: naming the field, for any feature that is unsupported.
    """
    model_type = hf.get('model_type')
    if model_type is None and hf.get('architectures'):
      model_type = {v[1]: k for k, v in _HF_NAMES.items()}.get(
          hf['architectures'][0])
    if model_type not in _HF_NAMES:
      raise ValueError(
          f'model_type={model_type!r} is not supported; expected one of '
          f'{ARCHITECTURES}.'
      )

    act = hf.get('hidden_act', 'silu')
    if act != 'silu':
      raise ValueError(f'hidden_act={act!r} is not supported (only "silu").')
    if hf.get('mlp_bias', False):
      raise ValueError('mlp_bias=True is not supported.')
    if model_type != 'qwen2' and hf.get('attention_bias', False):
      # Llama's attention_bias also adds an o_proj bias, which we lack.
      raise ValueError('attention_bias=True is not supported for llama.')
    if hf.get('partial_rotary_factor', 1.0) != 1.0:
      raise ValueError(
          f'partial_rotary_factor={hf["partial_rotary_factor"]} is not '
          'supported (only 1.0).'
      )
    _check_sliding_window(hf, model_type)

    rope_theta, rope_scaling = _read_rope(hf)
    num_heads = hf['num_attention_heads']
    eos = hf.get('eos_token_id')
    kwargs = dict(
        vocab_size=hf['vocab_size'],
        hidden_size=hf['hidden_size'],
        intermediate_size=hf['intermediate_size'],
        num_layers=hf['num_hidden_layers'],
        num_heads=num_heads,
        num_kv_heads=hf.get('num_key_value_heads') or num_heads,
        head_dim=hf.get('head_dim'),
        rms_norm_eps=hf.get('rms_norm_eps', 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        qkv_bias=model_type == 'qwen2',  # Qwen2 always has q/k/v bias.
        tie_word_embeddings=hf.get('tie_word_embeddings', False),
        max_position_embeddings=hf.get('max_position_embeddings', 2048),
        architecture=model_type,
        bos_token_id=hf.get('bos_token_id'),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get('pad_token_id'),
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf_dict(self, *, torch_dtype: str | None = None) -> dict[str, Any]:
    """Returns a `config.json` dict loadable by transformers 4.x and 5.x.

    Args:
      torch_dtype: dtype name of the saved weights (default: param_dtype).
    """
    if self.qkv_bias != (self.architecture == 'qwen2'):
      raise ValueError(
          f'qkv_bias={self.qkv_bias} cannot be exported as architecture='
          f'{self.architecture!r}: HF Qwen2 always has a q/k/v bias, '
          'Llama/Mistral never do.'
      )
    model_type, hf_class = _HF_NAMES[self.architecture]
    rope_params = {'rope_type': 'default', 'rope_theta': self.rope_theta}
    if self.rope_scaling is not None:
      rope_params.update(self.rope_scaling)
    eos = self.eos_token_id
    out = {
        'architectures': [hf_class],
        'model_type': model_type,
        'vocab_size': self.vocab_size,
        'hidden_size': self.hidden_size,
        'intermediate_size': self.intermediate_size,
        'num_hidden_layers': self.num_layers,
        'num_attention_heads': self.num_heads,
        'num_key_value_heads': self.num_kv_heads,
        'head_dim': self.head_dim,
        'hidden_act': 'silu',
        'rms_norm_eps': self.rms_norm_eps,
        'max_position_embeddings': self.max_position_embeddings,
        'tie_word_embeddings': self.tie_word_embeddings,
        'initializer_range': 0.02,
        'attention_dropout': 0.0,
        # transformers 4.x reads rope_theta / rope_scaling, 5.x reads
        # rope_parameters (and prefers rope_scaling when both are given, so
        # they must agree). Writing both keeps either version happy.
        'rope_theta': self.rope_theta,
        'rope_scaling': (
            None if self.rope_scaling is None else dict(self.rope_scaling)
        ),
        'rope_parameters': rope_params,
        'bos_token_id': self.bos_token_id,
        'eos_token_id': list(eos) if isinstance(eos, tuple) else eos,
        'pad_token_id': self.pad_token_id,
        'use_cache': True,
        'torch_dtype': torch_dtype or self.param_dtype,
    }
    if self.architecture == 'llama':
      out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif self.architecture == 'qwen2':
      out.update(use_sliding_window=False, sliding_window=None,
                 max_window_layers=self.num_layers)
    elif self.architecture == 'mistral':
      out.update(sliding_window=None)
    return out


# ----------------------------------------------------------------------------
# Parameter counts.


def num_params(config: ModelConfig, include_embeddings: bool = True) -> int:
  """Number of parameters of `Transformer(config)`.

  Args:
    config: the model config.
    include_embeddings: if False, leave out the input embedding and the
      lm_head matrix (i.e. `num_non_embedding_params`).
  """
  d, f, h = config.hidden_size, config.intermediate_size, config.head_dim
  n, k = config.num_heads, config.num_kv_heads
  attn = d * n * h + 2 * d * k * h + n * h * d
  if config.qkv_bias:
    attn += n * h + 2 * k * h
  mlp = 3 * d * f
  norms = 2 * d
  total = config.num_layers * (attn + mlp + norms) + d  # + final norm
  if include_embeddings:
    embed = config.vocab_size * d
    total += embed if config.tie_word_embeddings else 2 * embed
  return total


def num_non_embedding_params(config: ModelConfig) -> int:
  """All parameters minus the input embedding and the lm_head matrix."""
  return num_params(config, include_embeddings=False)


# ----------------------------------------------------------------------------
# Helpers for config.json parsing.


def _normalise_rope_scaling(rs: dict[str, Any]) -> dict[str, Any]:
  """Validates a rope_scaling dict; returns {'rope_type': 'llama3', ...}."""
  rs = dict(rs)
  rope_type = rs.pop('rope_type', None) or rs.pop('type', None)
  rs.pop('type', None)
  rs.pop('rope_theta', None)  # transformers 5 puts theta in here.
  if rope_type not in ROPE_SCALING_TYPES:
    raise ValueError(
        f'rope_scaling type {rope_type!r} is not supported; expected one of '
        f'{ROPE_SCALING_TYPES} or rope_scaling=None.'
    )
  missing = [key for key in _LLAMA3_KEYS if key not in rs]
  if missing:
    raise ValueError(f'rope_scaling (llama3) is missing keys {missing}.')
  unknown = sorted(set(rs) - set(_LLAMA3_KEYS))
  if unknown:
    raise ValueError(f'rope_scaling (llama3) has unsupported keys {unknown}.')
  out = {'rope_type': rope_type}
  out['factor'] = float(rs['factor'])
  out['low_freq_factor'] = float(rs['low_freq_factor'])
  out['high_freq_factor'] = float(rs['high_freq_factor'])
  out['original_max_position_embeddings'] = int(
      rs['original_max_position_embeddings'])
  if not out['high_freq_factor'] > out['low_freq_factor']:
    raise ValueError(
        'rope_scaling: high_freq_factor must be > low_freq_factor.')
  if not (out['factor'] > 0 and math.isfinite(out['factor'])):
    raise ValueError('rope_scaling: factor must be a positive number.')
  return out


def _read_rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
  """Reads (rope_theta, rope_scaling) from a 4.x or 5.x config.json.

  transformers 4.x: top-level `rope_theta` and `rope_scaling`.
  transformers 5.x: `rope_parameters` = {rope_type, rope_theta, ...}.
  Like transformers 5, a non-null `rope_scaling` wins over
  `rope_parameters`.
  """
  params = hf.get('rope_scaling') or hf.get('rope_parameters') or {}
  params = dict(params)
  if any(isinstance(v, dict) for v in params.values()):
    raise ValueError(
        'rope_parameters: per-layer-type RoPE parameters are not supported.')
  theta = params.pop('rope_theta', None)
  if theta is None:
    theta = (hf.get('rope_parameters') or {}).get('rope_theta')
  if theta is None:
    theta = hf.get('rope_theta', 10000.0)
  rope_type = params.get('rope_type') or params.get('type') or 'default'
  if rope_type == 'default':
    extra = sorted(set(params) - {'rope_type', 'type'})
    if extra:
      raise ValueError(
          f'rope_scaling/rope_parameters: unsupported keys {extra} for the '
          'default RoPE.'
      )
    return float(theta), None
  if rope_type not in ROPE_SCALING_TYPES:
    raise ValueError(
        f'rope_scaling: rope type {rope_type!r} is not supported; expected '
        f'"default" or one of {ROPE_SCALING_TYPES}.'
    )
  # Like transformers, fall back to max_position_embeddings.
  params.setdefault('original_max_position_embeddings',
                    hf.get('max_position_embeddings', 2048))
  return float(theta), _normalise_rope_scaling(params)


def _check_sliding_window(hf: dict[str, Any], model_type: str) -> None:
  """Rejects configs where sliding-window attention would change the maths."""
  layer_types = hf.get('layer_types') or []
  if any(t != 'full_attention' for t in layer_types):
    raise ValueError(
        f'layer_types={layer_types}: only "full_attention" layers are '
        'supported (sliding-window attention is not implemented).'
    )
  window = hf.get('sliding_window')
  if model_type == 'qwen2':
    # Qwen2 ignores sliding_window unless use_sliding_window is set, and
    # then only for layers >= max_window_layers.
    in_use = (hf.get('use_sliding_window', False) and window is not None
              and hf.get('max_window_layers', 0) < hf['num_hidden_layers'])
  else:
    # Mistral applies the window to every layer; it only matters for
    # sequences longer than the window.
    max_pos = hf.get('max_position_embeddings', 2048)
    in_use = window is not None and window < max_pos
  if in_use:
    raise ValueError(
        f'sliding_window={window} is in use (model_type={model_type!r}, '
        f'max_position_embeddings={hf.get("max_position_embeddings")}) but '
        'sliding-window attention is not implemented. If you only use '
        f'sequences of at most {window} tokens, it has no effect: set '
        '"sliding_window": null in config.json.'
    )
