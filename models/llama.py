"""Llama-family decoder-only transformer in Flax NNX.

Covers Llama (1/2/3, with Llama-3 RoPE scaling), Qwen2 (q/k/v bias, tied
embeddings) and Mistral (without sliding windows): RMSNorm, rotary position
embeddings (HF "rotate-half" convention), grouped-query attention and a
SwiGLU MLP, in pre-norm residual blocks.

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
  layers[i].attn.o_proj   [N, H, D]  ('heads', 'head_dim', 'embed')
  layers[i].mlp.gate_proj [D, F]     ('embed', 'mlp')
  layers[i].mlp.up_proj   [D, F]     ('embed', 'mlp')
  layers[i].mlp.down_proj [F, D]     ('mlp', 'embed')
  *_norm.scale            [D]        ('norm',)
  lm_head                 [D, V]     ('embed', 'vocab')   (untied only)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models import kernels
from models.config import ModelConfig

_INIT_STD = 0.02  # HF initializer_range.


def _param(rngs: nnx.Rngs, shape, dtype, logical_axes) -> nnx.Param:
  """A normal(0, 0.02) parameter, as HF initialises Linear/Embedding."""
  init = nnx.initializers.normal(_INIT_STD)
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=logical_axes)


class RMSNorm(nnx.Module):
  """RMSNorm with a learned scale, computed in float32 like HF."""

  def __init__(self, config: ModelConfig):
    self.eps = config.rms_norm_eps
    self.dtype = config.compute_dtype
    self.scale = nnx.Param(
        jnp.ones((config.hidden_size,), config.params_dtype),
        logical_axes=('norm',),
    )

  def __call__(self, x):  # [..., D] -> [..., D] compute dtype
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    # HF casts back to the input dtype *before* the scale multiply.
    return normed * self.scale[...].astype(self.dtype)


# ----------------------------------------------------------------------------
# Rotary position embeddings.


def rope_inv_freq(config: ModelConfig) -> jax.Array:
  """Inverse frequencies [H // 2] float32, with optional Llama-3 scaling."""
  h = config.head_dim
  inv_freq = 1.0 / (
      config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  rs = config.rope_scaling
  if rs is None:
    return inv_freq
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
  """Causal grouped-query self-attention with RoPE."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = (config.hidden_size, config.num_heads, config.num_kv_heads,
                  config.head_dim)
    pdt = config.params_dtype
    self.num_kv_heads = k
    self.dtype = config.compute_dtype
    self.impl = config.attention_impl
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

  def _project(self, x, w, b):
    """x [B, T, D] @ w [D, heads, H] (+ b [heads, H]) -> [B, T, heads, H]."""
    y = jnp.einsum('btd,dnh->btnh', x, w[...].astype(self.dtype))
    if b is not None:
      y = y + b[...].astype(self.dtype)
    return y

  def _qkv(self, x, cos, sin):
    """x [B, T, D] -> q [B, T, K, G, H] and k, v [B, T, K, H], RoPE applied."""
    q = self._project(x, self.q_proj, self.q_bias)
    k = self._project(x, self.k_proj, self.k_bias)
    v = self._project(x, self.v_proj, self.v_bias)
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
    out = out.reshape(b, t, k * g, h)
    return jnp.einsum('btnh,nhd->btd', out, self.o_proj[...].astype(self.dtype))

  def _attend(self, q, k, v, mask):
    """q [B, T, K, G, H], k/v [B, S, K, H] (queries = the last T keys) -> [B, T, D]."""
    # Scores and softmax in float32 (stable even with bf16 compute), masked
    # with a finite minimum; see models/kernels.py for both variants.
    if self.impl == 'custom_vjp':
      out = kernels.attention(q, k, v, mask, self.query_blocks)
    else:
      out = kernels.attention_reference(q, k, v, mask)  # [B, T, K, G, H]
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
                        preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
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
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    pdt = config.params_dtype
    self.dtype = config.compute_dtype
    self.impl = config.mlp_impl
    self.gate_proj = _param(rngs, (d, f), pdt, ('embed', 'mlp'))
    self.up_proj = _param(rngs, (d, f), pdt, ('embed', 'mlp'))
    self.down_proj = _param(rngs, (f, d), pdt, ('mlp', 'embed'))

  def __call__(self, x):  # [B, T, D] -> [B, T, D]
    dt = self.dtype
    weights = (self.gate_proj[...].astype(dt), self.up_proj[...].astype(dt),
               self.down_proj[...].astype(dt))
    if self.impl == 'custom_vjp':
      return kernels.swiglu(x, *weights)
    return kernels.swiglu_reference(x, *weights)


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.input_norm = RMSNorm(config)
    self.attn = Attention(config, rngs=rngs)
    self.post_attn_norm = RMSNorm(config)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x, cos, sin, mask):  # x [B, T, D] -> [B, T, D]
    x = x + self.attn(self.input_norm(x), cos, sin, mask)
    return x + self.mlp(self.post_attn_norm(x))

  def prefix_shared(self, prefix, suffix, rope, masks):
    """`__call__` on a shared prefix and its suffixes (see Attention.prefix_shared)."""
    a_prefix, a_suffix = self.attn.prefix_shared(self.input_norm(prefix),
                                                 self.input_norm(suffix), rope, masks)
    prefix, suffix = prefix + a_prefix, suffix + a_suffix
    return (prefix + self.mlp(self.post_attn_norm(prefix)),
            suffix + self.mlp(self.post_attn_norm(suffix)))

  def cached(self, x, cos, sin, mask, cache, index):
    """`__call__` with a KV cache (see Attention.cached) -> (x, cache)."""
    a, cache = self.attn.cached(self.input_norm(x), cos, sin, mask, cache, index)
    x = x + a
    return x + self.mlp(self.post_attn_norm(x)), cache


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
  """Llama-family causal language model.

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
    mask = make_attention_mask(input_ids.shape[1], attention_mask, segment_ids)
    if positions is None:
      # Default positions lie in [0, T): look cos/sin up in [T, H] tables (see
      # rope_cos_sin_table for why this is faster on XLA:CPU).
      positions = default_positions(input_ids, attention_mask)
      cos, sin = rope_cos_sin_table(positions, rope_inv_freq(cfg), input_ids.shape[1])
    else:
      cos, sin = rope_cos_sin(positions, rope_inv_freq(cfg))

    x = jnp.take(self.embedding[...], input_ids, axis=0)  # [B, T, D]
    x = x.astype(cfg.compute_dtype)
    # nnx.remat recomputes a block's activations in the backward pass
    # instead of storing them: memory per block drops to its input.
    block_fn = nnx.remat(_run_block) if cfg.remat == 'block' else _run_block
    for block in self.layers:
      x = block_fn(block, x, cos, sin, mask)
    return self.final_norm(x)

  def prefix_shared_hidden_states(self, prefix_ids, prefix_mask, suffix_ids, suffix_mask):
    """Final-norm hidden states of R sequences per row that share their first tokens.

    Sequence (r, b) is prefix b followed by suffix r*B + b (a pair's prompt followed by its
    chosen, then its rejected completion). The prefix runs through the model once instead
    of R times; each suffix attends to its prefix's keys and values, then causally to its
    own. The values equal `hidden_states` of the concatenated sequences (same positions,
    same mask) up to float rounding: "prefix sharing" (Wang et al. 2024, "Accelerating
    Direct Preference Optimization with Prefix Sharing", arXiv 2410.20305).

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
    inv_freq = rope_inv_freq(cfg)
    rope = (rope_cos_sin_table(prefix_pos, inv_freq, p + c),
            rope_cos_sin_table(suffix_pos, inv_freq, p + c))
    prefix_keys = jnp.tile(prefix_mask != 0, (repeats, 1))[:, None, :]  # [R*B, 1, P]
    suffix_causal = make_attention_mask(c, suffix_mask)  # [R*B, C, C]
    masks = (make_attention_mask(p, prefix_mask),
             jnp.concatenate([jnp.broadcast_to(prefix_keys, (rows, c, p)), suffix_causal],
                             axis=2))  # [R*B, C, P + C]

    embed = lambda ids: jnp.take(self.embedding[...], ids, axis=0).astype(cfg.compute_dtype)
    prefix, suffix = embed(prefix_ids), embed(suffix_ids)
    block_fn = (nnx.remat(_run_block_prefix_shared) if cfg.remat == 'block'
                else _run_block_prefix_shared)
    for block in self.layers:
      prefix, suffix = block_fn(block, prefix, suffix, rope, masks)
    return self.final_norm(prefix), self.final_norm(suffix)

  # --------------------------------------------------------------------------
  # Incremental decoding (sampling). The training path above never uses it.

  def init_cache(self, batch_size: int, max_len: int):
    """An empty KV cache: per layer (k, v), each [B, K, S=max_len, H] zeros.

    A plain tuple pytree (not NNX state), so it can be carried through
    `jax.lax.scan` / `while_loop` and handed back by `cached_hidden_states`.
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
    and then feeding one token per call reproduces the full forward.

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
    cos, sin = rope_cos_sin(positions, rope_inv_freq(cfg))
    x = jnp.take(self.embedding[...], input_ids, axis=0)
    x = x.astype(cfg.compute_dtype)  # [B, T, D]
    new_cache = []
    for block, layer_cache in zip(self.layers, cache):
      x, layer_cache = block.cached(x, cos, sin, mask, layer_cache, index)
      new_cache.append(layer_cache)
    return self.final_norm(x), tuple(new_cache)

  def unembed(self, h):
    """Hidden states [..., D] -> logits [..., V] float32."""
    dt = self.config.compute_dtype
    if self.config.tie_word_embeddings:
      w = self.embedding[...].astype(dt)  # [V, D]
      return jnp.einsum('...d,vd->...v', h.astype(dt), w,
                        preferred_element_type=jnp.float32)
    w = self.lm_head[...].astype(dt)  # [D, V]
    return jnp.einsum('...d,dv->...v', h.astype(dt), w,
                      preferred_element_type=jnp.float32)

  def __call__(self, input_ids, *, attention_mask=None, positions=None,
               segment_ids=None):
    """input_ids [B, T] -> logits [B, T, V] float32 (see hidden_states)."""
    h = self.hidden_states(input_ids, attention_mask=attention_mask,
                           positions=positions, segment_ids=segment_ids)
    return self.unembed(h)
