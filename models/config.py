"""Architecture configuration of the decoder-only transformer families.

`ModelConfig` is a frozen (hashable) dataclass so it can live as a static
attribute on an NNX module and be used as a static argument to `jax.jit`.

One decoder covers Llama, Qwen2, Mistral, Qwen3, Gemma 2, Gemma 3 (text),
Phi-3 and OLMo 2: the families differ in a handful of switches (norm
placement and style, QK-norm, soft-capping, sliding-window layers, RoPE
variants, the MLP activation), each a field below. `architecture` names the
family and decides the HF class and tensor layout written on export.

It converts to and from the Hugging Face `config.json` of
`LlamaForCausalLM`, `Qwen2ForCausalLM`, `MistralForCausalLM`,
`Qwen3ForCausalLM`, `Gemma2ForCausalLM`, `Gemma3ForCausalLM`
(`gemma3_text`), `Phi3ForCausalLM` and `Olmo2ForCausalLM`. Anything in a
`config.json` that would change the maths of the forward pass but that this
implementation does not support (unknown RoPE scaling, biases other than
Qwen2's q/k/v bias, activations other than SiLU / tanh-GELU, partial
rotary embeddings, bidirectional attention, sliding windows on Llama /
OLMo 2, ...) is rejected with a `ValueError` naming the field,
rather than silently producing a different model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

ARCHITECTURES = ('llama', 'qwen2', 'mistral', 'qwen3', 'gemma2', 'gemma3_text',
                 'phi3', 'olmo2')
# What each decoder block keeps for the backward pass (models/llama.py `remat_policy`):
#   'none'     everything autodiff saves (no recomputation)
#   'block'    the block's inputs only; the rest is recomputed (`nnx.remat`, no policy)
#   'dots'     the outputs of the projection / MLP matmuls (no batch dims: not the
#              attention scores); the elementwise work is recomputed
#   'nothing'  the block's inputs only (`nothing_saveable`): the memory of 'block'
#   'offload'  'dots', but the matmul outputs wait in pinned host memory (GPU / TPU only)
REMAT_MODES = ('none', 'block', 'dots', 'nothing', 'offload')
# How the MLP and attention are differentiated: 'custom_vjp' uses the hand-written backward
# passes of models/kernels.py (faster on XLA:CPU), 'autodiff' the plain formulas.
KERNEL_IMPLS = ('custom_vjp', 'autodiff')
# Attention also runs through `jax.nn.dot_product_attention` ('dot_product': cuDNN flash
# attention on NVIDIA GPUs where it applies, XLA elsewhere; kernels.dot_product_attention),
# or the Pallas TPU flash-attention kernel ('pallas': TPU only, refused elsewhere;
# 'pallas_interpret': the same kernel in Pallas's TPU interpret mode on any backend, slow,
# for tests; kernels.pallas_attention).
ATTENTION_IMPLS = KERNEL_IMPLS + ('dot_product', 'pallas', 'pallas_interpret')
ROPE_SCALING_TYPES = ('llama3', 'linear', 'longrope')
_LLAMA3_KEYS = (
    'factor',
    'low_freq_factor',
    'high_freq_factor',
    'original_max_position_embeddings',
)
# Gated-MLP activations, by their HF names.
ACTIVATIONS = ('silu', 'gelu_pytorch_tanh')
# How an RMSNorm applies its weight w to x̂ = x / rms(x) (computed in float32):
#   'llama': cast(x̂) * w        (Llama, Qwen, Mistral, Phi-3; w starts at 1)
#   'gemma': cast(x̂ * (1 + w))  (Gemma 2/3; w starts at 0)
#   'olmo2': cast(x̂ * w)        (OLMo 2; w starts at 1)
RMS_NORM_STYLES = ('llama', 'gemma', 'olmo2')
# Where a block's norms sit (x is the residual stream):
#   'pre':      x + attn(n1(x)), then x + mlp(n2(x))              (Llama, Qwen, Phi-3)
#   'sandwich': x + n2(attn(n1(x))), then x + n4(mlp(n3(x)))      (Gemma 2/3)
#   'post':     x + n2(attn(x)), then x + n4(mlp(x))              (OLMo 2)
NORM_PLACEMENTS = ('pre', 'sandwich', 'post')
# RMSNorm of the projected queries and keys before RoPE: 'head' over each head's H
# features (one [H] weight shared by the heads: Qwen3, Gemma 3), 'projection' over all
# N·H (resp. K·H) features of the projection (OLMo 2).
QK_NORMS = ('none', 'head', 'projection')
LAYER_TYPES = ('full_attention', 'sliding_attention')

# `architecture` -> (model_type, HF class name) in config.json.
_HF_NAMES = {
    'llama': ('llama', 'LlamaForCausalLM'),
    'qwen2': ('qwen2', 'Qwen2ForCausalLM'),
    'mistral': ('mistral', 'MistralForCausalLM'),
    'qwen3': ('qwen3', 'Qwen3ForCausalLM'),
    'gemma2': ('gemma2', 'Gemma2ForCausalLM'),
    'gemma3_text': ('gemma3_text', 'Gemma3ForCausalLM'),
    'phi3': ('phi3', 'Phi3ForCausalLM'),
    'olmo2': ('olmo2', 'Olmo2ForCausalLM'),
}
_GEMMA = dict(rms_norm_style='gemma', norm_placement='sandwich', scale_embeddings=True)
# The structural switches each family fixes (fields not named keep their defaults). The
# HF classes hard-code them, so a config that differs cannot be exported as that family.
_FAMILY_FIELDS = {
    'llama': {},
    'qwen2': dict(qkv_bias=True),
    'mistral': {},
    'qwen3': dict(qk_norm='head'),
    'gemma2': _GEMMA,
    'gemma3_text': dict(_GEMMA, qk_norm='head'),
    'phi3': {},
    'olmo2': dict(rms_norm_style='olmo2', norm_placement='post', qk_norm='projection'),
}
_STRUCTURAL_DEFAULTS = dict(qkv_bias=False, rms_norm_style='llama', norm_placement='pre',
                            qk_norm='none', scale_embeddings=False)
# Values the HF config classes assume for keys a config.json leaves out.
_HF_DEFAULTS = {
    # MistralConfig's window is on unless config.json says "sliding_window": null.
    'mistral': dict(sliding_window=4096),
    'qwen2': dict(sliding_window=4096, max_window_layers=28),
    'qwen3': dict(head_dim=128, sliding_window=4096, max_window_layers=28),
    'gemma2': dict(head_dim=256, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, sliding_window=4096,
                   tie_word_embeddings=True, rope_theta=10000.0),
    'gemma3_text': dict(head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
                        tie_word_embeddings=True, rope_theta=1_000_000.0,
                        rope_local_base_freq=10_000.0),
    'phi3': dict(rms_norm_eps=1e-5),
    'olmo2': dict(rms_norm_eps=1e-5),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only transformer of one of `ARCHITECTURES`.

  The defaults are a plain Llama; each family switches on what it needs (see
  `_FAMILY_FIELDS` and `from_hf_dict`).

  Attributes:
    vocab_size: V, number of token embeddings (and logits).
    hidden_size: D, width of the residual stream.
    intermediate_size: F, width of the gated MLP.
    num_layers: L, number of decoder blocks.
    num_heads: N, number of query heads.
    num_kv_heads: K, number of key/value heads (grouped-query attention;
      N must be a multiple of K).
    head_dim: H, per-head width. None -> hidden_size // num_heads.
    rms_norm_eps: epsilon inside every RMSNorm.
    rope_theta: RoPE base wavelength (of the global layers, for Gemma 3).
    rope_scaling: None, or a normalised scaling dict with a 'rope_type' of
      'llama3' (factor, low_freq_factor, high_freq_factor,
      original_max_position_embeddings), 'linear' (factor: positions are
      divided by it) or 'longrope' (short_factor, long_factor,
      original_max_position_embeddings, optional factor and
      attention_factor; Phi-3).
    rope_local_theta: None, or the RoPE base of the sliding-window layers,
      which then use plain RoPE without rope_scaling (Gemma 3's
      rope_local_base_freq).
    qkv_bias: add a bias to the q/k/v projections (Qwen2).
    tie_word_embeddings: use the input embedding as the lm_head.
    max_position_embeddings: RoPE needs no table; exported, and it sets
      longrope's default attention factor.
    hidden_act: activation of the gated MLP, 'silu' (SwiGLU) or
      'gelu_pytorch_tanh' (GeGLU with the tanh approximation; Gemma).
    rms_norm_style: 'llama' | 'gemma' | 'olmo2' (see RMS_NORM_STYLES).
    norm_placement: 'pre' | 'sandwich' | 'post' (see NORM_PLACEMENTS).
    qk_norm: 'none' | 'head' | 'projection' (see QK_NORMS).
    scale_embeddings: multiply the embeddings by sqrt(hidden_size), rounded
      to the compute dtype (Gemma).
    query_pre_attn_scalar: None, or s with attention scores scaled by
      s^-1/2 instead of head_dim^-1/2 (Gemma).
    attn_logit_softcapping: None, or c with scores -> c·tanh(scores / c)
      before the mask and softmax (Gemma 2).
    final_logit_softcapping: None, or c with logits -> c·tanh(logits / c)
      (Gemma 2).
    sliding_window: None, or W: a token of a sliding-window layer attends to
      the keys whose position is within W - 1 before its own.
    layer_types: None (every layer sliding when sliding_window is set, as in
      Mistral and Phi-3; else every layer global), or one of LAYER_TYPES per
      layer (Gemma 2/3's interleaving, Qwen2/3's global first layers).
    dtype: compute dtype ('float32', or 'bfloat16' on accelerators).
    param_dtype: storage dtype of the parameters.
    remat: one of REMAT_MODES: what a decoder block keeps for the backward
      pass ('none'), or recomputes there to save activation memory ('block'
      and 'nothing' keep only its inputs, 'dots' its matmul outputs,
      'offload' those in host memory). The same values either way.
    mlp_impl: 'custom_vjp' (models/kernels.py) or 'autodiff'; the same
      maths, only the backward pass differs.
    attention_impl: one of ATTENTION_IMPLS: 'custom_vjp' or 'autodiff' as
      mlp_impl, 'dot_product' (`jax.nn.dot_product_attention`), 'pallas' (the
      Pallas TPU flash-attention kernel; a TPU only) or 'pallas_interpret'
      (that kernel interpreted, any backend, slow). Attention with
      attn_logit_softcapping always runs the autodiff formula (none of the
      custom kernel, `jax.nn.dot_product_attention` and the Pallas kernel
      soft-caps).
    attention_query_blocks: causal query blocks of the custom-VJP attention
      (block i only meets keys before its end; 1 = one full block).
    architecture: one of ARCHITECTURES; decides the HF class and tensor
      layout written on export (the maths is set by the fields above).
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
  rope_local_theta: float | None = None
  qkv_bias: bool = False
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  hidden_act: str = 'silu'
  rms_norm_style: str = 'llama'
  norm_placement: str = 'pre'
  qk_norm: str = 'none'
  scale_embeddings: bool = False
  query_pre_attn_scalar: float | None = None
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] | None = None
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
    if self.layer_types is not None:
      object.__setattr__(self, 'layer_types', tuple(self.layer_types))
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
    if self.rope_local_theta is not None and not self.rope_local_theta > 0:
      raise ValueError(
          f'rope_local_theta must be > 0 or None, got {self.rope_local_theta}.')
    if self.remat not in REMAT_MODES:
      raise ValueError(f'remat={self.remat!r} not in {REMAT_MODES}.')
    for name, allowed in (('mlp_impl', KERNEL_IMPLS),
                          ('attention_impl', ATTENTION_IMPLS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f'{name}={getattr(self, name)!r} not in {allowed}.')
    if (not isinstance(self.attention_query_blocks, int)
        or self.attention_query_blocks < 1):
      raise ValueError('attention_query_blocks must be an int >= 1, got '
                       f'{self.attention_query_blocks!r}.')
    if self.architecture not in ARCHITECTURES:
      raise ValueError(
          f'architecture={self.architecture!r} not in {ARCHITECTURES}.'
      )
    for name, allowed in (('hidden_act', ACTIVATIONS),
                          ('rms_norm_style', RMS_NORM_STYLES),
                          ('norm_placement', NORM_PLACEMENTS),
                          ('qk_norm', QK_NORMS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f'{name}={getattr(self, name)!r} not in {allowed}.')
    for name in ('query_pre_attn_scalar', 'attn_logit_softcapping',
                 'final_logit_softcapping'):
      value = getattr(self, name)
      if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f'{name} must be a positive number or None, got {value!r}.')
    if self.sliding_window is not None and (
        not isinstance(self.sliding_window, int) or self.sliding_window < 1):
      raise ValueError(
          f'sliding_window must be an int >= 1 or None, got {self.sliding_window!r}.')
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
            f'layer_types has {len(self.layer_types)} entries for '
            f'num_layers={self.num_layers}.')
      unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if unknown:
        raise ValueError(f'layer_types: {unknown} not in {LAYER_TYPES}.')
      if 'sliding_attention' in self.layer_types and self.sliding_window is None:
        raise ValueError('layer_types has sliding_attention layers but '
                         'sliding_window is None.')
    rs = self.rope_scaling
    if rs is not None and rs['rope_type'] == 'longrope':
      for key in ('short_factor', 'long_factor'):
        if len(rs[key]) != self.head_dim // 2:
          raise ValueError(
              f'rope_scaling (longrope): {key} has {len(rs[key])} entries, '
              f'expected head_dim // 2 = {self.head_dim // 2}.')

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

  @property
  def attention_types(self) -> tuple[str, ...]:
    """The LAYER_TYPES entry of each of the num_layers layers."""
    if self.layer_types is not None:
      return self.layer_types
    kind = 'full_attention' if self.sliding_window is None else 'sliding_attention'
    return (kind,) * self.num_layers

  @property
  def attention_scale(self) -> float:
    """The factor on q·k: query_pre_attn_scalar^-1/2, else head_dim^-1/2."""
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

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
    # Keys the file leaves out take the HF config class's default.
    hf = dict(_HF_DEFAULTS.get(model_type, {}), **hf)
    _check_unsupported(hf, model_type)

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
        tie_word_embeddings=hf.get('tie_word_embeddings', False),
        max_position_embeddings=hf.get('max_position_embeddings', 2048),
        hidden_act=_read_activation(hf, model_type),
        architecture=model_type,
        bos_token_id=hf.get('bos_token_id'),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get('pad_token_id'),
        **_FAMILY_FIELDS[model_type],
    )
    if model_type == 'gemma3_text':
      kwargs.update(_read_gemma3_rope(hf))
    else:
      kwargs['rope_theta'], kwargs['rope_scaling'] = _read_rope(hf)
    kwargs.update(_read_sliding_window(hf, model_type))
    if model_type in ('gemma2', 'gemma3_text'):
      kwargs.update(
          query_pre_attn_scalar=hf['query_pre_attn_scalar'],
          attn_logit_softcapping=hf.get('attn_logit_softcapping'),
          final_logit_softcapping=hf.get('final_logit_softcapping'))
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf_dict(self, *, torch_dtype: str | None = None) -> dict[str, Any]:
    """Returns a `config.json` dict loadable by transformers 4.x and 5.x.

    Args:
      torch_dtype: dtype name of the saved weights (default: param_dtype).

    Raises:
      ValueError: when the config's switches are not what the HF class of
        `architecture` hard-codes (the export would load as another model).
    """
    self._check_exportable()
    model_type, hf_class = _HF_NAMES[self.architecture]
    rope_params = {'rope_type': 'default', 'rope_theta': self.rope_theta}
    if self.rope_scaling is not None:
      rope_params.update(_hf_rope_scaling(self.rope_scaling))
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
        'hidden_act': self.hidden_act,
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
            None if self.rope_scaling is None
            else _hf_rope_scaling(self.rope_scaling)
        ),
        'rope_parameters': rope_params,
        'bos_token_id': self.bos_token_id,
        'eos_token_id': list(eos) if isinstance(eos, tuple) else eos,
        'pad_token_id': self.pad_token_id,
        'use_cache': True,
        'torch_dtype': torch_dtype or self.param_dtype,
    }
    layer_types = list(self.attention_types)
    if self.architecture == 'llama':
      out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif self.architecture == 'qwen2':
      out.update(_hf_qwen_window(self.sliding_window, layer_types))
    elif self.architecture == 'mistral':
      # MistralConfig has no layer_types (it warns about them and the model ignores
      # them): its window is on in every layer or in none (_check_exportable).
      sliding = 'sliding_attention' in layer_types
      out.update(sliding_window=self.sliding_window if sliding else None)
    elif self.architecture == 'qwen3':
      out.update(attention_bias=False,
                 **_hf_qwen_window(self.sliding_window, layer_types))
    elif self.architecture in ('gemma2', 'gemma3_text'):
      out.update(hidden_activation=self.hidden_act, attention_bias=False,
                 query_pre_attn_scalar=self.query_pre_attn_scalar,
                 attn_logit_softcapping=self.attn_logit_softcapping,
                 final_logit_softcapping=self.final_logit_softcapping,
                 sliding_window=self.sliding_window, layer_types=layer_types,
                 use_bidirectional_attention=False)
      if self.architecture == 'gemma3_text':
        local = {'rope_type': 'default', 'rope_theta': self.rope_local_theta}
        out.update(rope_local_base_freq=self.rope_local_theta,
                   rope_parameters={'full_attention': rope_params,
                                    'sliding_attention': local})
    elif self.architecture == 'phi3':
      rs = self.rope_scaling or {}
      out.update(sliding_window=self.sliding_window, resid_pdrop=0.0,
                 embd_pdrop=0.0, original_max_position_embeddings=rs.get(
                     'original_max_position_embeddings',
                     self.max_position_embeddings))
      out['rope_parameters']['partial_rotary_factor'] = 1.0
    elif self.architecture == 'olmo2':
      out.update(attention_bias=False)
    return out

  def _check_exportable(self):
    """Raises ValueError unless the HF class of `architecture` computes this model."""
    family = dict(_STRUCTURAL_DEFAULTS, **_FAMILY_FIELDS[self.architecture])
    for name, value in family.items():
      if getattr(self, name) != value:
        raise ValueError(
            f'{name}={getattr(self, name)!r} cannot be exported as architecture='
            f'{self.architecture!r}: its HF class has {name}={value!r}.')
    arch = self.architecture
    gemma = arch in ('gemma2', 'gemma3_text')
    checks = [
        ('query_pre_attn_scalar', self.query_pre_attn_scalar is None or gemma),
        ('attn_logit_softcapping', self.attn_logit_softcapping is None or gemma),
        ('final_logit_softcapping', self.final_logit_softcapping is None or gemma),
        ('hidden_act', self.hidden_act == 'silu' or gemma),
        ('rope_local_theta', (self.rope_local_theta is not None)
         == (arch == 'gemma3_text')),
        ('sliding_window', self.sliding_window is None
         or arch not in ('llama', 'olmo2')),
        # Mistral and Phi-3 apply their window to every layer; the others read
        # layer_types.
        ('layer_types', arch not in ('mistral', 'phi3') or self.layer_types is None
         or len(set(self.layer_types)) == 1),
    ]
    for name, ok in checks:
      if not ok:
        raise ValueError(f'{name}={getattr(self, name)!r} cannot be exported as '
                         f'architecture={arch!r} (its HF class does not support it).')
    if gemma and self.query_pre_attn_scalar is None:
      raise ValueError(f'architecture={arch!r} needs query_pre_attn_scalar.')


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
  if config.qk_norm == 'head':
    attn += 2 * h
  elif config.qk_norm == 'projection':
    attn += n * h + k * h
  mlp = 3 * d * f
  norms = {'pre': 2, 'sandwich': 4, 'post': 2}[config.norm_placement] * d
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
  """Validates a rope_scaling dict; returns it with a 'rope_type' key and typed values."""
  rs = dict(rs)
  rope_type = rs.pop('rope_type', None) or rs.pop('type', None)
  rs.pop('type', None)
  rs.pop('rope_theta', None)  # transformers 5 puts theta in here.
  if rs.get('partial_rotary_factor', 1.0) != 1.0:
    raise ValueError(
        f'partial_rotary_factor={rs["partial_rotary_factor"]} is not '
        'supported (only 1.0).')
  rs.pop('partial_rotary_factor', None)
  if rope_type not in ROPE_SCALING_TYPES:
    raise ValueError(
        f'rope_scaling type {rope_type!r} is not supported; expected one of '
        f'{ROPE_SCALING_TYPES} or rope_scaling=None.'
    )
  required, optional = {
      'llama3': (_LLAMA3_KEYS, ()),
      'linear': (('factor',), ()),
      'longrope': (('short_factor', 'long_factor',
                    'original_max_position_embeddings'),
                   ('factor', 'attention_factor')),
  }[rope_type]
  missing = [key for key in required if key not in rs]
  if missing:
    raise ValueError(f'rope_scaling ({rope_type}) is missing keys {missing}.')
  # A null optional key means "derive it", as in transformers.
  rs = {key: value for key, value in rs.items()
        if not (key in optional and value is None)}
  unknown = sorted(set(rs) - set(required) - set(optional))
  if unknown:
    raise ValueError(
        f'rope_scaling ({rope_type}) has unsupported keys {unknown}.')
  out = {'rope_type': rope_type}
  for key, value in rs.items():
    if key == 'original_max_position_embeddings':
      out[key] = int(value)
    elif key in ('short_factor', 'long_factor'):
      out[key] = tuple(float(x) for x in value)  # hashable
    else:
      out[key] = float(value)
  if rope_type == 'llama3' and not out['high_freq_factor'] > out['low_freq_factor']:
    raise ValueError(
        'rope_scaling: high_freq_factor must be > low_freq_factor.')
  if 'factor' in out and not (out['factor'] > 0 and math.isfinite(out['factor'])):
    raise ValueError('rope_scaling: factor must be a positive number.')
  return out


def _hf_rope_scaling(rs: dict[str, Any]) -> dict[str, Any]:
  """A normalised rope_scaling dict as config.json holds it (lists, not tuples)."""
  return {key: list(value) if isinstance(value, tuple) else value
          for key, value in rs.items()}


def _read_activation(hf: dict[str, Any], model_type: str) -> str:
  # Gemma's MLP reads `hidden_activation` (its configs also carry a hidden_act).
  key = 'hidden_act'
  if model_type in ('gemma2', 'gemma3_text') and hf.get('hidden_activation'):
    key = 'hidden_activation'
  act = hf.get(key) or ('gelu_pytorch_tanh' if key == 'hidden_activation' else 'silu')
  if act not in ACTIVATIONS:
    raise ValueError(f'{key}={act!r} is not supported (only {ACTIVATIONS}).')
  return act


def _check_unsupported(hf: dict[str, Any], model_type: str) -> None:
  """Rejects config.json switches the decoder does not implement, naming the field."""
  if hf.get('mlp_bias', False):
    raise ValueError('mlp_bias=True is not supported.')
  if model_type != 'qwen2' and hf.get('attention_bias', False):
    # Llama's attention_bias also adds an o_proj bias, which we lack.
    raise ValueError(f'attention_bias=True is not supported for {model_type}.')
  if hf.get('partial_rotary_factor', 1.0) != 1.0:
    raise ValueError(
        f'partial_rotary_factor={hf["partial_rotary_factor"]} is not '
        'supported (only 1.0).'
    )
  if hf.get('use_bidirectional_attention'):
    raise ValueError('use_bidirectional_attention=True is not supported (causal '
                     'decoders only).')


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
  if hf.get('model_type') == 'phi3' and rope_type in ('su', 'yarn'):
    # Old Phi-3 names of LongRoPE (transformers maps them the same way).
    params['rope_type'] = rope_type = 'longrope'
    params.pop('type', None)
  if rope_type == 'default':
    if params.get('partial_rotary_factor', 1.0) != 1.0:
      raise ValueError(
          f'partial_rotary_factor={params["partial_rotary_factor"]} is not '
          'supported (only 1.0).')
    extra = sorted(set(params) - {'rope_type', 'type', 'partial_rotary_factor'})
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
  if rope_type in ('llama3', 'longrope'):
    # Like transformers, fall back to the top-level value, then to
    # max_position_embeddings.
    params.setdefault(
        'original_max_position_embeddings',
        hf.get('original_max_position_embeddings')
        or hf.get('max_position_embeddings', 2048))
  return float(theta), _normalise_rope_scaling(params)


def _read_gemma3_rope(hf: dict[str, Any]) -> dict[str, Any]:
  """rope_theta / rope_scaling (global layers) and rope_local_theta of Gemma 3.

  transformers 5 writes `rope_parameters` keyed by layer type; 4.x wrote
  rope_theta, rope_scaling (global layers) and rope_local_base_freq.
  """
  params = hf.get('rope_parameters') or {}
  if 'full_attention' in params or 'sliding_attention' in params:
    unknown = sorted(set(params) - set(LAYER_TYPES))
    if unknown:
      raise ValueError(f'rope_parameters: unsupported layer types {unknown}.')
    global_params = dict(params.get('full_attention') or {})
    local = dict(params.get('sliding_attention') or {})
  else:
    global_params = dict(params)
    local = {}
  if hf.get('rope_scaling'):
    global_params.update(hf['rope_scaling'])
  global_params.setdefault('rope_theta', hf['rope_theta'])
  theta, scaling = _read_rope({'rope_parameters': global_params,
                               'max_position_embeddings':
                                   hf.get('max_position_embeddings')})
  local_type = local.get('rope_type') or local.get('type') or 'default'
  if local_type != 'default' or set(local) - {'rope_type', 'type', 'rope_theta'}:
    raise ValueError(
        f'rope_parameters["sliding_attention"]={local}: only the default RoPE '
        'is supported on the sliding-window layers.')
  local_theta = local.get('rope_theta') or hf['rope_local_base_freq']
  return dict(rope_theta=theta, rope_scaling=scaling,
              rope_local_theta=float(local_theta))


def _read_sliding_window(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
  """sliding_window and layer_types of a config.json (both None: no sliding layer).

  Each family reads them as its transformers 5 class does; `hf` already holds the
  class defaults (`_HF_DEFAULTS`) of the keys the file leaves out.
  """
  n = hf['num_hidden_layers']
  window = hf.get('sliding_window')
  layer_types = hf.get('layer_types')
  if model_type in ('llama', 'olmo2'):
    _check_no_sliding_window(hf, model_type)
    return {}
  if model_type == 'mistral':
    # MistralModel masks every layer with config.sliding_window whenever it is not
    # None (whatever max_position_embeddings says) and ignores layer_types.
    _check_mistral_layer_types(layer_types, window, n)
    layer_types = None
  elif model_type in ('qwen2', 'qwen3'):
    layer_types = _qwen_layer_types(hf, n)
    if not hf.get('use_sliding_window', False):
      window = None
  elif model_type == 'gemma2':
    if layer_types is None:
      layer_types = ['sliding_attention' if (i + 1) % 2 else 'full_attention'
                     for i in range(n)]
  elif model_type == 'gemma3_text':
    if layer_types is None:
      pattern = hf.get('sliding_window_pattern') or hf.get('_sliding_window_pattern') or 6
      layer_types = ['sliding_attention' if (i + 1) % pattern else 'full_attention'
                     for i in range(n)]
  elif model_type == 'phi3':
    layer_types = None  # Phi-3 applies the window to every layer.
  if window is None or (layer_types is not None
                        and 'sliding_attention' not in layer_types):
    return dict(sliding_window=None, layer_types=None)
  if not isinstance(window, int) or window < 1:
    raise ValueError(f'sliding_window={window!r} must be an int >= 1.')
  if layer_types is not None:
    if len(layer_types) != n or set(layer_types) - set(LAYER_TYPES):
      raise ValueError(f'layer_types={layer_types}: expected {n} entries of '
                       f'{LAYER_TYPES}.')
    layer_types = tuple(layer_types)
  return dict(sliding_window=window, layer_types=layer_types)


def _qwen_layer_types(hf: dict[str, Any], n: int) -> list[str] | None:
  """Qwen2 / Qwen3 layer types, derived as Qwen2Config / Qwen3Config derive them.

  The config class drops sliding_window unless use_sliding_window is set; without
  layer_types in the file, the layers >= max_window_layers are then the sliding
  ones. Explicit layer_types win over max_window_layers.
  """
  layer_types = hf.get('layer_types')
  in_use = bool(hf.get('use_sliding_window', False)) and hf.get('sliding_window') is not None
  if layer_types is None:
    if not in_use:
      return None
    first = hf['max_window_layers']
    return ['sliding_attention' if i >= first else 'full_attention' for i in range(n)]
  if 'sliding_attention' in layer_types and not in_use:
    # transformers fails on such a file when it builds the sliding mask ("Could not
    # find a `sliding_window` argument in the config").
    raise ValueError(
        f'layer_types={layer_types} has sliding_attention layers but the window is '
        f'off (use_sliding_window={hf.get("use_sliding_window", False)}, '
        f'sliding_window={hf.get("sliding_window")}).')
  return layer_types


def _check_mistral_layer_types(layer_types, window: int | None, n: int) -> None:
  """Refuses Mistral layer_types that disagree with what MistralModel computes.

  MistralConfig warns that it ignores layer_types (alternating windows are
  Ministral's): a file whose layer_types say otherwise than "the window in every
  layer" is ambiguous, so it is refused rather than read either way.
  """
  if layer_types is None:
    return
  computed = ['full_attention' if window is None else 'sliding_attention'] * n
  if list(layer_types) != computed:
    raise ValueError(
        f"layer_types={layer_types} for model_type='mistral': MistralForCausalLM "
        f'ignores layer_types and masks every layer with sliding_window={window}. '
        'Drop layer_types from config.json, or use a family that reads them.')


def _hf_qwen_window(window: int | None, layer_types: list[str]) -> dict[str, Any]:
  """use_sliding_window, sliding_window, max_window_layers and layer_types of Qwen2/3.

  Qwen2Config and Qwen3Config read layer_types when given; max_window_layers (the number of
  leading global layers) says the same for a global-then-sliding pattern, the
  only one it can express, for readers that ignore layer_types.
  """
  if 'sliding_attention' not in layer_types:
    return dict(use_sliding_window=False, sliding_window=None,
                max_window_layers=len(layer_types), layer_types=layer_types)
  return dict(use_sliding_window=True, sliding_window=window,
              max_window_layers=layer_types.index('sliding_attention'),
              layer_types=layer_types)


def _check_no_sliding_window(hf: dict[str, Any], model_type: str) -> None:
  """Rejects Llama / OLMo 2 configs that ask for sliding windows (neither has one)."""
  layer_types = hf.get('layer_types') or []
  if any(t != 'full_attention' for t in layer_types):
    raise ValueError(
        f'layer_types={layer_types}: only "full_attention" layers are '
        f'supported for model_type={model_type!r}.'
    )
