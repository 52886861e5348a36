"""Hand-written backward passes for the two hot spots of the decoder (`jax.custom_vjp`).

Same math as autodiff of the plain formulas (tests/test_kernels.py checks the gradients); the
point is speed on XLA:CPU, whose autodiff backward fuses the elementwise derivatives into
transposing copies that run as strided loops (see docs/performance.md). Written out, the
backward is a handful of plain GEMMs and one elementwise pass each.

Gated MLP, x [M, D] (any leading dims), y = (a(x·Wg) ⊙ (x·Wu))·Wd with g = x·Wg, u = x·Wu
and the activation a = silu (SwiGLU) or tanh-approximated GELU (GeGLU, Gemma):

    da  = dy·Wdᵀ
    dg  = da ⊙ u ⊙ a'(g)             du  = da ⊙ a(g)
    dx  = dg·Wgᵀ + du·Wuᵀ
    dWg = xᵀ·dg    dWu = xᵀ·du    dWd = (a(g) ⊙ u)ᵀ·dy

    silu(g) = g·σ(g),                     silu'(g) = σ·(1 + g·(1 − σ))
    gelu(g) = g·(1 + tanh z)/2,  z = c·(g + 0.044715·g³),  c = √(2/π)
    gelu'(g) = (1 + tanh z)/2 + g·(1 − tanh² z)·c·(1 + 3·0.044715·g²)/2

Causal attention, per head: S = c·Q·Kᵀ (c = H^-1/2 unless given, masked to −∞), P = softmax(S), O = P·V.
With δ = rowsum(dO ⊙ O) (= rowsum(P ⊙ dP)):

    dV = Pᵀ·dO    dP = dO·Vᵀ    dS = P ⊙ (dP − δ)  (0 where masked)
    dQ = c·dS·K   dK = c·dSᵀ·Q

The query axis is cut into `num_blocks` causal blocks: block i (queries [r0, r1)) only meets
keys [0, S − T + r1), which skips most of the masked upper triangle (about half the attention
FLOPs at many blocks). The T queries are the LAST T of the S key positions (T = S for a plain
sequence; T < S when a completion attends to a shared prompt's keys followed by its own, see
`Transformer.prefix_shared_hidden_states`). This relies on the mask being causal in that
sense (query t never sees key s > S − T + t; true of every mask the model builds); key
padding and segments inside it are honoured as given.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Finite "minus infinity" for masked attention scores: a fully masked row (e.g. a padding
# query) gets a uniform softmax (and, in the custom backward, a zero gradient) instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


# ----------------------------------------------------------------------------
# SwiGLU.


_GELU_C = math.sqrt(2 / math.pi)


def _activation(name: str, g):
  """a(g) of a gated MLP; `name` is the HF name ('silu' | 'gelu_pytorch_tanh')."""
  if name == 'silu':
    return jax.nn.silu(g)
  if name == 'gelu_pytorch_tanh':
    return jax.nn.gelu(g, approximate=True)
  raise ValueError(f'unknown activation {name!r}')


def _activation_and_grad(name: str, g):
  """(a(g), a'(g)) elementwise (module doc)."""
  if name == 'silu':
    sig = jax.nn.sigmoid(g)
    return g * sig, sig * (1 + g * (1 - sig))
  tanh = jnp.tanh(_GELU_C * (g + 0.044715 * g ** 3))
  act = 0.5 * g * (1 + tanh)
  grad = 0.5 * (1 + tanh) + 0.5 * g * (1 - tanh * tanh) * _GELU_C * (1 + 3 * 0.044715 * g * g)
  return act, grad


def gated_mlp_reference(x, wg, wu, wd, activation: str = 'silu'):
  """(a(x·Wg) ⊙ x·Wu)·Wd, differentiated by autodiff."""
  return (_activation(activation, x @ wg) * (x @ wu)) @ wd


def swiglu_reference(x, wg, wu, wd):
  """(silu(x·Wg) ⊙ x·Wu)·Wd, differentiated by autodiff."""
  return gated_mlp_reference(x, wg, wu, wd, 'silu')


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def gated_mlp(x, wg, wu, wd, activation: str = 'silu'):
  """x [..., D], wg/wu [D, F], wd [F, D] -> [..., D]; hand-written backward (module doc)."""
  return gated_mlp_reference(x, wg, wu, wd, activation)


def swiglu(x, wg, wu, wd):
  """`gated_mlp` with SiLU (SwiGLU)."""
  return gated_mlp(x, wg, wu, wd, 'silu')


def _gated_mlp_fwd(x, wg, wu, wd, activation):
  g, u = x @ wg, x @ wu
  return (_activation(activation, g) * u) @ wd, (x, g, u, wg, wu, wd)


def _gated_mlp_bwd(activation, res, dy):
  x, g, u, wg, wu, wd = res
  act, act_grad = _activation_and_grad(activation, g)
  da = dy @ wd.T
  dg = da * u * act_grad
  du = da * act
  dx = dg @ wg.T + du @ wu.T
  # Weight gradients contract over every token: flatten the leading dims to one.
  flat = lambda a: a.reshape(-1, a.shape[-1])
  x2, dg2, du2, dy2 = flat(x), flat(dg), flat(du), flat(dy)
  return dx, x2.T @ dg2, x2.T @ du2, flat(act * u).T @ dy2


gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)


