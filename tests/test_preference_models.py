"""GPM / Bradley-Terry reward models (models/heads.py, algorithms/preference.py) and the
GPO / SPPO loss (algorithms/gpo.py).

Expected numbers are algorithms.md §5.3 (float64 numpy script in its appendix).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from algorithms import LossInputs, get_algorithm, get_loss
from algorithms import gpo as gpo_lib
from algorithms import preference
from models import ModelConfig, Transformer, param_partition_specs
from models import heads
from tests.conftest import loss_hyperparameters

V1 = np.array([1.0, 2.0, -1.0, 0.5])
V2 = np.array([0.5, -1.0, 2.0, 1.0])
V3 = np.array([-1.0, 0.5, 0.5, -2.0])
GATES = np.array([0.6224593, 0.3775407])  # softmax([0.3, -0.2])
GPO_EMBEDDINGS = np.array([[1, 2, -1, .5], [.5, -1, 2, 1], [-1, .5, .5, -2], [2, 0, 1, 1],
                           [0, 1, -1, 1]], np.float64)


def unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def loss_cfg(name, **overrides):
  defaults = dict(beta=0.1, preference_tau=0.1, preference_margin=0.0,
                  gpo_loss_type="sppo_score", gpo_target_clamp=1000.0)
  return loss_hyperparameters(name, defaults, **overrides)


def head_inputs(chosen, rejected, gates=None, pair_weights=None):
  f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
  return LossInputs(policy_chosen_logps=None, policy_rejected_logps=None, chosen_mask=None,
                    rejected_mask=None, chosen_values=f32(chosen), rejected_values=f32(rejected),
                    preference_gates=f32(gates), pair_weights=f32(pair_weights))


# ---------------------------------------------------------------------------------------
# The skew-symmetric score.


def test_worked_scores():
  u1, u2 = unit(V1), unit(V2)
  np.testing.assert_allclose(u1, [0.4, 0.8, -0.4, 0.2], atol=1e-12)
  s = preference.gpm_scores(u1, u2)
  np.testing.assert_allclose(float(s), -0.64, atol=1e-6)
  np.testing.assert_allclose(float(preference.gpm_scores(u2, u1)), 0.64, atol=1e-6)
  np.testing.assert_allclose(float(jax.nn.sigmoid(s / 0.1)), 0.0016588011, rtol=1e-5)
  np.testing.assert_allclose(float(preference.gpm_scores(V1, V2)), -4.0, atol=1e-6)
  np.testing.assert_allclose(float(preference.gpm_scores(u1, u2, GATES)), -0.32, atol=1e-6)
  # The cycle: 2 ≻ 1, 3 ≻ 2, 1 ≻ 3, which no scalar reward can represent.
  u3 = unit(V3)
  np.testing.assert_allclose(float(preference.gpm_scores(u2, u3)), -0.8954430087, atol=1e-6)
  np.testing.assert_allclose(float(preference.gpm_scores(u3, u1)), -0.7248824356, atol=1e-6)


def test_k1_is_the_two_dimensional_formula():
  c, r = np.array([0.3, -1.2]), np.array([2.0, 0.7])
  np.testing.assert_allclose(float(preference.gpm_scores(c, r)), c[0] * r[1] - c[1] * r[0],
                             rtol=1e-6)


@pytest.mark.parametrize("with_gates", [False, True])
def test_scores_match_explicit_matrix_and_are_antisymmetric(with_gates):
  rng = np.random.default_rng(0)
  b, k = 5, 3
  vi, vj = rng.normal(size=(b, 2 * k)), rng.normal(size=(b, 2 * k))
  gates = jax.nn.softmax(rng.normal(size=(b, k))) if with_gates else None
  r = preference.skew_operator(k, gates)  # [2k, 2k] or [B, 2k, 2k]
  assert r.shape == ((b,) if with_gates else ()) + (2 * k, 2 * k)
  np.testing.assert_allclose(r, -jnp.swapaxes(r, -1, -2))  # skew-symmetric
  explicit = jnp.einsum("bi,...ji,bj->b", vi, r, vj)  # (v_i @ Rᵀ) · v_j, the official form
  if with_gates:
    explicit = jnp.einsum("bi,bji,bj->b", vi, r, vj)
  s = preference.gpm_scores(vi, vj, gates)
  np.testing.assert_allclose(s, explicit, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(preference.gpm_scores(vj, vi, gates), -s, rtol=1e-6)
  np.testing.assert_allclose(preference.gpm_scores(vi, vi, gates), 0.0, atol=1e-6)


def test_skew_operator_layout():
  r = np.asarray(preference.skew_operator(2, jnp.array([2.0, 3.0])))
  expected = np.array([[0, -2, 0, 0], [2, 0, 0, 0], [0, 0, 0, -3], [0, 0, 3, 0]], float)
  np.testing.assert_array_equal(r, expected)


def test_score_tables():
  u = jnp.asarray(unit(GPO_EMBEDDINGS), jnp.float32)
  table = preference.gpm_score_table(u)
  assert table.shape == (5, 5)
  np.testing.assert_allclose(table, -table.T, atol=1e-6)
  np.testing.assert_allclose(table[0, 1], -0.64, atol=1e-6)
  gated = preference.gpm_score_table(u[None], jnp.asarray(GATES)[None])  # [1, 5, 5]
  np.testing.assert_allclose(gated[0, 0, 1], -0.32, atol=1e-6)
  bt = preference.bt_score_table(jnp.array([1.0, 3.0]))
  np.testing.assert_array_equal(bt, [[0.0, -2.0], [2.0, 0.0]])


# ---------------------------------------------------------------------------------------
# The registered reward-model losses.


@pytest.mark.parametrize("normalised, tau, expected", [
    (True, 0.1, 6.4016601784), (False, 0.1, 40.0), (False, 1.0, 4.0181499279)])
def test_gpm_loss_worked_numbers(normalised, tau, expected):
  c, r = (unit(V1), unit(V2)) if normalised else (V1, V2)
  cfg = loss_cfg("gpm", preference_tau=tau)
  get_algorithm("gpm").validate(cfg)
  loss, metrics = get_loss("gpm")(head_inputs(c[None], r[None]), cfg)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(metrics["rewards/accuracies"]) == 0.0
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-6)


def test_gpm_loss_gates_margin_and_metrics():
  c, r = unit(np.stack([V1, V2, V3])), unit(np.stack([V2, V3, V1]))
  gates = np.stack([GATES, [0.5, 0.5], [1.0, 0.0]])
  cfg = loss_cfg("gpm", preference_tau=0.5, preference_margin=0.1)
  loss, metrics = get_loss("gpm")(head_inputs(c, r, gates), cfg)
  s = np.array([float(preference.gpm_scores(a, b, g)) for a, b, g in zip(c, r, gates)])
  np.testing.assert_allclose(s[0], -0.32, atol=1e-6)
  expected = np.mean(np.logaddexp(0.0, -(s - 0.1) / 0.5))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["rewards/margins"]), s.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["rewards/accuracies"]), np.mean(s > 0))
  # A tie counts half; pair weights drop filler pairs.
  _, tie = get_loss("gpm")(head_inputs(c[:1], c[:1]), cfg)
  assert float(tie["rewards/accuracies"]) == 0.5
  weighted, _ = get_loss("gpm")(head_inputs(c, r, gates, pair_weights=[1, 0, 0]), cfg)
  np.testing.assert_allclose(float(weighted), np.logaddexp(0.0, -(s[0] - 0.1) / 0.5),
                             rtol=1e-6)


def test_bt_reward_loss():
  rw, rl = np.array([[1.0], [0.2], [-0.5]]), np.array([[0.5], [0.7], [-0.5]])
  cfg = loss_cfg("bt_reward", preference_tau=1.0, preference_margin=0.25)
  get_algorithm("bt_reward").validate(cfg)
  loss, metrics = get_loss("bt_reward")(head_inputs(rw, rl), cfg)
  d = (rw - rl)[:, 0]
  np.testing.assert_allclose(float(loss), np.mean(np.logaddexp(0.0, -(d - 0.25))), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["rewards/chosen"]), rw.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["rewards/rejected"]), rl.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["rewards/margins"]), d.mean(), atol=1e-7)
  np.testing.assert_allclose(float(metrics["rewards/accuracies"]), 0.5)  # win, loss, tie
  # BT is GPM's scalar special case: r_w − r_l at τ = 0.1 reproduces the unnormalised s.
  flat, _ = get_loss("bt_reward")(head_inputs([-4.0], [0.0]), loss_cfg("bt_reward"))
  np.testing.assert_allclose(float(flat), 40.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["gpm", "bt_reward"])
def test_preference_validation(name):
  algorithm = get_algorithm(name)
  assert algorithm.requirements.reference is False
  assert algorithm.requirements.head == name
  algorithm.validate(loss_cfg(name))
  for key, value in [("preference_tau", 0.0), ("preference_tau", -1.0),
                     ("preference_margin", -0.1), ("preference_tau", float("nan")),
                     ("sft_weight", 0.5)]:
    with pytest.raises(ValueError, match=key):
      algorithm.validate(loss_cfg(name, **{key: value}))


def test_missing_values_raise():
  inputs = head_inputs(None, None)
  for name in ("gpm", "bt_reward"):
    with pytest.raises(ValueError, match="chosen_values"):
      get_loss(name)(inputs, loss_cfg(name))


# ---------------------------------------------------------------------------------------
# GPO targets and loss.

RM_SCORES = [-2.791175, 4.1709813, -0.7351216, 4.3597634, -5.0044481]
S_W, S_L = 4.3597633924, -5.0044480696
P_W, P_L = 0.5010842678, 0.3180685893


def gpo_table():
  return preference.gpm_score_table(jnp.asarray(unit(GPO_EMBEDDINGS), jnp.float32))


def test_gpo_targets_worked_numbers():
  t = gpo_lib.gpo_targets(gpo_table(), 0.1)
  np.testing.assert_allclose(t.rm_scores, RM_SCORES, rtol=1e-5, atol=1e-5)
  assert int(t.chosen_index) == 3 and int(t.rejected_index) == 4
  np.testing.assert_allclose(t.score_targets[3], S_W, rtol=1e-6)
  np.testing.assert_allclose(t.score_targets[4], S_L, rtol=1e-6)
  np.testing.assert_allclose(t.prob_targets[3], P_W, rtol=1e-6)
  np.testing.assert_allclose(t.prob_targets[4], P_L, rtol=1e-6)
  for loss_type, expected in [("sppo_score", (S_W, S_L)), ("sppo", (P_W, P_L))]:
    np.testing.assert_allclose(gpo_lib.pair_targets(t, loss_type), expected, rtol=1e-6)


def test_gpo_targets_batched_and_bt_table():
  table = gpo_table()
  batched = gpo_lib.gpo_targets(jnp.stack([table, -table]), 0.1)  # [2, 5, 5]
  np.testing.assert_array_equal(batched.chosen_index, [3, 4])
  np.testing.assert_array_equal(batched.rejected_index, [4, 3])
  np.testing.assert_allclose(batched.score_targets[0], gpo_lib.gpo_targets(table, 0.1)
                             .score_targets, rtol=1e-6)
  w, l = gpo_lib.pair_targets(batched, "sppo_score")
  np.testing.assert_allclose(w, [S_W, -S_L], rtol=1e-6)
  # BT rewards: Ŝ_i = (1/K) Σ_j 2 (r_i − r_j) (the factor 2 of table − tableᵀ).
  r = np.array([0.0, 1.0, 3.0])
  bt = gpo_lib.gpo_targets(preference.bt_score_table(r), 1.0)
  np.testing.assert_allclose(bt.score_targets, [2 * (r[i] - r).sum() / 3 for i in range(3)],
                             rtol=1e-6)
  p = 1 / (1 + np.exp(-2 * (r[:, None] - r[None, :])))
  np.testing.assert_allclose(bt.prob_targets, p.mean(-1), rtol=1e-6)


def gpo_inputs(chosen_target, rejected_target, seed=0, t=16):
  """One pair with ℓ_w = 0.5 and ℓ_l = −0.2 spread over tokens, garbage (incl. inf/NaN)
  under mask 0, left padding for chosen and right padding for rejected."""
  rng = np.random.default_rng(seed)
  cm = np.zeros((1, t), np.float32)
  cm[0, t - 5:] = 1
  rm = np.zeros((1, t), np.float32)
  rm[0, 3:9] = 1
  def tokens(total, mask):
    x = rng.uniform(-3, 3, size=mask.shape)
    x = np.where(np.arange(t) % 3 == 0, np.nan, np.where(np.arange(t) % 3 == 1, -np.inf, x))
    pos = np.flatnonzero(mask[0])
    vals = -rng.uniform(0.1, 1.0, size=len(pos))
    x[0, pos] = vals
    return x, vals.sum() - total
  pc, prev_c = tokens(0.5, cm)
  pr, prev_r = tokens(-0.2, rm)
  # π_t's log-probs: put the whole sum on one completion token.
  qc = np.where(cm > 0, 0.0, np.nan)
  qc[0, t - 1] = prev_c
  qr = np.where(rm > 0, 0.0, -np.inf)
  qr[0, 3] = prev_r
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return LossInputs(policy_chosen_logps=f32(pc), policy_rejected_logps=f32(pr),
                    chosen_mask=f32(cm), rejected_mask=f32(rm), prev_chosen_logps=f32(qc),
                    prev_rejected_logps=f32(qr),
                    targets={"chosen_score": f32([chosen_target]),
                             "rejected_score": f32([rejected_target])})


@pytest.mark.parametrize("loss_type, beta, targets, expected", [
    ("sppo", 1e-3, (P_W, P_L), 16513.323502),
    ("sppo_score", 1.0, (S_W, S_L), 18.9902473494),
])
def test_gpo_loss_worked_numbers(loss_type, beta, targets, expected):
  cfg = loss_cfg("gpo", beta=beta, gpo_loss_type=loss_type)
  get_algorithm("gpo").validate(cfg)
  inputs = gpo_inputs(*targets)
  loss, metrics = get_loss("gpo")(inputs, cfg)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), expected, rtol=2e-6)
  # The clamp at 1000 is inactive here: the targets/β are ~1.08 and −181.9 for SPPO.
  assert float(metrics["gpo/clamped_fraction"]) == 0.0
  np.testing.assert_allclose(float(metrics["rewards/chosen"]), beta * 0.5, rtol=1e-4)
  grads = jax.grad(lambda x: get_loss("gpo")(x, cfg)[0])(inputs)
  for g, m in [(grads.policy_chosen_logps, inputs.chosen_mask),
               (grads.policy_rejected_logps, inputs.rejected_mask)]:
    g = np.asarray(g)
    assert np.isfinite(g).all() and (g[np.asarray(m) == 0] == 0).all()


def test_gpo_clamp_and_padding_invariance():
  cfg = loss_cfg("gpo", beta=1e-3, gpo_target_clamp=100.0)
  inputs = gpo_inputs(S_W, S_L)
  loss, metrics = get_loss("gpo")(inputs, cfg)
  # Ŝ/β = 4359.8 and −5004.4, both clamped to ±100.
  np.testing.assert_allclose(float(loss), 0.5 * ((0.5 - 100) ** 2 + (-0.2 + 100) ** 2),
                             rtol=1e-6)
  assert float(metrics["gpo/clamped_fraction"]) == 1.0
  np.testing.assert_allclose(float(metrics["gpo/target_rejected"]), -100.0)
  other = get_loss("gpo")(gpo_inputs(S_W, S_L, seed=3, t=24), cfg)[0]
  np.testing.assert_allclose(float(other), float(loss), rtol=1e-6)


def test_gpo_requirements_validation_and_missing_inputs():
  algorithm = get_algorithm("gpo")
  req = algorithm.requirements
  assert (req.reference, req.previous_policy, req.head) == (False, True, "lm")
  assert req.online.rows == "gpo_targets"
  for key, value in [("beta", 0.0), ("gpo_target_clamp", 0.0), ("gpo_loss_type", "ipo")]:
    with pytest.raises(ValueError, match=key):
      algorithm.validate(loss_cfg("gpo", **{key: value}))
  inputs = gpo_inputs(S_W, S_L)
  with pytest.raises(ValueError, match="prev_chosen_logps"):
    get_loss("gpo")(inputs.replace(prev_chosen_logps=None), loss_cfg("gpo"))
  with pytest.raises(ValueError, match="chosen_score"):
    get_loss("gpo")(inputs.with_targets(chosen_score=None), loss_cfg("gpo"))


# ---------------------------------------------------------------------------------------
# The model.

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2)


def test_last_token_indices():
  mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(heads.last_token_index(mask), [4, 2, 3, 0])
  completion = jnp.array([[0, 0, 0, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(heads.last_prompt_index(mask, completion), [2, 0, 2, 0])


def test_l2_normalize_is_nan_free_at_zero():
  np.testing.assert_allclose(heads.l2_normalize(jnp.array([3.0, 4.0])), [0.6, 0.8], rtol=1e-6)
  g = jax.grad(lambda v: heads.l2_normalize(v).sum())(jnp.zeros(4))
  assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("normalize, prompt_head", [(False, False), (True, True)])
def test_values_are_invariant_to_padding(normalize, prompt_head):
  model = heads.PreferenceModel(TINY, value_dim=4, normalize=normalize,
                                prompt_head=prompt_head, rngs=nnx.Rngs(0))
  seq, n_prompt, width = np.array([5, 9, 11, 3, 20, 21, 22]), 4, 15
  # The same sequence after 8, 5, 2 and 0 pad tokens (the rest of each row pads on the right).
  lefts = [8, 5, 2, 0]
  ids = np.full((len(lefts), width), 7, np.int32)  # pad tokens that must not matter
  mask = np.zeros((len(lefts), width), np.int32)
  completion = np.zeros((len(lefts), width), np.int32)
  for b, left in enumerate(lefts):
    ids[b, left:left + len(seq)] = seq
    mask[b, left:left + len(seq)] = 1
    completion[b, left + n_prompt:left + len(seq)] = 1
  prompt_last = heads.last_prompt_index(mask, completion)
  np.testing.assert_array_equal(prompt_last, np.array(lefts) + n_prompt - 1)
  values, gates = nnx.jit(lambda m, *a: m.values(*a))(model, ids, mask, prompt_last)
  assert values.shape == (4, 4) and values.dtype == jnp.float32
  assert np.isfinite(np.asarray(values)).all()
  np.testing.assert_allclose(values, jnp.broadcast_to(values[0], values.shape), atol=1e-5)
  if normalize:
    np.testing.assert_allclose(jnp.linalg.norm(values, axis=-1), 1.0, rtol=1e-5)
  if prompt_head:
    assert gates.shape == (4, 2)
    np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(gates, jnp.broadcast_to(gates[0], gates.shape), atol=1e-5)
  else:
    assert gates is None


def test_head_init_and_options():
  model = heads.PreferenceModel(TINY, value_dim=6, prompt_head=True, rngs=nnx.Rngs(1))
  w = np.asarray(model.value_head[...])
  assert w.shape == (32, 6) and model.prompt_head[...].shape == (32, 3)
  assert 0.3 / 33 < w.std() < 3.0 / 33  # N(0, (1/(H+1))²), the official init_value_head
  h = jnp.ones((2, 32))
  scaled = heads.PreferenceModel(TINY, value_dim=6, prompt_head=True,
                                 gate_form="scaled_softmax", rngs=nnx.Rngs(1))
  np.testing.assert_allclose(scaled.gates(h).sum(-1), 3.0, rtol=1e-6)  # k · softmax
  with pytest.raises(ValueError, match="prompt_last_index"):
    model.values(jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
  for kwargs in [dict(value_dim=3), dict(value_dim=0), dict(value_dim=1, normalize=True),
                 dict(value_dim=1, prompt_head=True), dict(value_dim=2, gate_form="k")]:
    with pytest.raises(ValueError):
      heads.PreferenceModel(TINY, rngs=nnx.Rngs(0), **kwargs)


def test_wraps_an_existing_backbone():
  policy = Transformer(TINY, rngs=nnx.Rngs(3))
  rm = heads.PreferenceModel(policy, value_dim=1, rngs=nnx.Rngs(4))
  assert rm.backbone is policy
  policy_params = nnx.to_pure_dict(nnx.state(policy, nnx.Param))
  rm_params = nnx.to_pure_dict(nnx.state(rm, nnx.Param))
  assert set(rm_params) == {"backbone", "value_head"}
  jax.tree.map(np.testing.assert_array_equal, rm_params["backbone"], policy_params)
  cfg = ml_collections.ConfigDict(dict(value_dim=4, normalize=True, prompt_head=False))
  built = heads.build_preference_model(TINY, "gpm", cfg, rngs=nnx.Rngs(0))
  assert built.value_dim == 4 and built.normalize and built.prompt_head is None
  bt_cfg = ml_collections.ConfigDict(dict(value_dim=4, normalize=False, prompt_head=False))
  assert heads.build_preference_model(TINY, "bt_reward", bt_cfg,
                                      rngs=nnx.Rngs(0)).value_dim == 1
  with pytest.raises(ValueError, match="normalize"):
    heads.build_preference_model(TINY, "bt_reward", cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name, value_dim, normalize, prompt_head", [
    ("gpm", 4, False, False), ("gpm", 4, True, True), ("bt_reward", 1, False, False)])
def test_losses_have_finite_gradients_through_the_model(name, value_dim, normalize,
                                                        prompt_head):
  model = heads.PreferenceModel(TINY, value_dim=value_dim, prompt_head=prompt_head,
                                normalize=normalize, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, 64, size=(4, 10)), jnp.int32)  # 2 chosen, 2 rejected
  mask = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 10] * 2, jnp.int32)
  completion = jnp.asarray([[0] * 6 + [1] * 4, [0] * 4 + [1] * 6] * 2, jnp.int32)
  prompt_last = heads.last_prompt_index(mask, completion)
  cfg = loss_cfg(name)

  def loss_fn(params):
    values, gates = nnx.merge(graphdef, params).values(ids, mask, prompt_last)
    inputs = head_inputs(values[:2], values[2:], None if gates is None else gates[:2])
    return get_loss(name)(inputs, cfg)

  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
  leaves = jax.tree.leaves(grads)
  assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert np.abs(np.asarray(grads["value_head"][...])).sum() > 0


def test_param_partition_specs_on_the_preference_model():
  model = heads.PreferenceModel(TINY, value_dim=4, prompt_head=True, rngs=nnx.Rngs(0))
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  specs = param_partition_specs(model, mesh)
  assert set(specs) == {"backbone", "value_head", "prompt_head"}
  assert specs["value_head"] == jax.sharding.PartitionSpec("fsdp", None)
  assert specs["prompt_head"] == jax.sharding.PartitionSpec("fsdp", None)
  assert specs["backbone"]["layers"][0]["attn"]["q_proj"] == jax.sharding.PartitionSpec(
      "fsdp", "tensor", None)
  abstract = nnx.state(nnx.eval_shape(lambda: heads.PreferenceModel(
      TINY, value_dim=2, rngs=nnx.Rngs(0))), nnx.Param)
  assert param_partition_specs(abstract, mesh)["value_head"] == jax.sharding.PartitionSpec(
      "fsdp", None)


def test_config_builds_the_gate_form_and_refuses_bad_head_options():
  """config.preference_model.gate_form reaches the model; a bad gate form, and GPM options
  on a Bradley-Terry run, are refused by the config check before anything is built."""
  from configs import bt_reward as bt_config, gpm as gpm_config
  from training import config_check
  from training import experiment

  config = gpm_config.get_config("tiny")
  config.preference_model.update(prompt_head=True, gate_form="scaled_softmax")
  config_check.validate(config, num_devices=1, process_count=1)
  model = experiment._with_head(config, "gpm", Transformer(TINY, rngs=nnx.Rngs(0)))
  assert model.gate_form == "scaled_softmax" and model.prompt_head is not None
  config.preference_model.gate_form = "k"
  with pytest.raises(config_check.ConfigError, match="preference_model.gate_form"):
    config_check.validate(config, num_devices=1, process_count=1)
  config = bt_config.get_config("tiny")
  config.preference_model.normalize = True
  with pytest.raises(config_check.ConfigError, match="GPM options"):
    config_check.validate(config, num_devices=1, process_count=1)
