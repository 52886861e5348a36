"""The hand-written backward passes of models/kernels.py equal autodiff of the plain formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import ModelConfig, Transformer, kernels
from models.llama import make_attention_mask


def _close(a, b, tol=2e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


def test_swiglu_value_and_grads():
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (2, 5, 8))
  wg, wu = (0.3 * jax.random.normal(k, (8, 12)) for k in keys[1:3])
  wd = 0.3 * jax.random.normal(keys[3], (12, 8))
  dy = jax.random.normal(keys[4], (2, 5, 8))  # a non-trivial cotangent
  args = (x, wg, wu, wd)
  out, vjp = jax.vjp(kernels.swiglu, *args)
  ref_out, ref_vjp = jax.vjp(kernels.swiglu_reference, *args)
  _close(out, ref_out)
  _close(vjp(dy), ref_vjp(dy))


@pytest.mark.parametrize("num_blocks", [1, 3])  # 3 blocks of 3, 3 and 1 queries
def test_attention_value_and_grads(num_blocks):
  b, t, kv, g, h = 2, 7, 2, 2, 4
  keys = jax.random.split(jax.random.key(1), 4)
  q = jax.random.normal(keys[0], (b, t, kv, g, h))
  k = jax.random.normal(keys[1], (b, t, kv, h))
  v = jax.random.normal(keys[2], (b, t, kv, h))
  dout = jax.random.normal(keys[3], (b, t, kv, g, h))
  # Left padding on row 0 gives fully masked query rows; right padding on row 1.
  attention_mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
  mask = make_attention_mask(t, attention_mask)
  # A query with no visible key (left padding) averages the values of its block's keys
  # instead of all keys; such rows are padding, never read, so compare the others.
  real = jnp.any(mask, axis=-1)[:, :, None, None, None]  # [B, T, 1, 1, 1]
  dout = jnp.where(real, dout, 0.0)
  out, vjp = jax.vjp(lambda q, k, v: kernels.attention(q, k, v, mask, num_blocks), q, k, v)
  ref_out, ref_vjp = jax.vjp(lambda q, k, v: kernels.attention_reference(q, k, v, mask),
                             q, k, v)
  _close(jnp.where(real, out, 0.0), jnp.where(real, ref_out, 0.0))
  _close(vjp(dout), ref_vjp(dout))


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_attention_queries_as_last_keys(num_blocks):
  """T < S: the queries are the last T of S keys (completions after a shared prompt), with
  key padding in the middle of the key axis."""
  b, t, s, kv, g, h = 2, 5, 8, 1, 2, 4
  keys = jax.random.split(jax.random.key(4), 4)
  q = jax.random.normal(keys[0], (b, t, kv, g, h))
  k = jax.random.normal(keys[1], (b, s, kv, h))
  v = jax.random.normal(keys[2], (b, s, kv, h))
  dout = jax.random.normal(keys[3], (b, t, kv, g, h))
  prompt_keys = jnp.array([[1, 1, 0], [1, 1, 1]], bool)  # row 0: one padded prompt key
  causal = make_attention_mask(t, jnp.array([[1] * 5, [1, 1, 1, 0, 0]]))  # [B, T, T]
  mask = jnp.concatenate([jnp.broadcast_to(prompt_keys[:, None], (b, t, 3)), causal], axis=2)
  out, vjp = jax.vjp(lambda q, k, v: kernels.attention(q, k, v, mask, num_blocks), q, k, v)
  ref_out, ref_vjp = jax.vjp(lambda q, k, v: kernels.attention_reference(q, k, v, mask),
                             q, k, v)
  _close(out, ref_out)
  _close(vjp(dout), ref_vjp(dout))


def test_model_grads_match_autodiff():
  cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2,
                    num_heads=4, num_kv_heads=2, attention_query_blocks=3)
  fast = Transformer(cfg, rngs=nnx.Rngs(0))
  plain = Transformer(cfg.replace(mlp_impl="autodiff", attention_impl="autodiff"),
                      rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(2), (2, 9), 0, 32)
  mask = jnp.array([[1] * 9, [1] * 6 + [0] * 3])

  def loss_and_grads(model):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
      logits = nnx.merge(graphdef, p)(ids, attention_mask=mask)
      return jnp.sum(jax.nn.log_softmax(logits) * jnp.cos(logits))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return value, nnx.to_pure_dict(grads)

  _close(loss_and_grads(fast), loss_and_grads(plain), tol=1e-4)
