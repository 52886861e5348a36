"""Every attention path against the plain einsum attention (`attention_impl='autodiff'`).

`attention_impl='dot_product'` routes through `jax.nn.dot_product_attention` (XLA on CPU;
cuDNN on NVIDIA GPUs, checked by experiments/device_check.py there). Values and gradients
must match the einsum formula with GQA, key padding, packed segments, a sliding window and
queries that are the last T of S keys (a completion after a shared prompt).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import ModelConfig, Transformer, kernels
from models.llama import make_attention_mask, sliding_window_mask

TOL = 2e-5


def _value_and_vjp(fn, q, k, v, mask, dout):
  """(fn(q, k, v, mask), its vjp of dout for q, k, v), in one jitted program."""
  def run(q, k, v, mask, dout):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
    return out, vjp(dout)
  return jax.jit(run)(q, k, v, mask, dout)


def _close(a, b, tol=TOL):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


def _qkv(b, t, s, kv, g, h, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (b, t, kv, g, h))
  k = jax.random.normal(keys[1], (b, s, kv, h))
  v = jax.random.normal(keys[2], (b, s, kv, h))
  dout = jax.random.normal(keys[3], (b, t, kv, g, h))
  return q, k, v, dout


def _masks():
  """name -> [B, T, T] bool masks of the cases, B = 2, T = 8."""
  t = 8
  causal = make_attention_mask(t)
  padded = make_attention_mask(t, jnp.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 6 + [0, 0]]))
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 2, 2, 2]])
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 2]])
  packed = make_attention_mask(t, segments != 0, segments)
  window = packed & sliding_window_mask(positions, positions, 3)
  return {'causal': jnp.broadcast_to(causal, (2, t, t)), 'padded': padded, 'packed': packed,
          'packed_sliding_window': window}


@pytest.mark.parametrize('case', list(_masks()))
def test_dot_product_matches_einsum(case):
  """GQA (K = 2 kv heads, G = 2 queries each) under every mask: values and gradients."""
  mask = _masks()[case]
  q, k, v, dout = _qkv(2, 8, 8, 2, 2, 4)
  # Fully masked query rows (padding) are never read: compare the others.
  real = jnp.any(mask, axis=-1)[:, :, None, None, None]  # [B, T, 1, 1, 1]
  dout = jnp.where(real, dout, 0.0)
  out, grads = _value_and_vjp(kernels.dot_product_attention, q, k, v, mask, dout)
  ref, ref_grads = _value_and_vjp(kernels.attention_reference, q, k, v, mask, dout)
  _close(jnp.where(real, out, 0.0), jnp.where(real, ref, 0.0))
  _close(grads, ref_grads)


def test_dot_product_queries_as_last_keys():
  """T < S (suffix queries after a padded prompt's keys): no top-left causal mask applies."""
  b, t, s = 2, 5, 8
  q, k, v, dout = _qkv(b, t, s, 1, 2, 4, seed=3)
  prompt_keys = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
  causal = make_attention_mask(t, jnp.array([[1] * 5, [1, 1, 1, 0, 0]]))  # [B, T, T]
  mask = jnp.concatenate([jnp.broadcast_to(prompt_keys[:, None], (b, t, 3)), causal], axis=2)
  out, grads = _value_and_vjp(kernels.dot_product_attention, q, k, v, mask, dout)
  ref, ref_grads = _value_and_vjp(kernels.attention_reference, q, k, v, mask, dout)
  _close(out, ref)
  _close(grads, ref_grads)


def test_implementation_choice_on_cpu():
  q = jnp.zeros((1, 8, 4, 64), jnp.bfloat16)
  assert kernels.dot_product_implementation(q, q) == (
      'cudnn' if jax.default_backend() == 'gpu' else 'xla')
  assert kernels.dot_product_implementation(q.astype(jnp.float32), q) == 'xla'


def _model_loss_and_grads(cfg: ModelConfig, params=None):
  """(loss, grads, params) of a packed batch and a shared prompt forward through the model."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))),
                              nnx.Param)
  if params is None:
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape)
                                                + (s.ndim == 1), jnp.float32),
                          nnx.to_pure_dict(state))
  ids = jnp.asarray(np.random.RandomState(1).randint(3, 64, (2, 8)), jnp.int32)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 2, 2, 2]])
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 2]])
  real = (segments != 0)[..., None]

  def loss_fn(p):
    nnx.replace_by_pure_dict(state, p)
    m = nnx.merge(graphdef, state)
    h = m.hidden_states(ids, positions=positions, segment_ids=segments)  # [B, T, D]
    _, suffix = m.prefix_shared_hidden_states(
        ids[:, :3], jnp.array([[1, 1, 0], [1, 1, 1]]),
        jnp.concatenate([ids[:, 3:], ids[::-1, 3:]]), jnp.ones((4, 5), jnp.int32))
    return jnp.mean(jnp.where(real, h, 0.0) ** 2) + jnp.mean(suffix ** 2)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  return loss, grads, params


@pytest.mark.slow  # two whole-model gradient compiles: ~30 s on 2 loaded CPU cores
def test_model_dot_product_matches_autodiff():
  """The whole model (GQA, packed segments, sliding window on the odd layer, a shared
  prompt forward) with attention_impl='dot_product' against 'autodiff'."""
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                    num_heads=4, num_kv_heads=2, sliding_window=3,
                    layer_types=('sliding_attention', 'full_attention'),
                    attention_impl='autodiff', mlp_impl='autodiff', architecture='qwen2',
                    qkv_bias=True)
  ref_loss, ref_grads, params = _model_loss_and_grads(cfg)
  loss, grads, _ = _model_loss_and_grads(cfg.replace(attention_impl='dot_product'), params)
  _close(loss, ref_loss)
  _close(grads, ref_grads)


def test_softcap_falls_back_to_autodiff():
  """Gemma 2's soft-capped scores cannot go through jax.nn.dot_product_attention."""
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1,
                    num_heads=4, num_kv_heads=2, attn_logit_softcapping=50.0,
                    attention_impl='dot_product')
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  assert model.layers[0].attn.impl == 'autodiff'
