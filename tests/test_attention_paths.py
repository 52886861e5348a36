"""Every attention path against the plain einsum attention (`attention_impl='autodiff'`).

`attention_impl='dot_product'` routes through `jax.nn.dot_product_attention` (XLA on CPU;
cuDNN on NVIDIA GPUs, checked by experiments/device_check.py there). `'pallas'` is the
Pallas TPU flash-attention kernel (`kernels.pallas_attention`), checked here in Pallas's
TPU interpret mode (`'pallas_interpret'`), which runs it on CPU. Values and gradients
must match the einsum formula with GQA, key padding, packed segments, a sliding window and
queries that are the last T of S keys (a completion after a shared prompt).
"""

import functools

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


@pytest.mark.slow  # two whole-model gradient compiles each: ~20-30 s on 2 loaded CPU cores
@pytest.mark.parametrize('impl', ['dot_product', 'pallas_interpret'])
def test_model_matches_autodiff(impl):
  """The whole model (GQA, packed segments, sliding window on the odd layer, a shared
  prompt forward) with attention_impl=`impl` against 'autodiff'."""
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                    num_heads=4, num_kv_heads=2, sliding_window=3,
                    layer_types=('sliding_attention', 'full_attention'),
                    attention_impl='autodiff', mlp_impl='autodiff', architecture='qwen2',
                    qkv_bias=True)
  ref_loss, ref_grads, params = _model_loss_and_grads(cfg)
  loss, grads, _ = _model_loss_and_grads(cfg.replace(attention_impl=impl), params)
  _close(loss, ref_loss)
  _close(grads, ref_grads)


@pytest.mark.parametrize('impl', ['dot_product', 'pallas'])
def test_softcap_falls_back_to_autodiff(impl):
  """Gemma 2's soft-capped scores go through neither jax.nn.dot_product_attention nor the
  Pallas kernel."""
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1,
                    num_heads=4, num_kv_heads=2, attn_logit_softcapping=50.0,
                    attention_impl=impl)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  assert model.layers[0].attn.impl == 'autodiff'


# --- The Pallas TPU flash-attention kernel, in Pallas's TPU interpret mode on CPU ---
# Interpret mode simulates the TPU per grid step: 2-3 s per test with its compiles on 2
# loaded CPU cores (5-7 s for the first and for 2 x 2 tiles), so the shapes are tiny (the
# kernel pads every sequence to 128 anyway). Max abs errors against the einsum in fp32:
# values <= 5e-7, gradients <= 5e-7 (one tile), <= 4e-6 (2 x 2 tiles, H = 160).

_pallas = functools.partial(kernels.pallas_attention, interpret=True)


def _check_pallas(q, k, v, dout, mask, **kwargs):
  """pallas_attention against attention_reference on the rows that see a key."""
  real = jnp.any(mask, axis=-1)[:, :, None, None, None]  # [B, T, 1, 1, 1]
  dout = jnp.where(real, dout, 0.0)
  fn = functools.partial(_pallas, **kwargs)
  ref_fn = functools.partial(kernels.attention_reference, scale=kwargs.get('scale'))
  out, grads = _value_and_vjp(fn, q, k, v, mask, dout)
  ref, ref_grads = _value_and_vjp(ref_fn, q, k, v, mask, dout)
  _close(jnp.where(real, out, 0.0), jnp.where(real, ref, 0.0))
  _close(grads, ref_grads)


@pytest.mark.parametrize('case', list(_masks()))
def test_pallas_matches_einsum(case):
  """GQA (K = 2, G = 2) under every mask, T = S = 8 (one 128 tile after padding); H = 8,
  whose scale 8^-0.5 is not a power of two (see kernels._BIAS_MASK_VALUE)."""
  _check_pallas(*_qkv(2, 8, 8, 2, 2, 8), _masks()[case])


def test_pallas_queries_as_last_keys():
  """T < S (suffix queries after a padded prompt's keys): the bias carries the mask,
  the kernel's top-left causal flag is off."""
  b, t, s = 2, 5, 8
  prompt_keys = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
  causal = make_attention_mask(t, jnp.array([[1] * 5, [1, 1, 1, 0, 0]]))  # [B, T, T]
  mask = jnp.concatenate([jnp.broadcast_to(prompt_keys[:, None], (b, t, 3)), causal], axis=2)
  _check_pallas(*_qkv(b, t, s, 2, 2, 8, seed=3), mask)


def test_pallas_several_tiles():
  """T = S = 150, padded to 256 = 2 x 2 tiles of 128 (the causal flag skips the tile above
  the diagonal); packed segments with key padding and a window of 40 positions; H = 160 >
  128, zero-padded to 256; a scale > 1 (the bias is divided by it to stay finite)."""
  t = 150
  q, k, v, dout = _qkv(1, t, t, 1, 2, 160, seed=5)
  segments = jnp.concatenate([jnp.full(90, 1), jnp.full(50, 2), jnp.zeros(10, int)])[None]
  positions = jnp.concatenate([jnp.arange(90), jnp.arange(50), jnp.zeros(10, int)])[None]
  mask = (make_attention_mask(t, segments != 0, segments)
          & sliding_window_mask(positions, positions, 40))
  _check_pallas(q / 8, k / 8, v, dout, mask, scale=1.5)


def test_pallas_needs_a_tpu():
  """Without interpret mode the kernel is refused off TPU, naming the config field."""
  if jax.default_backend() == 'tpu':
    pytest.skip('on a TPU the kernel compiles')
  q, k, v, _ = _qkv(1, 8, 8, 1, 1, 4)
  with pytest.raises(ValueError, match='attention_impl'):
    kernels.pallas_attention(q, k, v, make_attention_mask(8))


def test_config_check_refuses_pallas_off_tpu():
  from tests.conftest import micro_config
  from training import config_check

  config_check.validate(micro_config(**{'model.attention_impl': 'pallas_interpret'}))
  if jax.default_backend() != 'tpu':
    with pytest.raises(config_check.ConfigError, match='model.attention_impl'):
      config_check.validate(micro_config(**{'model.attention_impl': 'pallas'}))