# ----------------------------------------------------------------------------
# Attention.


def _blocks(num_queries: int, num_blocks: int) -> list[tuple[int, int]]:
  """[(r0, r1)] cutting range(num_queries) into at most `num_blocks` near-equal pieces."""
  size = -(-num_queries // max(1, min(num_blocks, num_queries)))
  return [(r0, min(r0 + size, num_queries)) for r0 in range(0, num_queries, size)]


def soft_cap(x, cap: float | None):
  """cap·tanh(x / cap), or x when cap is None (Gemma 2's logit soft-capping)."""
  return x if cap is None else cap * jnp.tanh(x / cap)


def attention_reference(q, k, v, mask, *, scale: float | None = None,
                        softcap: float | None = None):
  """Grouped-query attention differentiated by autodiff (the model's plain formula).

  q [B, T, K, G, H], k/v [B, S, K, H], mask [B or 1, T, S] bool -> [B, T, K, G, H].
  `scale` multiplies q·k (default H^-1/2); `softcap` soft-caps the scaled scores before
  the mask (Gemma 2, arXiv 2408.00118).
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  scores = jnp.einsum('btkgh,bskh->bkgts', q, k,
                      preferred_element_type=jnp.float32) * scale
  scores = soft_cap(scores, softcap)
  scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum('bkgts,bskh->btkgh', probs, v)


def attention(q, k, v, mask, num_blocks: int = 1, *, scale: float | None = None):
  """Causal grouped-query attention with a hand-written backward (module doc).

  Shapes as `attention_reference` with T <= S; the queries are the last T key positions and
  `mask` must be causal in that sense (query t never sees key s > S − T + t; a sliding
  window only removes keys). `scale` multiplies q·k (default H^-1/2).
  Inside, the layouts are head-major ([B, K, G, T, H], [B, K, S, H]): one transpose each
  way, after which every block's GEMMs batch over contiguous leading dims (≈5% faster on
  the bench_tiny step than einsums on the token-major layout).
  A query that sees no key at all (left padding) averages the values of its block's keys
  rather than of all keys; such rows are padding and never read.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  out = _attention(q.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3),
                   v.transpose(0, 2, 1, 3), mask, num_blocks, scale)
  return out.transpose(0, 3, 1, 2, 4)


def _key_end(q, k, r1: int) -> int:
  """Keys [0, end) that query block [r0, r1) can see: the queries are the last T keys."""
  return k.shape[2] - q.shape[3] + r1


def _block_probs(q, k, mask, r0, r1, scale):
  """Softmax probabilities [B, K, G, r1-r0, end] (float32) of query block [r0, r1)."""
  end = _key_end(q, k, r1)
  scores = jnp.einsum('bkgth,bksh->bkgts', q[:, :, :, r0:r1], k[:, :, :end],
                      preferred_element_type=jnp.float32) * scale
  return jax.nn.softmax(jnp.where(mask[:, None, None, r0:r1, :end], scores, _MASK_VALUE),
                        axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, mask, num_blocks, scale):
  """q [B, K, G, T, H], k/v [B, K, S, H] -> [B, K, G, T, H]."""
  return _attention_fwd(q, k, v, mask, num_blocks, scale)[0]


def _attention_fwd(q, k, v, mask, num_blocks, scale):
  outs, probs = [], []
  for r0, r1 in _blocks(q.shape[3], num_blocks):
    p = _block_probs(q, k, mask, r0, r1, scale).astype(q.dtype)
    outs.append(jnp.einsum('bkgts,bksh->bkgth', p, v[:, :, :_key_end(q, k, r1)]))
    probs.append(p)
  out = jnp.concatenate(outs, axis=3)
  return out, (q, k, v, mask, out, probs)


