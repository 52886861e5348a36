"""The completion-window head (training/fused_logprobs.py) equals token_logps where it counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import ModelConfig, Transformer
from training import fused_logprobs
from training.logprobs import token_logps


def _batch():
  """Right-padded rows with prompts of 2..4 tokens and completions of 3..5 tokens."""
  ids = jax.random.randint(jax.random.key(3), (3, 10), 3, 40)
  prompt, completion = np.array([2, 4, 3]), np.array([5, 3, 4])
  t = np.arange(10)
  attention = (t < (prompt + completion)[:, None]).astype(np.int32)
  loss = ((t >= prompt[:, None]) & (t < (prompt + completion)[:, None])).astype(np.float32)
  return ids, jnp.asarray(attention), jnp.asarray(loss)


@pytest.mark.parametrize("tied", [False, True])
def test_values_and_grads_match_token_logps(tied):
  cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=1,
                    num_heads=2, num_kv_heads=1, tie_word_embeddings=tied)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  ids, attention, loss_mask = _batch()
  weights = jnp.linspace(0.5, 2.0, ids.size).reshape(ids.shape)  # a non-uniform cotangent

  def masked_sum(p, fused):
    model = nnx.merge(graphdef, p)
    if fused:
      logps = fused_logprobs.completion_token_logps(model, ids, attention, loss_mask,
                                                    max_completion_len=5)
    else:
      logps = token_logps(model, ids, attention)
    return jnp.sum(jnp.where(loss_mask > 0, logps * weights, 0.0)), logps

  grad_fn = jax.jit(jax.value_and_grad(masked_sum, has_aux=True), static_argnums=1)
  (value, logps), grads = grad_fn(params, True)
  (ref_value, ref_logps), ref_grads = grad_fn(params, False)
  np.testing.assert_allclose(np.where(loss_mask > 0, logps, 0),
                             np.where(loss_mask > 0, ref_logps, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               nnx.to_pure_dict(grads), nnx.to_pure_dict(ref_grads))


def test_completion_longer_than_window_is_nan():
  cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=1,
                    num_heads=2, num_kv_heads=1)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  ids, attention, loss_mask = _batch()
  logps = jax.jit(lambda p: fused_logprobs.completion_token_logps(
      nnx.merge(graphdef, p), ids, attention, loss_mask, max_completion_len=4))(params)
  assert np.isnan(np.asarray(logps)[0]).all()  # row 0 has 5 completion tokens
  assert np.isfinite(np.asarray(logps)[1:]).all()
