"""The decoder-only transformer of every supported family, in Flax NNX.

One module covers Llama (1/2/3, with Llama-3 RoPE scaling), Qwen2 (q/k/v
bias, tied embeddings), Mistral, Qwen3 (QK-norm), Gemma 2 and Gemma 3
(sandwich norms, (1 + w) RMSNorm, scaled embeddings, GeGLU, soft-capping,
interleaved sliding-window / global layers, local / global RoPE bases),
Phi-3 (LongRoPE, sliding windows) and OLMo 2 (post-norms, QK-norm over the
whole projection): RMSNorm, rotary position embeddings (HF "rotate-half"
convention), grouped-query attention and a gated MLP; `ModelConfig` holds
the switches.

References: Llama 2/3 (Touvron et al. 2023, arXiv 2307.09288; Grattafiori
et al. 2024, arXiv 2407.21783), Qwen3 technical report (arXiv 2505.09388),
Gemma 2 (Gemma Team 2024, arXiv 2408.00118), Gemma 3 technical report
(arXiv 2503.19786), Phi-3 technical report (arXiv 2404.14219) and LongRoPE
(Ding et al. 2024, arXiv 2402.13753), OLMo 2 (arXiv 2501.00656).

Shape letters used in names and comments:
  B batch, T query length, S key length (= T, or the KV-cache length when
  decoding), D hidden_size,
  F intermediate_size, V vocab_size, N num_heads, K num_kv_heads,
  G = N // K query heads per kv head, H head_dim.

Parameter layouts (and their logical axes, see `models/partitioning.py`):
  embedding               [V, D]     ('vocab', 'embed')
  layers[i].attn.q_proj   [D, N, H]  ('embed', 'heads', 'head_dim')
  layers[i].attn.k_proj   [D, K, H]  ('embed', 'kv_heads', 'head_dim')
  layers[i].attn.v_proj   [D, K, H]  ('embed', 'kv_heads', 'head_dim')
  layers[i].attn.q_bias   [N, H]     ('heads', 'head_dim')      (qkv_bias)
  layers[i].attn.k_bias   [K, H]     ('kv_heads', 'head_dim')   (qkv_bias)
  layers[i].attn.v_bias   [K, H]     ('kv_heads', 'head_dim')   (qkv_bias)
  layers[i].attn.q_norm   [H] ('head_dim',) or [N, H]           (qk_norm)
  layers[i].attn.k_norm   [H] ('head_dim',) or [K, H]           (qk_norm)
  layers[i].attn.o_proj   [N, H, D]  ('heads', 'head_dim', 'embed')
  layers[i].mlp.gate_proj [D, F]     ('embed', 'mlp')
  layers[i].mlp.up_proj   [D, F]     ('embed', 'mlp')
  layers[i].mlp.down_proj [F, D]     ('mlp', 'embed')
  *_norm.scale            [D]        ('norm',)
  lm_head                 [D, V]     ('embed', 'vocab')   (untied only)

A block's norms are named by role: `input_norm` before attention,
`attn_out_norm` on the attention output, `post_attn_norm` before the MLP
(HF Llama's post_attention_layernorm, Gemma's pre_feedforward_layernorm),
`mlp_out_norm` on the MLP output; `norm_placement` decides which exist.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import kernels
from models.config import ModelConfig
from models.partitioning import constrain_batch, gather_after

_INIT_STD = 0.02  # HF initializer_range.


def _param(rngs: nnx.Rngs, shape, dtype, logical_axes) -> nnx.Param:
  """A normal(0, 0.02) parameter, as HF initialises Linear/Embedding."""
  init = nnx.initializers.normal(_INIT_STD)
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=logical_axes)


class RMSNorm(nnx.Module):
  """RMSNorm with a learned weight, normalising in float32 like HF.

  Normalises over the weight's axes (the last one, or the last two for
  OLMo 2's norm over a whole [N, H] projection); `config.rms_norm_style`
  decides how the weight is applied (see models/config.py).
  """

  def __init__(self, config: ModelConfig, shape: tuple[int, ...] | None = None,
               logical_axes: tuple[str, ...] = ('norm',)):
    shape = shape or (config.hidden_size,)
    self.eps = config.rms_norm_eps
    self.dtype = config.compute_dtype
    self.style = config.rms_norm_style
    self.axes = tuple(range(-len(shape), 0))
    # Gemma stores w with the norm computing (1 + w): w starts at 0.
    init = jnp.zeros if self.style == 'gemma' else jnp.ones
    self.scale = nnx.Param(init(shape, config.params_dtype),
                           logical_axes=logical_axes)

  def __call__(self, x):  # [..., D] -> [..., D] compute dtype
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=self.axes, keepdims=True)
    normed = x32 * jax.lax.rsqrt(var + self.eps)
    if self.style == 'llama':
      # HF Llama casts back to the input dtype *before* the scale multiply.
      return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)
    # Gemma and OLMo 2 multiply in float32, then cast.
    w = self.scale[...].astype(jnp.float32)
    if self.style == 'gemma':
      w = 1.0 + w
    return (normed * w).astype(self.dtype)


# ----------------------------------------------------------------------------
# Rotary position embeddings.


def _plain_inv_freq(theta: float, h: int) -> jax.Array:
  return 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))


def rope_inv_freq(config: ModelConfig, layer_type: str = 'full_attention',
                  long_context: bool = False) -> jax.Array:
  """Inverse frequencies [H // 2] float32 of `layer_type` layers.

  Sliding-window layers with `rope_local_theta` (Gemma 3) use plain RoPE of
  that base; other layers use `rope_theta` and `rope_scaling`. For LongRoPE,
  `long_context` picks the long factors (see `rope_cos_sin_for`).
  """
  h = config.head_dim
  if layer_type == 'sliding_attention' and config.rope_local_theta is not None:
    return _plain_inv_freq(config.rope_local_theta, h)
  rs = config.rope_scaling
  if rs is not None and rs['rope_type'] == 'longrope':
    # LongRoPE (Ding et al. 2024): one rescale factor per frequency, searched
    # separately for short and long contexts.
    factors = jnp.asarray(rs['long_factor' if long_context else 'short_factor'],
                          jnp.float32)
    exponents = jnp.arange(0, h, 2, dtype=jnp.float32) / h
    return 1.0 / (factors * config.rope_theta ** exponents)
  inv_freq = _plain_inv_freq(config.rope_theta, h)
  if rs is None:
    return inv_freq
  if rs['rope_type'] == 'linear':
    # Position interpolation (Chen et al. 2023, arXiv 2306.15595): positions / factor.
    return inv_freq / rs['factor']
  # Llama 3.1: keep high frequencies, divide low frequencies by `factor`,
  # and interpolate smoothly in between (wavelength measured in tokens).
  factor = rs['factor']
  low, high = rs['low_freq_factor'], rs['high_freq_factor']
  old_len = rs['original_max_position_embeddings']
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return jnp.where(is_medium, smoothed, scaled)


def rope_attention_factor(config: ModelConfig, layer_type: str = 'full_attention') -> float:
  """The factor on cos and sin: 1, except LongRoPE's sqrt(1 + ln s / ln L).

  s = factor, or max_position_embeddings / original_max_position_embeddings
  when the config gives none; L = original_max_position_embeddings (Phi-3
  technical report; transformers' `_compute_longrope_parameters`).
  """
  rs = config.rope_scaling
  if (rs is None or rs['rope_type'] != 'longrope'
      or (layer_type == 'sliding_attention' and config.rope_local_theta is not None)):
    return 1.0
  if 'attention_factor' in rs:
    return rs['attention_factor']
  original = rs['original_max_position_embeddings']
  factor = rs.get('factor', config.max_position_embeddings / original)
  if factor <= 1.0:
    return 1.0
  return math.sqrt(1 + math.log(factor) / math.log(original))


def rope_cos_sin(positions, inv_freq):
  """positions [B, T] int -> (cos, sin), each [B, T, H] float32."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  # HF convention: the two halves of the head share frequencies.
  angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, H]
  return jnp.cos(angles), jnp.sin(angles)


def rope_cos_sin_table(positions, inv_freq, num_positions: int):
  """`rope_cos_sin` for int positions [B, T] in [0, num_positions), via [P, H] tables.

  Same values as `rope_cos_sin` (the same float32 angles through the same cos/sin), but
  cos/sin are evaluated once on P·H entries and then gathered. With [B, T, H] computed
  in place, XLA:CPU fuses the cos/sin into every consumer of the rotated q and k (the
  attention kernel's per-block slices and transposes, forward and backward, policy and
  reference), evaluating them again on [B, T, heads, H] each time: 13% of the bench_tiny
  step (docs/performance.md). Positions outside [0, P) would be clamped: only call this
  with positions known to be in range (e.g. `default_positions`).
  """
  cos, sin = rope_cos_sin(jnp.arange(num_positions)[None], inv_freq)  # [1, P, H]
  return (jnp.take(cos[0], positions, axis=0, mode='clip'),
          jnp.take(sin[0], positions, axis=0, mode='clip'))


def rope_cos_sin_for(config: ModelConfig, layer_type: str, positions, *,
                     num_positions: int | None = None, valid=None):
  """(cos, sin) [B, T, H] float32 of `layer_type` layers at positions [B, T].

  Args:
    config: the model config.
    layer_type: one of LAYER_TYPES.
    positions: [B, T] int positions.
    num_positions: if given, positions lie in [0, num_positions): look cos and
      sin up in tables (`rope_cos_sin_table`).
    valid: optional [B, T] mask of the real tokens (LongRoPE only: padding
      positions do not count towards the context length).

  LongRoPE picks its long factors for the whole call when the largest
  position + 1 exceeds original_max_position_embeddings, as transformers does
  per forward (so a batch's longest row decides for every row, and a KV cache
  filled with short factors keeps them).
  """
  rs = config.rope_scaling
  if (rs is not None and rs['rope_type'] == 'longrope'
      and not (layer_type == 'sliding_attention' and config.rope_local_theta is not None)):
    pos = positions if valid is None else jnp.where(valid != 0, positions, 0)
    is_long = jnp.max(pos) + 1 > rs['original_max_position_embeddings']
    inv_freq = jnp.where(is_long, rope_inv_freq(config, layer_type, True),
                         rope_inv_freq(config, layer_type, False))
  else:
    inv_freq = rope_inv_freq(config, layer_type)
  if num_positions is None:
    cos, sin = rope_cos_sin(positions, inv_freq)
  else:
    cos, sin = rope_cos_sin_table(positions, inv_freq, num_positions)
  factor = rope_attention_factor(config, layer_type)
  if factor != 1.0:
    cos, sin = cos * factor, sin * factor
  return cos, sin


def apply_rope(x, cos, sin):
  """x [B, T, heads, H]; cos/sin [B, T, H] -> rotated x (same dtype)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)  # "rotate_half"
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


# ----------------------------------------------------------------------------
# Blocks.


class Attention(nnx.Module):
  """Causal grouped-query self-attention with RoPE (optional QK-norm, soft-capping)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = (config.hidden_size, config.num_heads, config.num_kv_heads,
                  config.head_dim)
    pdt = config.params_dtype
    self.num_kv_heads = k
    self.dtype = config.compute_dtype
    self.scale = config.attention_scale
    self.softcap = config.attn_logit_softcapping
    # Neither the custom-VJP kernel, jax.nn.dot_product_attention nor the Pallas kernel
    # soft-caps: Gemma 2 layers take the autodiff formula whatever attention_impl says.
    self.impl = config.attention_impl if self.softcap is None else 'autodiff'
    self.query_blocks = config.attention_query_blocks
    self.q_proj = _param(rngs, (d, n, h), pdt, ('embed', 'heads', 'head_dim'))
    self.k_proj = _param(rngs, (d, k, h), pdt, ('embed', 'kv_heads', 'head_dim'))
    self.v_proj = _param(rngs, (d, k, h), pdt, ('embed', 'kv_heads', 'head_dim'))
    self.o_proj = _param(rngs, (n, h, d), pdt, ('heads', 'head_dim', 'embed'))
    if config.qkv_bias:
      self.q_bias = nnx.Param(jnp.zeros((n, h), pdt),
                              logical_axes=('heads', 'head_dim'))
      self.k_bias = nnx.Param(jnp.zeros((k, h), pdt),
                              logical_axes=('kv_heads', 'head_dim'))
      self.v_bias = nnx.Param(jnp.zeros((k, h), pdt),
                              logical_axes=('kv_heads', 'head_dim'))
    else:
      self.q_bias = self.k_bias = self.v_bias = None
    if config.qk_norm == 'head':
      # Qwen3 / Gemma 3: one [H] weight, each head normalised on its own.
      self.q_norm = RMSNorm(config, (h,), ('head_dim',))
      self.k_norm = RMSNorm(config, (h,), ('head_dim',))
    elif config.qk_norm == 'projection':
      # OLMo 2: statistics over the whole N·H (K·H) projection.
      self.q_norm = RMSNorm(config, (n, h), ('heads', 'head_dim'))
      self.k_norm = RMSNorm(config, (k, h), ('kv_heads', 'head_dim'))
    else:
      self.q_norm = self.k_norm = None

  def _project(self, x, w, b):
    """x [B, T, D] @ w [D, heads, H] (+ b [heads, H]) -> [B, T, heads, H].

    One plain 2-D GEMM [B·T, D] @ [D, heads·H]. Autodiff then forms the weight gradient
    xᵀ·dy contracting the single token axis, which XLA:CPU hands to its GEMM as is; the
    einsum form contracted (b, t) and made XLA copy-transpose dy (RoPE backward fused into
    that strided copy) for every q/k/v weight gradient (docs/performance.md).
    """
    bsz, t, d = x.shape
    _, heads, h = w.shape
    w2 = w[...].astype(self.dtype).reshape(d, heads * h)
    y = (x.reshape(bsz * t, d) @ w2).reshape(bsz, t, heads, h)
    if b is not None:
      y = y + b[...].astype(self.dtype)
    return y

  def _qkv(self, x, cos, sin):
    """x [B, T, D] -> q [B, T, K, G, H] and k, v [B, T, K, H], RoPE applied."""
    q = self._project(x, self.q_proj, self.q_bias)
    k = self._project(x, self.k_proj, self.k_bias)
    v = self._project(x, self.v_proj, self.v_bias)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)  # before RoPE, as in HF
    q = apply_rope(q, cos, sin)  # [B, T, N, H]
    k = apply_rope(k, cos, sin)  # [B, T, K, H]
    b, t, n, h = q.shape
    # Group query heads by the kv head they share: [B, T, K, G, H]. HF's
    # repeat_kv puts query head n on kv head n // G, which this matches.
    q = q.reshape(b, t, self.num_kv_heads, n // self.num_kv_heads, h)
    return q, k, v

  def _output(self, out):
    """Attention output [B, T, K, G, H] -> [B, T, D] through o_proj."""
    b, t, k, g, h = out.shape
    # [B·T, N·H] @ [N·H, D], one plain GEMM (see `_project`): the einsum's (n, h)
    # contraction made XLA:CPU copy-transpose both operands of the o_proj weight gradient.
    o_proj = self.o_proj[...].astype(self.dtype)
    out = out.reshape(b * t, k * g * h) @ o_proj.reshape(k * g * h, o_proj.shape[-1])
    return out.reshape(b, t, -1)

  def _attend(self, q, k, v, mask):
    """q [B, T, K, G, H], k/v [B, S, K, H] (queries = the last T keys) -> [B, T, D]."""
    # Scores and softmax in float32 (stable even with bf16 compute), masked
    # with a finite minimum; see models/kernels.py for both variants.
    if self.impl == 'custom_vjp':
      out = kernels.attention(q, k, v, mask, self.query_blocks, scale=self.scale)
    elif self.impl == 'dot_product':
      out = kernels.dot_product_attention(q, k, v, mask, scale=self.scale)
    elif self.impl in ('pallas', 'pallas_interpret'):
      # TPU flash attention; 'pallas_interpret' runs it in Pallas's interpret mode (tests).
      out = kernels.pallas_attention(q, k, v, mask, scale=self.scale,
                                     interpret=self.impl == 'pallas_interpret')
    else:
      out = kernels.attention_reference(q, k, v, mask, scale=self.scale,
                                        softcap=self.softcap)  # [B, T, K, G, H]
    return self._output(out)

  def __call__(self, x, cos, sin, mask):
    """x [B, T, D]; cos/sin [B, T, H]; mask [B, T, S] bool -> [B, T, D]."""
    return self._attend(*self._qkv(x, cos, sin), mask)

  def prefix_shared(self, prefix, suffix, rope, masks):
    """Attention of a shared prefix and of the R suffixes that continue it.

    Args:
      prefix: [B, P, D] inputs of the prefix tokens (a pair's prompt).
      suffix: [R*B, C, D] inputs of the suffixes (chosen rows, then rejected rows).
      rope: ((cos, sin) [B, P, H] of the prefix, (cos, sin) [R*B, C, H] of the suffixes).
      masks: (prefix mask [B, P, P], suffix mask [R*B, C, P + C]) bool.

    Returns:
      ([B, P, D], [R*B, C, D]). Suffix row r*B + b attends to prefix b's keys and values
      (computed once, tiled R times) followed by its own.
    """
    (prefix_rope, suffix_rope), (prefix_mask, suffix_mask) = rope, masks
    qp, kp, vp = self._qkv(prefix, *prefix_rope)
    qs, ks, vs = self._qkv(suffix, *suffix_rope)
    repeats = suffix.shape[0] // prefix.shape[0]
    ks = jnp.concatenate([jnp.concatenate([kp] * repeats, axis=0), ks], axis=1)
    vs = jnp.concatenate([jnp.concatenate([vp] * repeats, axis=0), vs], axis=1)
    return (self._attend(qp, kp, vp, prefix_mask),  # [B, P, D]
            self._attend(qs, ks, vs, suffix_mask))  # [R*B, C, D]

  def cached(self, x, cos, sin, mask, cache, index):
    """Attention for T new tokens against a KV cache (inference only).

    The new keys/values are written at cache slots [index, index + T), then
    the queries attend over all S slots (the plain formula: no gradients are
    needed, and the custom kernel's causal blocking assumes T == S).

    Args:
      x: [B, T, D] inputs of the new tokens.
      cos, sin: [B, T, H] RoPE tables at the new tokens' positions.
      mask: [B, T, S] bool, True where a new token may attend to a slot.
      cache: (k, v), each [B, K, S, H] in the compute dtype (head-major, so the two
        attention GEMMs batch over the leading (B, K) dims and read the cache in place;
        a token-major [B, S, K, H] cache made XLA:CPU transpose all of it every step).
      index: int scalar (may be traced), the first slot written.

    Returns:
      ([B, T, D], the updated (k, v) cache).
    """
    q, k, v = self._qkv(x, cos, sin)
    k_cache, v_cache = cache
    start = (0, 0, index, 0)
    head_major = lambda y: y.transpose(0, 2, 1, 3).astype(k_cache.dtype)  # [B, K, T, H]
    k_cache = jax.lax.dynamic_update_slice(k_cache, head_major(k), start)
    v_cache = jax.lax.dynamic_update_slice(v_cache, head_major(v), start)
    # kernels.attention_reference's formula on the head-major cache.
    scores = jnp.einsum('btkgh,bksh->bkgts', q, k_cache,
                        preferred_element_type=jnp.float32) * self.scale
    scores = kernels.soft_cap(scores, self.softcap)
    scores = jnp.where(mask[:, None, None, :, :], scores, kernels._MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum('bkgts,bksh->bkgth', probs, v_cache)  # [B, K, G, T, H]
    # o_proj as one plain [B, T, N·H] @ [N·H, D] GEMM (at T = 1, a decode step, the
    # transpose is free). `_output`'s einsum let XLA:CPU order the contraction (h, n) and
    # copy-transpose the o_proj weight inside the decode loop, every step.
    b, k_heads, g, t, h = out.shape
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, k_heads * g * h)
    o_proj = self.o_proj[...].astype(self.dtype).reshape(k_heads * g * h, -1)
    return out @ o_proj, (k_cache, v_cache)


class MLP(nnx.Module):
  """Gated feed-forward: down(act(gate(x)) * up(x)); SwiGLU, or GeGLU for Gemma."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    pdt = config.params_dtype
    self.dtype = config.compute_dtype
    self.impl = config.mlp_impl
    self.activation = config.hidden_act
    self.gate_proj = _param(rngs, (d, f), pdt, ('embed', 'mlp'))
    self.up_proj = _param(rngs, (d, f), pdt, ('embed', 'mlp'))
    self.down_proj = _param(rngs, (f, d), pdt, ('mlp', 'embed'))

  def __call__(self, x):  # [B, T, D] -> [B, T, D]
    dt = self.dtype
    weights = (self.gate_proj[...].astype(dt), self.up_proj[...].astype(dt),
               self.down_proj[...].astype(dt))
    if self.impl == 'custom_vjp':
      return kernels.gated_mlp(x, *weights, self.activation)
    return kernels.gated_mlp_reference(x, *weights, self.activation)


class Block(nnx.Module):
  """Decoder block; `config.norm_placement` decides which of its four norms exist.

  'pre' (Llama):       x + attn(input_norm(x)), then x + mlp(post_attn_norm(x))
  'sandwich' (Gemma):  x + attn_out_norm(attn(input_norm(x))),
                       then x + mlp_out_norm(mlp(post_attn_norm(x)))
  'post' (OLMo 2):     x + attn_out_norm(attn(x)), then x + mlp_out_norm(mlp(x))
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    placement = config.norm_placement
    norm = lambda present: RMSNorm(config) if present else None
    self.input_norm = norm(placement != 'post')
    self.attn = Attention(config, rngs=rngs)
    self.attn_out_norm = norm(placement != 'pre')
    self.post_attn_norm = norm(placement != 'post')
    self.mlp = MLP(config, rngs=rngs)
    self.mlp_out_norm = norm(placement != 'pre')

  @staticmethod
  def _maybe(norm, x):
    return x if norm is None else norm(x)

  def _attn_in(self, x):
    return self._maybe(self.input_norm, x)

  def _add_attn(self, x, a):
    return x + self._maybe(self.attn_out_norm, a)

  def _mlp_residual(self, x):
    return x + self._maybe(self.mlp_out_norm, self.mlp(self._maybe(self.post_attn_norm, x)))

  def __call__(self, x, cos, sin, mask):  # x [B, T, D] -> [B, T, D]
    x = self._add_attn(x, self.attn(self._attn_in(x), cos, sin, mask))
    return self._mlp_residual(x)

  def prefix_shared(self, prefix, suffix, rope, masks):
    """`__call__` on a shared prefix and its suffixes (see Attention.prefix_shared)."""
    a_prefix, a_suffix = self.attn.prefix_shared(self._attn_in(prefix),
                                                 self._attn_in(suffix), rope, masks)
    prefix, suffix = self._add_attn(prefix, a_prefix), self._add_attn(suffix, a_suffix)
    return self._mlp_residual(prefix), self._mlp_residual(suffix)

  def cached(self, x, cos, sin, mask, cache, index):
    """`__call__` with a KV cache (see Attention.cached) -> (x, cache)."""
    a, cache = self.attn.cached(self._attn_in(x), cos, sin, mask, cache, index)
    return self._mlp_residual(self._add_attn(x, a)), cache


def remat_policy(mode: str):
  """The `jax.checkpoint` policy of `ModelConfig.remat` (None for 'none' and 'block').

  'dots' saves the outputs of matmuls without batch dimensions: the q/k/v and o
  projections and the MLP's gate/up/down products, [B, T, ...] each, but not the attention
  scores or probabilities ([B, K, G, T, S], batched over B and K), which are recomputed
  with the norms, RoPE and activations. 'offload' saves the same set in pinned host memory
  (copied out in the forward, back in the backward): the device keeps the block inputs
  only, at the price of the transfers; XLA:CPU has no separate host memory to offload to,
  so training/config_check.py refuses it there.
  """
  policies = jax.checkpoint_policies
  if mode == 'dots':
    return policies.dots_with_no_batch_dims_saveable
  if mode == 'nothing':
    return policies.nothing_saveable
  if mode == 'offload':
    return policies.offload_dot_with_no_batch_dims('device', 'pinned_host')
  return None


def remat_blocks(fn, mode: str):
  """`fn` (a block call) under `ModelConfig.remat` = `mode`: rematerialised in the
  backward pass as `remat_policy` says, or `fn` itself for 'none'.

  'block' is `nnx.remat` without a policy, exactly as before the policies existed (the
  same program; 'nothing' spells the same memory with an explicit policy).
  """
  if mode == 'none':
    return fn
  if mode == 'block':
    return nnx.remat(fn)
  return nnx.remat(fn, policy=remat_policy(mode))


def _fetch_after(block: Block, x):
  """(`block`, x) with the block's parameters and x through `gather_after`: on a
  batch-sharded mesh the block's weights are gathered only once x exists (x: the input of
  the layer before it, so that one layer's gather overlaps the previous layer's compute)."""
  graphdef, state = nnx.split(block)
  state, x = gather_after(state, x)
  return nnx.merge(graphdef, state), x


def _run_block(block: Block, x, cos, sin, mask):
  return block(x, cos, sin, mask)


def _run_block_prefix_shared(block: Block, prefix, suffix, rope, masks):
  return block.prefix_shared(prefix, suffix, rope, masks)


# ----------------------------------------------------------------------------
# Masks and positions.


def make_attention_mask(seq_len: int, attention_mask=None, segment_ids=None):
  """Boolean mask [B or 1, T, S]: True where query t may attend to key s.

  Causal in *index* order; padded keys (attention_mask == 0) are never
  attended; with segment_ids, attention stays within a segment.
  """
  idx = jnp.arange(seq_len)
  mask = (idx[:, None] >= idx[None, :])[None]  # [1, T, S]
  if attention_mask is not None:
    mask = mask & (attention_mask[:, None, :] != 0)  # key padding
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return mask


def sliding_window_mask(query_positions, key_positions, window: int):
  """[B, T, S] bool: True where key position > query position - window.

  The positions are the RoPE positions (`default_positions`, or a packed row's
  per-segment ones), so a window counts real tokens whatever the padding; on the
  contiguous rows HF builds its masks for, that is its index rule
  `kv_idx > q_idx - sliding_window`. Combine with a causal mask.
  """
  distance = query_positions[:, :, None] - key_positions[:, None, :]
  return distance < window


def default_positions(input_ids, attention_mask=None):
  """Positions [B, T] int32 counting real tokens only (0 on left padding).

  With a mask, cumsum(mask) - 1 clipped at 0, so a sequence gets the same
  positions whether it is left- or right-padded.
  """
  b, t = input_ids.shape
  if attention_mask is None:
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
  return jnp.maximum(pos, 0)


# ----------------------------------------------------------------------------
# Model.


class Transformer(nnx.Module):
  """Decoder-only causal language model (any family of models/config.py).

  Example:
    model = Transformer(config, rngs=nnx.Rngs(0))
    logits = model(input_ids, attention_mask=mask)  # [B, T, V] float32
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    v, d = config.vocab_size, config.hidden_size
    pdt = config.params_dtype
    self.embedding = _param(rngs, (v, d), pdt, ('vocab', 'embed'))  # [V, D]
    self.layers = nnx.List(
        [Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.final_norm = RMSNorm(config)
    if not config.tie_word_embeddings:
      self.lm_head = _param(rngs, (d, v), pdt, ('embed', 'vocab'))

  def _embed(self, ids):
    """ids [B, T] -> [B, T, D] in the compute dtype."""
    cfg = self.config
    x = jnp.take(self.embedding[...], ids, axis=0).astype(cfg.compute_dtype)
    if cfg.scale_embeddings:
      # Gemma multiplies by sqrt(D) rounded to the compute dtype, as its reference does.
      x = x * jnp.asarray(np.float32(math.sqrt(cfg.hidden_size)), cfg.compute_dtype)
    return x

  def _per_layer(self, rope_fn, mask, sliding_fn):
    """Per layer (rope, mask): each layer type's RoPE and mask, computed once a type.

    Args:
      rope_fn: layer type -> that type's RoPE tables.
      mask: the global layers' mask.
      sliding_fn: mask -> the sliding-window layers' mask.
    """
    kinds = self.config.attention_types
    ropes = {kind: rope_fn(kind) for kind in dict.fromkeys(kinds)}
    masks = {'full_attention': mask}
    if 'sliding_attention' in kinds:
      masks['sliding_attention'] = sliding_fn(mask)
    return [(ropes[kind], masks[kind]) for kind in kinds]

  def hidden_states(self, input_ids, *, attention_mask=None, positions=None,
                    segment_ids=None):
    """Final-norm hidden states.

    Args:
      input_ids: [B, T] int token ids.
      attention_mask: optional [B, T], 1 for real tokens, 0 for padding.
      positions: optional [B, T] int RoPE positions. Default: positions
        counting real tokens (see `default_positions`).
      segment_ids: optional [B, T] int; tokens only attend within their
        segment (packing). Requires explicit `positions`.

    Returns:
      [B, T, D] in the compute dtype.
    """
    if segment_ids is not None and positions is None:
      raise ValueError(
          'segment_ids requires explicit positions (restarting at 0 in '
          'each packed segment).')
    cfg = self.config
    t = input_ids.shape[1]
    mask = make_attention_mask(t, attention_mask, segment_ids)
    # Default positions lie in [0, T): look cos/sin up in [T, H] tables (see
    # rope_cos_sin_table for why this is faster on XLA:CPU).
    table = t if positions is None else None
    if positions is None:
      positions = default_positions(input_ids, attention_mask)
    valid = attention_mask if segment_ids is None else segment_ids
    per_layer = self._per_layer(
        lambda kind: rope_cos_sin_for(cfg, kind, positions, num_positions=table,
                                      valid=valid),
        mask, lambda m: m & sliding_window_mask(positions, positions, cfg.sliding_window))

    x = constrain_batch(self._embed(input_ids))  # [B, T, D], batch-sharded on a mesh
    # Remat recomputes a block's activations in the backward pass instead of
    # storing them: memory per block drops to its input (or its matmul outputs).
    block_fn = remat_blocks(_run_block, cfg.remat)
    layers = list(self.layers)
    block, x = _fetch_after(layers[0], x)
    for i, ((cos, sin), layer_mask) in enumerate(per_layer):
      current = block
      if i + 1 < len(layers):  # the next layer's weights are fetched while this one runs
        block, x = _fetch_after(layers[i + 1], x)
      x = constrain_batch(block_fn(current, x, cos, sin, layer_mask))
    return self.final_norm(x)

  def prefix_shared_hidden_states(self, prefix_ids, prefix_mask, suffix_ids, suffix_mask):
    """Final-norm hidden states of R sequences per row that share their first tokens.

    Sequence (r, b) is prefix b followed by suffix r*B + b (a pair's prompt followed by its
    chosen, then its rejected completion). The prefix runs through the model once instead
    of R times; each suffix attends to its prefix's keys and values, then causally to its
    own. The values equal `hidden_states` of the concatenated sequences (same positions,
    same mask, sliding windows included) up to float rounding: "prefix sharing" (Wang et
    al. 2024, "Accelerating Direct Preference Optimization with Prefix Sharing", arXiv
    2410.20305).

    Args:
      prefix_ids: [B, P] int, right-padded: row b's prefix is its first sum(prefix_mask[b])
        tokens.
      prefix_mask: [B, P], 1 on the prefix tokens, 0 on padding.
      suffix_ids: [R*B, C] int, right-padded; suffix token j of row b sits at position
        len(prefix b) + j.
      suffix_mask: [R*B, C], 1 on real suffix tokens.

    Returns:
      (prefix hidden [B, P, D], suffix hidden [R*B, C, D]) in the compute dtype.
    """
    cfg = self.config
    (batch, p), (rows, c) = prefix_ids.shape, suffix_ids.shape
    repeats = rows // batch
    prefix_len = jnp.sum(prefix_mask != 0, axis=1).astype(jnp.int32)  # [B]
    prefix_pos = default_positions(prefix_ids, prefix_mask)  # [B, P]
    suffix_pos = jnp.tile(prefix_len, repeats)[:, None] + jnp.arange(c, dtype=jnp.int32)
    # LongRoPE's context length is the longest real sequence, prefix and suffix together.
    valid = jnp.concatenate([jnp.tile(prefix_mask, (repeats, 1)), suffix_mask], axis=1)
    all_pos = jnp.concatenate([jnp.tile(prefix_pos, (repeats, 1)), suffix_pos], axis=1)

    def rope(kind):
      if cfg.rope_scaling is not None and cfg.rope_scaling['rope_type'] == 'longrope':
        # One long/short choice for prefix and suffixes (the full sequences').
        cos, sin = rope_cos_sin_for(cfg, kind, all_pos, valid=valid)
        return ((cos[:batch, :p], sin[:batch, :p]), (cos[:, p:], sin[:, p:]))
      return (rope_cos_sin_for(cfg, kind, prefix_pos, num_positions=p + c),
              rope_cos_sin_for(cfg, kind, suffix_pos, num_positions=p + c))

    prefix_keys = jnp.tile(prefix_mask != 0, (repeats, 1))[:, None, :]  # [R*B, 1, P]
    suffix_causal = make_attention_mask(c, suffix_mask)  # [R*B, C, C]
    masks = (make_attention_mask(p, prefix_mask),
             jnp.concatenate([jnp.broadcast_to(prefix_keys, (rows, c, p)), suffix_causal],
                             axis=2))  # [R*B, C, P + C]

    def sliding(masks):
      window = cfg.sliding_window
      return (masks[0] & sliding_window_mask(prefix_pos, prefix_pos, window),
              masks[1] & sliding_window_mask(suffix_pos, all_pos, window))

    per_layer = self._per_layer(rope, masks, sliding)
    prefix, suffix = (constrain_batch(self._embed(ids)) for ids in (prefix_ids, suffix_ids))
    block_fn = remat_blocks(_run_block_prefix_shared, cfg.remat)
    layers = list(self.layers)
    block, (prefix, suffix) = _fetch_after(layers[0], (prefix, suffix))
    for i, (layer_rope, layer_masks) in enumerate(per_layer):
      current = block
      if i + 1 < len(layers):  # as in hidden_states
        block, (prefix, suffix) = _fetch_after(layers[i + 1], (prefix, suffix))
      prefix, suffix = map(constrain_batch,
                           block_fn(current, prefix, suffix, layer_rope, layer_masks))
    return self.final_norm(prefix), self.final_norm(suffix)

  # --------------------------------------------------------------------------
  # Incremental decoding (sampling). The training path above never uses it.

  def init_cache(self, batch_size: int, max_len: int):
    """An empty KV cache: per layer (k, v), each [B, K, S=max_len, H] zeros.

    A plain tuple pytree (not NNX state), so it can be carried through
    `jax.lax.scan` / `while_loop` and handed back by `cached_hidden_states`.
    Sliding-window layers keep every slot too and mask the old ones out.
    """
    cfg = self.config
    shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
    zeros = jnp.zeros(shape, cfg.compute_dtype)
    return tuple((zeros, zeros) for _ in range(cfg.num_layers))

  def cached_hidden_states(self, input_ids, *, positions, cache, index,
                           key_mask):
    """Final-norm hidden states of T new tokens, reading and filling a cache.

    The tokens occupy cache slots [index, index + T). New token t (slot
    index + t) attends to slot s iff s <= index + t and key_mask[b, s]: the
    same causal, key-padded mask as `hidden_states`, so prefilling a prompt
    and then feeding one token per call reproduces the full forward. In
    sliding-window layers, slot s must also hold a position within the
    window, slot positions counting the real slots (cumsum(key_mask) - 1, as
    `default_positions` counts them in training).

    Args:
      input_ids: [B, T] int token ids.
      positions: [B, T] int RoPE positions (with left padding, positions
        count real tokens only, as `default_positions` does in training).
      cache: from `init_cache` (or a previous call), S slots per layer.
      index: int scalar (may be traced): the slot of input_ids[:, 0].
      key_mask: [B, S], nonzero for slots holding real tokens.

    Returns:
      (hidden [B, T, D] in the compute dtype, the updated cache).
    """
    cfg = self.config
    t = input_ids.shape[1]
    s = cache[0][0].shape[2]
    slots = jnp.arange(s)
    query_slots = index + jnp.arange(t)
    mask = (slots[None, :] <= query_slots[:, None])[None]  # [1, T, S]
    mask = mask & (key_mask[:, None, :] != 0)  # [B, T, S]
    slot_positions = default_positions(key_mask, key_mask)  # [B, S]
    per_layer = self._per_layer(
        lambda kind: rope_cos_sin_for(cfg, kind, positions),
        mask, lambda m: m & sliding_window_mask(positions, slot_positions, cfg.sliding_window))
    x = self._embed(input_ids)  # [B, T, D]
    new_cache = []
    for block, layer_cache, ((cos, sin), layer_mask) in zip(self.layers, cache, per_layer):
      x, layer_cache = block.cached(x, cos, sin, layer_mask, layer_cache, index)
      new_cache.append(layer_cache)
    return self.final_norm(x), tuple(new_cache)

  def unembed(self, h):
    """Hidden states [..., D] -> logits [..., V] float32 (soft-capped for Gemma 2)."""
    dt = self.config.compute_dtype
    if self.config.tie_word_embeddings:
      w = self.embedding[...].astype(dt)  # [V, D]
      logits = jnp.einsum('...d,vd->...v', h.astype(dt), w,
                          preferred_element_type=jnp.float32)
    else:
      w = self.lm_head[...].astype(dt)  # [D, V]
      logits = jnp.einsum('...d,dv->...v', h.astype(dt), w,
                          preferred_element_type=jnp.float32)
    return kernels.soft_cap(logits, self.config.final_logit_softcapping)

  def __call__(self, input_ids, *, attention_mask=None, positions=None,
               segment_ids=None):
    """input_ids [B, T] -> logits [B, T, V] float32 (see hidden_states)."""
    h = self.hidden_states(input_ids, attention_mask=attention_mask,
                           positions=positions, segment_ids=segment_ids)
    return self.unembed(h)