def _pad_keys(x, num_keys):
  """[B, K, s, H] -> [B, K, num_keys, H], zeros after s (a causal block's key range)."""
  return jnp.pad(x, ((0, 0), (0, 0), (0, num_keys - x.shape[2]), (0, 0)))


def _attention_bwd(num_blocks, scale, res, dout):
  q, k, v, mask, out, probs = res
  num_keys = k.shape[2]
  # δ = rowsum(dO ⊙ O) [B, K, G, T], in float32 like the scores.
  delta = jnp.einsum('bkgth,bkgth->bkgt', dout, out, preferred_element_type=jnp.float32)
  dq_blocks = []
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  for (r0, r1), p in zip(_blocks(q.shape[3], num_blocks), probs):
    end = _key_end(q, k, r1)
    do = dout[:, :, :, r0:r1]
    dv += _pad_keys(jnp.einsum('bkgts,bkgth->bksh', p, do,
                               preferred_element_type=jnp.float32), num_keys)
    dp = jnp.einsum('bkgth,bksh->bkgts', do, v[:, :, :end], preferred_element_type=jnp.float32)
    ds = p.astype(jnp.float32) * (dp - delta[..., r0:r1, None])
    # Masked scores were constants in the forward: no gradient flows through them.
    ds = jnp.where(mask[:, None, None, r0:r1, :end], ds, 0.0).astype(q.dtype)
    dq_blocks.append(jnp.einsum('bkgts,bksh->bkgth', ds, k[:, :, :end],
                                preferred_element_type=jnp.float32) * scale)
    dk += _pad_keys(jnp.einsum('bkgts,bkgth->bksh', ds, q[:, :, :, r0:r1],
                               preferred_element_type=jnp.float32), num_keys) * scale
  dq = jnp.concatenate(dq_blocks, axis=3)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------
# Attention through `jax.nn.dot_product_attention`.


def dot_product_implementation(q, k) -> str:
  """'cudnn' where cuDNN's flash attention takes q and k on this backend, else 'xla'.

  `jax.nn.dot_product_attention(implementation=None)` still means XLA in jax 0.10.2 (its
  source: "defaults to XLA for now"), so the choice is made here, from what jax's cuDNN
  path checks at lowering time (`check_is_flash_attention`): an NVIDIA GPU, bf16/fp16
  operands, head_dim a multiple of 8 and at most 128 (256 needs Hopper; 128 holds on every
  card), and even T and S (training with a bias, which the boolean mask becomes).

  Args:
    q: [B, T, N, H] queries.
    k: [B, S, K, H] keys.
  """
  t, h, s = q.shape[1], q.shape[-1], k.shape[1]
  if (jax.default_backend() == 'gpu'
      and 'nvidia' in jax.devices()[0].device_kind.lower()
      and q.dtype in (jnp.bfloat16, jnp.float16)
      and h % 8 == 0 and h <= 128 and t % 2 == 0 and s % 2 == 0):
    return 'cudnn'
  return 'xla'


def dot_product_attention(q, k, v, mask, *, scale: float | None = None,
                          implementation: str | None = None):
  """Grouped-query attention through `jax.nn.dot_product_attention` (no soft-capping).

  Shapes as `attention_reference`: q [B, T, K, G, H], k/v [B, S, K, H], mask [B or 1, T, S]
  bool -> [B, T, K, G, H]; the queries are the last T of the S key positions.

  What the API does natively in jax 0.10.2, and what is used of it:
    GQA           native (query heads n -> kv head n // G, the model's grouping): used.
    is_causal     index-causal from the top-left corner (query t sees keys <= t), right
                  only when T == S: passed then, so that cuDNN skips the upper triangle;
                  redundant with `mask` for the values.
    local_window_size, query_seq_lengths / key_value_seq_lengths
                  index windows and right padding only: wrong for left padding, for
                  windows counted in RoPE positions and for T < S (a completion after a
                  shared prompt's keys), so not used; they are in `mask`.
    segment ids   no argument for them (cuDNN's packed layout is not exposed): in `mask`.
    mask          a boolean [B, 1, T, S], broadcast over the heads: carries all of the
                  above exactly (cuDNN turns it into an additive bias).
    soft-capping  none: Gemma 2's layers (attn_logit_softcapping) take the autodiff
                  formula instead (`models.llama.Attention` falls back automatically).

  A fully masked query row (padding) averages all values (XLA's finite minimum, like
  `attention_reference`); such rows are never read.

  Args:
    q, k, v, mask: as above.
    scale: the factor on q·k (default H^-1/2).
    implementation: 'xla', 'cudnn', or None for `dot_product_implementation`'s choice.
  """
  b, t, kv, g, h = q.shape
  s = k.shape[1]
  query = q.reshape(b, t, kv * g, h)  # [B, T, N, H], head n = (n // G, n % G)
  if implementation is None:
    implementation = dot_product_implementation(query, k)
  out = jax.nn.dot_product_attention(
      query, k, v, mask=mask[:, None, :, :], scale=scale, is_causal=t == s,
      implementation=implementation)  # [B, T, N, H]
  return out.reshape(b, t, kv, g, h)


