"""Remat policies (`ModelConfig.remat`): the same loss and gradients as 'none', less memory.

The policies only decide what the backward pass reads from memory and what it recomputes, so
every one must reproduce 'none' to float rounding, on the plain forward and on the shared
prompt forward (both wrap their blocks); 'offload' needs pinned host memory and is refused
on CPU (training/config_check.py).
"""

import contextlib
import io

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import benchmark
from models import ModelConfig, Transformer
from models.config import REMAT_MODES
from models.llama import remat_blocks

# 'offload' moves residuals to pinned host memory: GPU / TPU only.
CPU_MODES = [mode for mode in REMAT_MODES if mode != 'offload']


def _micro(**kw) -> ModelConfig:
  base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
              num_heads=4, num_kv_heads=2, attention_query_blocks=2)
  return ModelConfig(**dict(base, **kw))


def _model(cfg: ModelConfig) -> Transformer:
  """Numpy-random weights (the same for every cfg of one shape; no jax.random compiles)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape)
                                              + (s.ndim == 1), jnp.float32),
                        nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def _loss_and_grads(cfg: ModelConfig):
  """Next-token loss and parameter gradients, through the plain and the shared prompt forward.

  Returns (loss, grads as a pure dict): loss = the plain forward's mean NLL on a left-padded
  batch + the mean of the shared prompt forward's suffix hidden states.
  """
  model = _model(cfg)
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.RandomState(1)
  ids = jnp.asarray(rng.randint(3, 64, (2, 10)), jnp.int32)  # [B, T]
  mask = jnp.array([[0, 0] + [1] * 8, [1] * 10])  # row 0 left-padded
  prefix_ids, suffix_ids = ids[:, :4], jnp.concatenate([ids[:, 4:], ids[::-1, 4:]])
  prefix_mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])  # [B, P]
  suffix_mask = jnp.ones(suffix_ids.shape, jnp.int32)  # [2B, C]

  def loss_fn(p):
    m = nnx.merge(graphdef, p)
    logp = jax.nn.log_softmax(m(ids[:, :-1], attention_mask=mask[:, :-1]))  # [B, T-1, V]
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0] * mask[:, 1:]
    _, suffix_h = m.prefix_shared_hidden_states(prefix_ids, prefix_mask, suffix_ids,
                                                suffix_mask)
    return nll.mean() + jnp.mean(jnp.square(suffix_h))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  return loss, nnx.to_pure_dict(grads)


@pytest.fixture(scope='module')
def reference():
  return _loss_and_grads(_micro(remat='none'))


@pytest.mark.parametrize('mode', [m for m in CPU_MODES if m != 'none'])
def test_policy_matches_none(mode, reference):
  loss, grads = _loss_and_grads(_micro(remat=mode))
  ref_loss, ref_grads = reference
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               grads, ref_grads)


def test_policies_save_what_they_say():
  """Residuals autodiff keeps per policy (backend-independent): 'dots' keeps the matmul
  outputs but not the [B, K, G, T, S] scores; 'nothing' and 'block' keep the block inputs
  only, the same residuals."""
  cfg = _micro(attention_impl='autodiff')
  ids = jnp.asarray(np.random.RandomState(2).randint(3, 64, (2, 8)), jnp.int32)
  saved = {}
  for mode in CPU_MODES:
    graphdef, state = nnx.split(_model(cfg.replace(remat=mode)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      jax.ad_checkpoint.print_saved_residuals(
          lambda s, x: nnx.merge(graphdef, s)(x).sum(), state, ids)
    saved[mode] = [line for line in out.getvalue().splitlines()
                   if 'from the argument' not in line]
  scores = 'f32[2,2,2,8,8]'  # [B, K, G, T, S]
  nbytes = {mode: benchmark.residual_bytes(lines) for mode, lines in saved.items()}
  assert any(scores in line for line in saved['none'])
  assert not any(scores in line for line in saved['dots'])
  assert nbytes['nothing'] == nbytes['block'] < nbytes['dots'] < nbytes['none'], nbytes


def test_block_is_the_old_nnx_remat():
  """'block' keeps today's program: `nnx.remat` without a policy, 'none' no wrapper."""
  fn = lambda block, x: x
  assert remat_blocks(fn, 'none') is fn
  cfg = _micro(remat='block')
  block = _model(cfg).layers[0]
  x = jnp.ones((1, 4, 32))
  cos, sin = jnp.ones((1, 4, 8)), jnp.zeros((1, 4, 8))
  mask = jnp.tril(jnp.ones((4, 4), bool))[None]
  run = lambda b, x, cos, sin, mask: b(x, cos, sin, mask)
  graphdef, state = nnx.split(block)
  jaxpr = lambda wrap: str(jax.make_jaxpr(
      lambda s, x: wrap(run)(nnx.merge(graphdef, s), x, cos, sin, mask))(state, x))
  old, new = jaxpr(nnx.remat), jaxpr(lambda fn: remat_blocks(fn, 'block'))
  assert old == new


def test_offload_refused_on_cpu():
  from configs import dpo
  from training import config_check

  config = dpo.get_config('bench_tiny')
  config.model.remat = 'offload'
  if jax.default_backend() == 'cpu':
    with pytest.raises(config_check.ConfigError, match='pinned host memory'):
      config_check.validate(config)
  config.model.remat = 'everything'
  with pytest.raises(config_check.ConfigError, match='model.remat'):
    config_check.validate(config)


def test_gradient_memory_plan_nothing_below_none():
  """XLA's plan of the compiled model gradient (no optimizer, a few seconds to compile):
  keeping only the block inputs needs fewer temporaries than keeping everything."""
  temp = {}
  for mode in ('none', 'nothing'):
    cfg = _micro(remat=mode, hidden_size=64, intermediate_size=128)
    graphdef, params = nnx.split(_model(cfg), nnx.Param)
    ids = jnp.zeros((4, 64), jnp.int32)  # [B, T]
    loss = lambda p, ids: jnp.mean(jax.nn.logsumexp(nnx.merge(graphdef, p)(ids), -1))
    compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
    temp[mode] = compiled.memory_analysis().temp_size_in_bytes
  assert temp['nothing'] < temp['none'], temp


@pytest.mark.slow  # two train-step compiles: ~30 s on 2 shared CPU cores
def test_memory_plan_nothing_below_none():
  """XLA's plan of the compiled train step (benchmark --memory_only) at a small shape: keeping
  only the block inputs needs fewer temporaries than keeping everything."""
  from configs import dpo

  plans = {}
  for mode in ('none', 'nothing'):
    config = dpo.get_config('bench_tiny')
    config.model.update(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, remat=mode)
    config.batch_size = 2
    config.data.update(max_prompt_len=16, max_completion_len=48, buckets=(64,))
    plans[mode] = benchmark.compiled_memory(config)
  assert plans['nothing']['remat'] == 'nothing'
  assert (plans['nothing']['saved_residual_bytes'] < plans['none']['saved_residual_bytes'])
  assert (plans['nothing']['peak_memory_bound_bytes']
          < plans['none']['peak_memory_bound_bytes']), plans
