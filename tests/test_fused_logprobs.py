"""The completion-window head (training/fused_logprobs.py) and the shared prompt forward
(training/shared_prompt.py) equal token_logps where it counts."""

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


# --- The completion head inside the production step (training/step.py, training/loop.py) ---

def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _steps(step_fn, exp, num_steps):
  """`num_steps` jitted steps from exp.state on the first training batches."""
  from training.mesh import put_batch

  step_fn = jax.jit(step_fn)
  state, history = exp.state, []
  for s in range(num_steps):
    state, metrics = step_fn(state, exp.ref_params, put_batch(exp.train_batches.batch(s),
                                                              exp.mesh))
    history.append(jax.device_get(metrics))
  return state, history


# The two ways that skip work: the completion-window head, and the shared prompt forward.
_FAST = {"completion_head": {"model.logits_on": "completion"},
         "shared_prompt": {"model.share_prompt": True}}


@pytest.mark.parametrize("fast", list(_FAST))
@pytest.mark.parametrize("overrides", [
    {"loss.name": "dpo", "eval_batch_size": 16},
    {"loss.name": "simpo", "loss.beta": 2.0, "loss.sft_weight": 1.0},
    # ~30 s each; gradient accumulation's equivalence is also checked in test_training
    pytest.param({"loss.name": "dpo", "grad_accum_steps": 2}, marks=pytest.mark.slow),
], ids=["dpo", "simpo_reference_free", "dpo_grad_accum_2"])
def test_train_and_eval_step_fast_logps_equal_full_head(tmp_path, tfds_dir, overrides, fast):
  """loop's step with the completion head or the shared prompt == the plain full head:
  loss, metrics, params, and the eval step."""
  from tests.conftest import micro_config
  from training import experiment
  from training.mesh import put_batch
  from training.step import LogpOptions, make_eval_step, make_train_step

  # Completions here are 7..13 tokens: a 14-token window (of 31 positions) moves per row.
  config = micro_config(**{"data.data_dir": tfds_dir, "data.max_completion_len": 14},
                        **_FAST[fast], **overrides)
  exp = experiment.build(config, str(tmp_path))
  full = make_train_step(exp.graphdef, exp.algorithm, config.loss, exp.optimizer,
                         exp.schedule, grad_accum_steps=config.grad_accum_steps)
  state_c, hist_c = _steps(experiment.make_train_step_for(exp), exp, 2)
  state_a, hist_a = _steps(full, exp, 2)
  assert exp.train_batches.batch(0)["chosen_ids"].shape[1] - 1 > 14  # a real window
  for hc, ha in zip(hist_c, hist_a):
    assert hc["nonfinite"] == 0 and set(hc) == set(ha)
    for name in ha:
      np.testing.assert_allclose(hc[name], ha[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # Adam's g / sqrt(v) magnifies rounding in near-zero gradients (as in test_training's
  # gradient-accumulation test): 1e-5 is 1% of one update at this learning rate.
  for c, a in zip(_leaves(state_c.params), _leaves(state_a.params)):
    np.testing.assert_allclose(c, a, atol=1e-5)

  # The eval step, over every eval batch (filler rows of weight 0 included when the split
  # does not fill the last batch).
  evals = [jax.jit(make_eval_step(exp.graphdef, exp.algorithm, config.loss, logps=logps))
           for logps in (experiment.logp_options(config), LogpOptions())]
  weights = []
  for batch in exp.eval_batches:
    batch = put_batch(batch, exp.mesh)
    (sums_c, w_c), (sums_a, w_a) = (f(exp.state.params, exp.ref_params, batch) for f in evals)
    weights.append(float(w_a))
    assert float(w_c) == float(w_a)
    for name in sums_a:
      np.testing.assert_allclose(sums_c[name], sums_a[name], rtol=1e-5, atol=1e-5,
                                 err_msg=name)
  if "eval_batch_size" in overrides:
    assert weights[-1] < config.eval_batch_size  # the last batch had filler rows


@pytest.mark.parametrize("fast", list(_FAST))
def test_reference_cache_with_fast_logps(tmp_path, tfds_dir, fast):
  """loop._reference_cache's precomputed log-probs equal the full head at mask positions."""
  from tests.conftest import micro_config
  from training import loop
  from training import experiment
  from training.mesh import put_batch
  from training.step import pair_logps

  exp = experiment.build(micro_config(**{"data.data_dir": tfds_dir, "data.max_completion_len": 14,
                                   "reference.mode": "precomputed"}, **_FAST[fast]),
                   str(tmp_path))
  train_cache, _ = loop._reference_cache(exp, str(tmp_path))
  batch = exp.train_batches.batch(0)
  cached = train_cache.attach(batch)
  full = jax.jit(lambda p, b: pair_logps(exp.graphdef, p, b))(exp.ref_params,
                                                              put_batch(batch, exp.mesh))
  for side, ref in zip(("chosen", "rejected"), full):
    mask = batch[f"{side}_loss_mask"] > 0
    np.testing.assert_allclose(np.where(mask, cached[f"ref_{side}_logps"], 0),
                               np.where(mask, ref, 0), rtol=1e-5, atol=1e-6)


def test_pair_logps_single_responses_and_no_window_bound():
  """A batch without a rejected side; max_completion_len=0 means a window of T − 1."""
  from training.step import LogpOptions, pair_logps

  cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=1,
                    num_heads=2, num_kv_heads=1)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  ids, attention, loss_mask = _batch()
  batch = {"chosen_ids": ids, "chosen_attention_mask": attention, "chosen_loss_mask": loss_mask}
  ref, none = pair_logps(graphdef, params, batch)
  assert none is None
  for options in (LogpOptions(logits_on="completion", max_completion_len=5),
                  LogpOptions(logits_on="completion"),
                  LogpOptions(share_prompt=True, max_completion_len=5)):  # no pair: window
    got, none = pair_logps(graphdef, params, batch, options)
    assert none is None and got.shape == ids.shape
    np.testing.assert_allclose(np.where(loss_mask > 0, got, 0), np.where(loss_mask > 0, ref, 0),
                               rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="logits_on"):
    LogpOptions(logits_on="prompt")


def test_config_check_rejects_unknown_logits_on():
  from tests.conftest import micro_config
  from training import config_check

  config_check.validate(micro_config(**{"model.logits_on": "completion"}))
  with pytest.raises(config_check.ConfigError, match="model.logits_on"):
    config_check.validate(micro_config(**{"model.logits_on": "prompt"}))


# --- The shared prompt forward (training/shared_prompt.py) ---

def _pair_batch(prompt=(2, 4, 3), chosen=(5, 3, 4), rejected=(2, 5, 1), length=10, seed=3):
  """Right-padded pair rows whose two sides share their prompt tokens."""
  ids = np.asarray(jax.random.randint(jax.random.key(seed), (2, len(prompt), length), 3, 40))
  t = np.arange(length)
  prompt = np.asarray(prompt)[:, None]
  batch = {}
  for side, completion, side_ids in zip(("chosen", "rejected"), (chosen, rejected), ids):
    end = prompt + np.asarray(completion)[:, None]
    side_ids = np.where(t < prompt, ids[0], side_ids)  # the chosen row's prompt tokens
    batch[f"{side}_ids"] = jnp.asarray(np.where(t < end, side_ids, 0))
    batch[f"{side}_attention_mask"] = jnp.asarray((t < end).astype(np.int32))
    batch[f"{side}_loss_mask"] = jnp.asarray(((t >= prompt) & (t < end)).astype(np.float32))
  return batch


@pytest.mark.parametrize("tied,remat,impl", [(False, "none", "custom_vjp"),
                                             (True, "block", "autodiff")])
def test_shared_prompt_values_and_grads_match_token_logps(tied, remat, impl):
  from training.step import LogpOptions, pair_logps

  cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=2,
                    num_heads=4, num_kv_heads=2, tie_word_embeddings=tied, qkv_bias=True,
                    remat=remat, attention_impl=impl, mlp_impl=impl, attention_query_blocks=3)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  # Non-zero qkv biases, so that a wrong position or mask would show.
  for layer in model.layers:
    for name in ("q_bias", "k_bias", "v_bias"):
      bias = getattr(layer.attn, name)
      bias[...] = 0.3 * jax.random.normal(jax.random.key(7), bias.shape)
  graphdef, params = nnx.split(model, nnx.Param)
  batch = _pair_batch()
  masks = (batch["chosen_loss_mask"], batch["rejected_loss_mask"])
  weights = jnp.linspace(0.5, 2.0, masks[0].size).reshape(masks[0].shape)

  def masked_sum(p, options):
    logps = pair_logps(graphdef, p, batch, options)
    total = sum(jnp.sum(jnp.where(m > 0, lp * weights * (1 + s), 0.0))
                for s, (lp, m) in enumerate(zip(logps, masks)))
    return total, logps

  grad_fn = jax.jit(jax.value_and_grad(masked_sum, has_aux=True), static_argnums=1)
  (value, logps), grads = grad_fn(params, LogpOptions(share_prompt=True, max_prompt_len=5,
                                                      max_completion_len=6))
  (ref_value, ref_logps), ref_grads = grad_fn(params, LogpOptions())
  for got, ref, mask in zip(logps, ref_logps, masks):
    np.testing.assert_allclose(np.where(mask > 0, got, 0), np.where(mask > 0, ref, 0),
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               nnx.to_pure_dict(grads), nnx.to_pure_dict(ref_grads))