# ----------------------------------------------------------------------------
# Attention through the Pallas TPU flash-attention kernel.

# The masked entries of the additive bias that carries the model's mask into the Pallas
# kernel, in units of the scaled scores (the bias is this / scale: the kernel computes
# (q·k + ab)·scale). Large enough that exp(score − 1e6 − row max) underflows to exactly 0
# for any real score (|scaled score| < 1e5), small enough that rounding stays small: with
# ab ~ −0.1·float32 max, a row the bias masks entirely (padding queries) gave NaN outputs,
# and NaN in dk and dv through the backward's rowsum(dO ⊙ O), on XLA:CPU in interpret mode
# when the scale was not a power of two (c = 8^-0.5; not 1/2 or 1/4): ab·c and the row max
# it is compared with were rounded differently, an error of ~1e22 inside the exp.
_BIAS_MASK_VALUE = -1e6
# The kernel's tiles are multiples of 128 along the sequences (its MIN_BLOCK_SIZE) and its
# head_dim is at most 128 or a multiple of it.
PALLAS_BLOCK = 128


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def pallas_attention(q, k, v, mask, *, scale: float | None = None,
                     block_size: int = PALLAS_BLOCK, interpret: bool = False):
  """Grouped-query attention through the Pallas TPU flash-attention kernel (no soft-capping).

  Shapes as `attention_reference`: q [B, T, K, G, H], k/v [B, S, K, H], mask [B or 1, T, S]
  bool -> [B, T, K, G, H]; the queries are the last T of the S key positions.

  The kernel is `jax.experimental.pallas.ops.tpu.flash_attention.flash_attention` (jax
  0.10.2): q [B, N, T, H], k/v [B, N, S, H], an optional additive bias `ab` [B, N, T, S],
  optional segment ids (q [B, T], kv [B, S]), `causal` (index-causal from the top-left
  corner: query t sees keys <= t), `sm_scale`, tile sizes; its own custom VJP (backward
  kernels for dq and dk/dv, recomputing the probabilities from the saved row max and sum).
  What it expresses natively, and what is used of it:
    GQA           none (one kv head per query head): k/v are repeated G times to
                  [B, N = K·G, S, H] (query head n -> kv head n // G, the model's grouping;
                  autodiff of the repeat sums the G gradients back), G× their memory.
    causal        right only when T == S: passed then, so that the kernel skips the tiles
                  above the diagonal (about half the FLOPs); redundant with `ab`.
    segment ids   equality of ids only (packing, and key padding as id 0), but the model
                  hands `_attend` the dense mask, not the ids: not used.
    windows, T < S, left padding
                  no native form (no window; the causal flag is top-left aligned, wrong for
                  the last T of S keys): in `ab`.
    ab            the dense mask as a bias: 0 where `mask`, `_BIAS_MASK_VALUE` / scale
                  elsewhere (−10⁶ on the scaled scores: exp of it is exactly 0 next to any
                  real score), bf16 [B, N, T, S] (materialised per head, the kernel checks
                  that shape):
                  every mask the model builds is exact this way: causal, left/right key
                  padding, packed segments, sliding windows counted in RoPE positions, a
                  completion after a shared prompt's keys (T < S). The kernel also writes the
                  bias's gradient [B, N, T, S] in the backward, which is dropped.
    soft-capping  none: Gemma 2's layers take the autodiff formula (`models.llama.Attention`
                  falls back automatically).
  Splash attention (`...ops.tpu.splash_attention`) has native GQA and segment ids but a
  static mask (numpy, fixed at trace time): the model's data-dependent masks cannot be
  passed to it under jit, so it is not used.

  Tiling: the sequences are zero-padded at the end to multiples of `block_size` (T to Tp,
  S to Sp; the kernel needs the key length divisible by its tiles and its tiles multiples of
  128), padded keys masked and padded queries sliced off; with T == S both pad alike, so
  the causal flag stays right. head_dim H > 128 that is not a multiple of 128 is zero-padded
  to one (zeros add nothing to q·k, and the padded output columns are sliced off).
  A query that sees no key at all (padding) gets a softmax over the keys the kernel itself
  does not mask (its causal ones when T == S, all Sp when T < S), all biased alike, rather
  than `attention_reference`'s uniform average over the S keys; such rows are never read.

  The scale multiplies the float32 scores inside the kernel (`sm_scale`, after the bias is
  added), as in `attention_reference`.

  Args:
    q, k, v, mask: as above.
    scale: the factor on q·k (default H^-1/2).
    block_size: the kernel's query and key tiles, forward and backward (a multiple of 128).
    interpret: run the kernel in Pallas's TPU interpret mode (`pltpu.force_tpu_interpret_mode`,
      any backend, slow: tests). Otherwise it compiles with Mosaic, which needs a TPU; on
      another backend this raises a ValueError naming `config.model.attention_impl`.
  """
  if not interpret and jax.default_backend() != 'tpu':
    raise ValueError(
        f"config.model.attention_impl='pallas' compiles the Pallas TPU flash-attention "
        f"kernel, which needs a TPU (this backend is {jax.default_backend()!r}); use "
        f"'dot_product', 'custom_vjp' or 'autodiff', or 'pallas_interpret' to run the kernel "
        f"in Pallas's (slow) TPU interpret mode")
  if block_size % PALLAS_BLOCK:
    raise ValueError(f'block_size={block_size} must be a multiple of {PALLAS_BLOCK}.')
  from jax.experimental.pallas.ops.tpu import flash_attention as flash  # TPU-only module

  b, t, kv, g, h = q.shape
  s = k.shape[1]
  scale = h ** -0.5 if scale is None else float(scale)
  tp, sp = _round_up(t, block_size), _round_up(s, block_size)
  hp = h if h <= PALLAS_BLOCK else _round_up(h, PALLAS_BLOCK)
  # Head-major layouts of the kernel, zero-padded: q [B, N, Tp, Hp], k/v [B, N, Sp, Hp].
  query = jnp.pad(q.reshape(b, t, kv * g, h).transpose(0, 2, 1, 3),
                  ((0, 0), (0, 0), (0, tp - t), (0, hp - h)))
  pad_kv = lambda x: jnp.repeat(
      jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, sp - s), (0, hp - h))), g, axis=1)
  key, value = pad_kv(k), pad_kv(v)
  keep = jnp.pad(jnp.broadcast_to(mask, (b, t, s)), ((0, 0), (0, tp - t), (0, sp - s)))
  bias = jnp.where(keep, 0.0, _BIAS_MASK_VALUE / scale).astype(jnp.bfloat16)
  bias = jnp.broadcast_to(bias[:, None], (b, kv * g, tp, sp))  # [B, N, Tp, Sp]
  blocks = flash.BlockSizes(
      block_q=block_size, block_k_major=block_size, block_k=block_size, block_b=1,
      block_q_major_dkv=block_size, block_k_major_dkv=block_size, block_k_dkv=block_size,
      block_q_dkv=block_size, block_k_major_dq=block_size, block_k_dq=block_size,
      block_q_dq=block_size)
  kernel = functools.partial(flash.flash_attention, causal=t == s, sm_scale=scale,
                             block_sizes=blocks)
  out = (_interpreted(query, key, value, bias, kernel) if interpret
         else kernel(query, key, value, bias))  # [B, N, Tp, Hp]
  return out[:, :, :t, :h].transpose(0, 2, 1, 3).reshape(b, t, kv, g, h)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _interpreted(q, k, v, ab, kernel):
  """kernel(q, k, v, ab) traced under Pallas's TPU interpret mode, its backward too.

  The mode is a trace-time setting: the kernel's own VJP traces its backward kernels when
  the caller transposes (after this function has returned), so the backward re-enters the
  mode here, through the pullback saved by the forward.
  """
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    return kernel(q, k, v, ab)


def _interpreted_fwd(q, k, v, ab, kernel):
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    out, pullback = jax.vjp(kernel, q, k, v, ab)
  return out, pullback


def _interpreted_bwd(kernel, pullback, dout):
  del kernel
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    return pullback(dout)


_interpreted.defvjp(_interpreted_fwd, _interpreted_bwd)