@pytest.mark.parametrize("case", ["other_prompt_token", "other_prompt_length",
                                  "prompt_over_window", "completion_over_window"])
def test_shared_prompt_poisons_pairs_it_cannot_share(case):
  """A pair whose sides do not share their prompt, or that does not fit the windows, is NaN
  on both rows; the other pairs are untouched."""
  from training.step import LogpOptions, pair_logps

  cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=1,
                    num_heads=2, num_kv_heads=1)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  options = LogpOptions(share_prompt=True, max_prompt_len=4, max_completion_len=5)
  batch = _pair_batch()
  bad = 1
  if case == "other_prompt_token":
    batch["rejected_ids"] = batch["rejected_ids"].at[bad, 1].add(1)
  elif case == "other_prompt_length":  # the rejected row's completion starts one later
    batch["rejected_loss_mask"] = batch["rejected_loss_mask"].at[bad, 4].set(0.0)
  elif case == "prompt_over_window":
    options = LogpOptions(share_prompt=True, max_prompt_len=3, max_completion_len=5)
  else:
    options = LogpOptions(share_prompt=True, max_prompt_len=4, max_completion_len=4)
    batch, bad = _pair_batch(rejected=(2, 4, 1)), 0  # only pair 0 has a 5-token completion
  chosen, rejected = pair_logps(graphdef, params, batch, options)
  for logps in (np.asarray(chosen), np.asarray(rejected)):
    assert np.isnan(logps[bad]).all()
    assert np.isfinite(np.delete(logps, bad, axis=0)).all()
