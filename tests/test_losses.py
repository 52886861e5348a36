"""Tests for the DPO-family losses (algorithms/dpo.py) and SimPO (algorithms/simpo.py).

Expected numbers are Fixture A of shared/research/algorithms.md §1.4 (float64 numpy script in
its appendix). The sequence totals are split into per-token arrays with padding in odd
places and non-zero garbage under mask 0, so the tests also cover the masking.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import algorithms
from algorithms import LossInputs, get_algorithm, get_loss, registered_names
from tests.conftest import loss_hyperparameters

# ---------------------------------------------------------------------------------------
# Fixture A (sequence level), algorithms.md §0 and §1.4.

POLICY_CHOSEN = np.array([-10.0, -25.0, -7.5])
POLICY_REJECTED = np.array([-12.0, -24.0, -9.0])
REF_CHOSEN = np.array([-11.0, -24.5, -8.0])
REF_REJECTED = np.array([-11.5, -24.2, -8.5])
N_CHOSEN = [20, 50, 15]
N_REJECTED = [25, 45, 18]
# h = ℓ_w − ℓ_l = [1.5, -0.7, 1.0]; ℓ_w = [1.0, -0.5, 0.5], ℓ_l = [-0.5, +0.2, -0.5]
# (algorithms.md prints ℓ_l[1] as -0.2, a typo: -24.0 - (-24.2) = +0.2, and h needs +0.2).

FIXTURE_A = {
    # name, cfg overrides: (per-pair values, batch mean)
    "dpo": ({}, [0.6209570478, 0.7287595555, 0.6443966601], 0.6647044211),
    "dpo_smoothed": ({"name": "dpo", "label_smoothing": 0.1},
                     [0.6359570478, 0.7217595555, 0.6543966601], 0.6707044211),
    "cdpo": ({"label_smoothing": 0.1}, [0.6359570478, 0.7217595555, 0.6543966601],
             0.6707044211),
    "robust_dpo": ({"label_smoothing": 0.1}, [0.6022070478, 0.7375095555, 0.6318966601],
                   0.6572044211),
    "hinge": ({}, [0.85, 1.07, 0.9], 0.94),
    "ipo": ({}, [24.3049, 25.1446530864, 24.3926234568], 24.6140588477),
    "ipo_sum": ({"name": "ipo", "ipo_average_logps": False}, [12.25, 32.49, 16.0],
                20.2466666667),
    "simpo": ({"beta": 2.0, "simpo_gamma_beta_ratio": 0.5},
              [1.3426603474, 1.2649658207, 1.3132616875], 1.3069626185),
}

T = 64
# Where each completion sits in its [T] row: "left" = left padding (completion at the end),
# "right" = right padding, "middle" = completion split by a hole of mask zeros.
CHOSEN_LAYOUT = ["left", "middle", "right"]
REJECTED_LAYOUT = ["middle", "right", "left"]


def loss_cfg(name="dpo", **overrides):
  """config.loss with the loss's registered defaults."""
  return loss_hyperparameters(name, **overrides)


def _positions(n, layout, rng):
  """Completion positions in a [T] row; position 0 (no logits score it) is never used."""
  if layout == "left":  # left padding: the completion ends the row
    return np.arange(T - n, T)
  if layout == "right":  # a "prompt" of random length, then the completion, then padding
    start = int(rng.integers(1, T - n + 1))
    return np.arange(start, start + n)
  # "middle": the completion is cut in two by a hole of mask zeros.
  gap = int(rng.integers(1, T - n))
  start = int(rng.integers(1, T - n - gap + 1))
  cut = int(rng.integers(1, n))
  return np.concatenate([np.arange(start, start + cut),
                         np.arange(start + cut + gap, start + n + gap)])


def make_masks(lengths, layouts, rng):
  mask = np.zeros((len(lengths), T), np.float32)
  for b, (n, layout) in enumerate(zip(lengths, layouts)):
    pos = _positions(n, layout, rng)
    assert len(pos) == len(set(pos)) == n and 1 <= pos.min() and pos.max() < T
    mask[b, pos] = 1.0
  return mask


def tokenize(totals, mask, rng):
  """[B, T] per-token log-probs whose masked sums are `totals`, with garbage (non-zero,
  either sign) under mask 0. Each completion's tokens are n−1 dyadic values (exact in
  float32 sums) plus one that takes the remainder."""
  logps = rng.uniform(-7.0, 7.0, size=mask.shape)
  for b, total in enumerate(totals):
    pos = np.flatnonzero(mask[b])
    n = len(pos)
    parts = -np.round(rng.uniform(0.05, 2.0 * abs(total) / n, size=n - 1) * 256) / 256
    logps[b, pos] = np.append(parts, total - parts.sum())
  return logps


def fixture_a(seed=0, with_ref=True):
  """Fixture A as LossInputs [3, T]; chosen and rejected use different lengths and layouts."""
  rng = np.random.default_rng(seed)
  mc = make_masks(N_CHOSEN, CHOSEN_LAYOUT, rng)
  mr = make_masks(N_REJECTED, REJECTED_LAYOUT, rng)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  ref = lambda totals, m: f32(tokenize(totals, m, rng)) if with_ref else None
  return LossInputs(
      policy_chosen_logps=f32(tokenize(POLICY_CHOSEN, mc, rng)),
      policy_rejected_logps=f32(tokenize(POLICY_REJECTED, mr, rng)),
      chosen_mask=f32(mc), rejected_mask=f32(mr),
      ref_chosen_logps=ref(REF_CHOSEN, mc), ref_rejected_logps=ref(REF_REJECTED, mr))


def _case_cfg(case):
  overrides, _, _ = FIXTURE_A[case]
  overrides = dict(overrides)
  name = overrides.pop("name", case)
  return loss_cfg(name, **overrides)


def per_pair_losses(name, inputs, cfg):
  """Per-pair losses via one-hot pair weights (each pair alone), through the public API."""
  b = inputs.policy_chosen_logps.shape[0]
  return np.array([float(get_loss(name)(inputs.replace(pair_weights=jnp.eye(b)[i]), cfg)[0])
                   for i in range(b)])


# ---------------------------------------------------------------------------------------
# Fixture A values.


def test_fixture_masks_have_fixture_lengths():
  inputs = fixture_a()
  np.testing.assert_array_equal(inputs.chosen_mask.sum(-1), N_CHOSEN)
  np.testing.assert_array_equal(inputs.rejected_mask.sum(-1), N_REJECTED)
  # The garbage is really there: unmasked sums differ wildly from the fixture totals.
  assert np.abs(np.asarray(inputs.policy_chosen_logps).sum(-1) - POLICY_CHOSEN).min() > 1.0


@pytest.mark.parametrize("case", sorted(FIXTURE_A))
def test_fixture_a_values(case):
  cfg = _case_cfg(case)
  _, per_pair, mean = FIXTURE_A[case]
  inputs = fixture_a(with_ref=cfg.name != "simpo")
  get_algorithm(cfg.name).validate(cfg)
  loss, _ = get_loss(cfg.name)(inputs, cfg)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(float(loss), mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(per_pair_losses(cfg.name, inputs, cfg), per_pair, rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("case", sorted(FIXTURE_A))
def test_loss_invariant_to_padding_layout(case):
  cfg = _case_cfg(case)
  with_ref = cfg.name != "simpo"
  a = get_loss(cfg.name)(fixture_a(seed=1, with_ref=with_ref), cfg)[0]
  b = get_loss(cfg.name)(fixture_a(seed=2, with_ref=with_ref), cfg)[0]
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6, atol=1e-6)


def test_garbage_under_mask_including_inf_and_nan_is_ignored():
  inputs = fixture_a()
  cfg = loss_cfg("dpo")
  bad = lambda x, m: jnp.where(m > 0, x, jnp.where(jnp.arange(T) % 2 == 0, -jnp.inf, jnp.nan))
  dirty = inputs.replace(
      policy_chosen_logps=bad(inputs.policy_chosen_logps, inputs.chosen_mask),
      ref_rejected_logps=bad(inputs.ref_rejected_logps, inputs.rejected_mask))
  loss_fn = lambda x: get_loss("dpo")(x, cfg)[0]
  np.testing.assert_allclose(float(loss_fn(dirty)), float(loss_fn(inputs)), rtol=1e-7)
  grads = jax.grad(loss_fn)(dirty)
  assert np.isfinite(np.asarray(grads.policy_chosen_logps)).all()


def test_empty_completion_is_finite_for_averaging_losses():
  inputs = fixture_a()
  empty = inputs.replace(chosen_mask=inputs.chosen_mask.at[1].set(0.0))
  for name, cfg in [("ipo", loss_cfg("ipo")), ("simpo", loss_cfg("simpo", sft_weight=1.0))]:
    loss, metrics = get_loss(name)(empty, cfg)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())


# ---------------------------------------------------------------------------------------
# Metrics.


def test_dpo_metrics_on_fixture_a():
  loss, metrics = get_loss("dpo")(fixture_a(), loss_cfg("dpo"))
  assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                          "rewards/margins", "logps/chosen", "logps/rejected"}
  assert "loss" not in metrics
  beta = 0.1
  lw, ll = POLICY_CHOSEN - REF_CHOSEN, POLICY_REJECTED - REF_REJECTED
  expected = {
      "rewards/chosen": beta * lw.mean(),            # 0.0333
      "rewards/rejected": beta * ll.mean(),          # -0.0267
      "rewards/accuracies": 2.0 / 3.0,               # pair 1 has h = -0.7
      "rewards/margins": beta * (lw - ll).mean(),    # 0.06
      "logps/chosen": POLICY_CHOSEN.mean(),
      "logps/rejected": POLICY_REJECTED.mean(),
  }
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", ["cdpo", "robust_dpo", "hinge", "ipo"])
def test_reference_losses_share_dpo_metrics(name):
  inputs = fixture_a()
  _, dpo_metrics = get_loss("dpo")(inputs, loss_cfg("dpo"))
  _, metrics = get_loss(name)(inputs, loss_cfg(name, label_smoothing=0.1 if name in (
      "cdpo", "robust_dpo") else 0.0))
  assert set(metrics) == set(dpo_metrics)
  for key in metrics:
    np.testing.assert_allclose(float(metrics[key]), float(dpo_metrics[key]), rtol=1e-6)


def test_simpo_metrics_on_fixture_a():
  _, metrics = get_loss("simpo")(fixture_a(with_ref=False), loss_cfg("simpo", beta=2.0))
  mean_c = POLICY_CHOSEN / np.array(N_CHOSEN)     # [-0.5, -0.5, -0.5]
  mean_r = POLICY_REJECTED / np.array(N_REJECTED)  # [-0.48, -0.5333, -0.5]
  expected = {
      "rewards/chosen": 2.0 * mean_c.mean(),
      "rewards/rejected": 2.0 * mean_r.mean(),
      # pair 0 loses, pair 1 wins, pair 2 is an exact tie (-7.5/15 == -9/18, dyadic sums),
      # which base.preference_metrics counts as half a win.
      "rewards/accuracies": 0.5,
      "rewards/margins": 2.0 * (mean_c - mean_r).mean(),
      "logps/chosen": mean_c.mean(),
      "logps/rejected": mean_r.mean(),
  }
  assert set(metrics) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------------------------
# SimPO specifics.


def test_simpo_ignores_reference_and_needs_none():
  assert get_algorithm("simpo").requirements.reference is False
  for name in ["dpo", "cdpo", "robust_dpo", "ipo", "hinge"]:
    assert get_algorithm(name).requirements.reference is True
  cfg = loss_cfg("simpo", beta=2.0)
  a = get_loss("simpo")(fixture_a(with_ref=False), cfg)[0]
  b = get_loss("simpo")(fixture_a(with_ref=True), cfg)[0]
  assert float(a) == float(b)


def test_reference_losses_reject_missing_reference():
  with pytest.raises(ValueError, match="reference log-probs"):
    get_loss("dpo")(fixture_a(with_ref=False), loss_cfg("dpo"))


def test_simpo_sft_weight_adds_token_weighted_chosen_nll():
  inputs = fixture_a(with_ref=False).replace(pair_weights=jnp.array([1.0, 0.0, 1.0]))
  base, _ = get_loss("simpo")(inputs, loss_cfg("simpo", beta=2.0))
  loss, metrics = get_loss("simpo")(inputs, loss_cfg("simpo", beta=2.0, sft_weight=0.5))
  nll = -(POLICY_CHOSEN[0] + POLICY_CHOSEN[2]) / (N_CHOSEN[0] + N_CHOSEN[2])  # 17.5 / 35
  np.testing.assert_allclose(float(metrics["sft_loss"]), nll, rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(base) + 0.5 * nll, rtol=1e-6)
  assert "sft_loss" not in get_loss("simpo")(inputs, loss_cfg("simpo", beta=2.0))[1]


@pytest.mark.parametrize("name", ["dpo", "online_dpo", "dno", "inpo"])
def test_sft_weight_adds_the_same_chosen_nll_to_the_pairwise_losses(name):
  """RPO's NLL term (Pang et al. 2024): loss + α · token-weighted NLL of the chosen side."""
  from verification.common import loss_config

  inputs = fixture_a(with_ref=True).replace(pair_weights=jnp.array([1.0, 0.0, 1.0]))
  inputs = inputs.replace(prev_chosen_logps=inputs.ref_chosen_logps,
                          prev_rejected_logps=inputs.ref_rejected_logps)
  base, _ = get_loss(name)(inputs, loss_config(name))
  loss, metrics = get_loss(name)(inputs, loss_config(name, sft_weight=0.5))
  nll = -(POLICY_CHOSEN[0] + POLICY_CHOSEN[2]) / (N_CHOSEN[0] + N_CHOSEN[2])
  np.testing.assert_allclose(float(metrics["sft_loss"]), nll, rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(base) + 0.5 * nll, rtol=1e-6)


def test_simpo_label_smoothing_matches_official_form():
  cfg = loss_cfg("simpo", beta=2.0, label_smoothing=0.1)
  loss, _ = get_loss("simpo")(fixture_a(with_ref=False), cfg)
  z = 2.0 * ((POLICY_CHOSEN / N_CHOSEN - POLICY_REJECTED / N_REJECTED) - 0.5)
  logsig = lambda x: -np.logaddexp(0.0, -x)
  expected = np.mean(-0.9 * logsig(z) - 0.1 * logsig(-z))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Invariants: init value, gradients, pair weights.


def _random_inputs(key, b=4, t=16, same_reference=True):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  pc = -jax.random.uniform(k1, (b, t), minval=0.1, maxval=3.0)
  pr = -jax.random.uniform(k2, (b, t), minval=0.1, maxval=3.0)
  lengths_c = jnp.arange(b) % (t - 2) + 2
  lengths_r = (jnp.arange(b) * 3) % (t - 2) + 1
  mc = (jnp.arange(t)[None] < lengths_c[:, None] + 1) & (jnp.arange(t)[None] >= 1)
  mr = (jnp.arange(t)[None] < lengths_r[:, None] + 1) & (jnp.arange(t)[None] >= 1)
  rc, rr = (pc, pr) if same_reference else (
      pc + 0.3 * jax.random.normal(k3, (b, t)), pr + 0.3 * jax.random.normal(k4, (b, t)))
  return LossInputs(pc, pr, mc.astype(jnp.float32), mr.astype(jnp.float32), rc, rr)


def test_dpo_at_init_is_log_two():
  inputs = _random_inputs(jax.random.PRNGKey(0))
  for name, cfg in [("dpo", loss_cfg("dpo")), ("cdpo", loss_cfg("cdpo", label_smoothing=0.2)),
                    ("robust_dpo", loss_cfg("robust_dpo", label_smoothing=0.2))]:
    loss, metrics = get_loss(name)(inputs, cfg)
    np.testing.assert_allclose(float(loss), math.log(2.0), rtol=1e-6, err_msg=name)
    assert float(metrics["rewards/accuracies"]) == 0.5  # all ties: half a win each
    assert float(metrics["rewards/margins"]) == 0.0


def test_dpo_gradient_matches_closed_form():
  """dL/dlogπθ(y_w)_t = −β σ(−β h_b) m_t / B; zero under mask 0."""
  inputs = _random_inputs(jax.random.PRNGKey(1), same_reference=False)
  beta = 0.1
  grads = jax.grad(lambda x: get_loss("dpo")(x, loss_cfg("dpo", beta=beta))[0])(inputs)
  seq = lambda lp, m: np.sum(np.asarray(lp) * np.asarray(m), -1)
  h = (seq(inputs.policy_chosen_logps, inputs.chosen_mask)
       - seq(inputs.ref_chosen_logps, inputs.chosen_mask)
       - seq(inputs.policy_rejected_logps, inputs.rejected_mask)
       + seq(inputs.ref_rejected_logps, inputs.rejected_mask))
  b = h.shape[0]
  coeff = -beta / (1.0 + np.exp(beta * h)) / b
  np.testing.assert_allclose(grads.policy_chosen_logps, coeff[:, None] * inputs.chosen_mask,
                             rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(grads.policy_rejected_logps,
                             -coeff[:, None] * inputs.rejected_mask, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name,overrides", [
    ("dpo", {}), ("cdpo", {"label_smoothing": 0.1}), ("robust_dpo", {"label_smoothing": 0.1}),
    ("hinge", {}), ("simpo", {"simpo_gamma_beta_ratio": 0.0})])
def test_gradient_scales_linearly_with_small_beta(name, overrides):
  """Guards the β² bug: for β → 0 the gradient w.r.t. the policy log-probs is ∝ β."""
  inputs = _random_inputs(jax.random.PRNGKey(2), same_reference=False)

  def grad_norm(beta):
    cfg = loss_cfg(name, beta=beta, **overrides)
    g = jax.grad(lambda x: get_loss(name)(x, cfg)[0])(inputs)
    return float(jnp.linalg.norm(g.policy_chosen_logps))

  g1, g2 = grad_norm(1e-4), grad_norm(2e-4)
  assert g1 > 0
  np.testing.assert_allclose(g2 / g1, 2.0, rtol=1e-3)


@pytest.mark.parametrize("case", sorted(FIXTURE_A))
def test_gradients_finite_and_zero_under_mask(case):
  cfg = _case_cfg(case)
  inputs = fixture_a(with_ref=cfg.name != "simpo")
  if cfg.name == "simpo":
    cfg.sft_weight = 0.3
  grads = jax.grad(lambda x: get_loss(cfg.name)(x, cfg)[0])(inputs)
  for g, m in [(grads.policy_chosen_logps, inputs.chosen_mask),
               (grads.policy_rejected_logps, inputs.rejected_mask)]:
    assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(g)[np.asarray(m) == 0] == 0.0)
    assert np.any(np.asarray(g) != 0.0)


def _with_filler(inputs, n_filler=2):
  """Appends filler pairs (weight 0) with wild values, as in the padded last eval batch."""
  def pad(x, fill):
    if x is None:
      return None
    return jnp.concatenate([x, jnp.full((n_filler,) + x.shape[1:], fill, x.dtype)])
  b = inputs.policy_chosen_logps.shape[0]
  return LossInputs(
      policy_chosen_logps=pad(inputs.policy_chosen_logps, -1000.0),
      policy_rejected_logps=pad(inputs.policy_rejected_logps, 5.0),
      chosen_mask=pad(inputs.chosen_mask, 1.0),
      rejected_mask=pad(inputs.rejected_mask, 1.0),
      ref_chosen_logps=pad(inputs.ref_chosen_logps, 3.0),
      ref_rejected_logps=pad(inputs.ref_rejected_logps, -700.0),
      pair_weights=jnp.concatenate([jnp.ones(b), jnp.zeros(n_filler)]))


@pytest.mark.parametrize("case", sorted(FIXTURE_A))
def test_zero_weight_pairs_are_ignored_exactly(case):
  cfg = _case_cfg(case)
  if cfg.name == "simpo":
    cfg.sft_weight = 0.3
  inputs = fixture_a(with_ref=cfg.name != "simpo")
  padded = _with_filler(inputs)
  loss_fn = get_loss(cfg.name)
  loss, metrics = loss_fn(inputs, cfg)
  padded_loss, padded_metrics = loss_fn(padded, cfg)
  np.testing.assert_allclose(float(padded_loss), float(loss), rtol=1e-6, atol=1e-7)
  for key in metrics:
    np.testing.assert_allclose(float(padded_metrics[key]), float(metrics[key]), rtol=1e-6,
                               atol=1e-7, err_msg=key)
  grads = jax.grad(lambda x: loss_fn(x, cfg)[0])(padded)
  assert np.all(np.asarray(grads.policy_chosen_logps)[3:] == 0.0)
  assert np.all(np.asarray(grads.policy_rejected_logps)[3:] == 0.0)


def test_pair_weights_equal_sub_batch():
  inputs = fixture_a()
  cfg = loss_cfg("dpo")
  weighted = inputs.replace(pair_weights=jnp.array([1.0, 0.0, 1.0]))
  sub = jax.tree_util.tree_map(lambda x: x[jnp.array([0, 2])], inputs)
  np.testing.assert_allclose(float(get_loss("dpo")(weighted, cfg)[0]),
                             float(get_loss("dpo")(sub, cfg)[0]), rtol=1e-7)
  _, per_pair, _ = FIXTURE_A["dpo"]
  np.testing.assert_allclose(float(get_loss("dpo")(sub, cfg)[0]),
                             (per_pair[0] + per_pair[2]) / 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# jit and bf16.


@pytest.mark.parametrize("case", sorted(FIXTURE_A))
def test_jit_matches_eager(case):
  cfg = _case_cfg(case)
  inputs = fixture_a(with_ref=cfg.name != "simpo")
  loss_fn = get_loss(cfg.name)
  eager_loss, eager_metrics = loss_fn(inputs, cfg)
  jit_loss, jit_metrics = jax.jit(lambda x: loss_fn(x, cfg))(inputs)
  np.testing.assert_allclose(float(jit_loss), float(eager_loss), rtol=1e-6)
  for key in eager_metrics:
    np.testing.assert_allclose(float(jit_metrics[key]), float(eager_metrics[key]), rtol=1e-6)


@pytest.mark.parametrize("case", sorted(FIXTURE_A))
def test_bf16_inputs_are_computed_in_float32(case):
  cfg = _case_cfg(case)
  inputs = fixture_a(with_ref=cfg.name != "simpo")
  cast = lambda dtype: jax.tree_util.tree_map(lambda x: x.astype(dtype), inputs)
  bf16 = cast(jnp.bfloat16)
  rounded = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), bf16)
  loss_fn = jax.jit(lambda x: get_loss(cfg.name)(x, cfg))
  loss, metrics = loss_fn(bf16)
  assert loss.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in metrics.values())
  # Same as float32 math on the bf16-rounded values: no bf16 accumulation over tokens.
  np.testing.assert_allclose(float(loss), float(loss_fn(rounded)[0]), rtol=1e-6, atol=1e-6)
  grads = jax.grad(lambda x: get_loss(cfg.name)(x, cfg)[0])(bf16)
  assert grads.policy_chosen_logps.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(grads.policy_chosen_logps, np.float32)).all()


# ---------------------------------------------------------------------------------------
# Registry and validation.


def test_registry_names():
  assert {"dpo", "cdpo", "robust_dpo", "ipo", "hinge", "simpo"} <= set(registered_names())


def test_unknown_loss_lists_registered_names():
  with pytest.raises(KeyError) as info:
    get_loss("dpo_typo")
  message = str(info.value)
  assert "dpo_typo" in message
  for name in ["cdpo", "dpo", "hinge", "ipo", "robust_dpo", "simpo"]:
    assert name in message


@pytest.mark.parametrize("case", sorted(FIXTURE_A))
def test_validate_accepts_fixture_configs(case):
  cfg = _case_cfg(case)
  get_algorithm(cfg.name).validate(cfg)


@pytest.mark.parametrize("name,overrides,match", [
    ("dpo", {"beta": -1.0}, r"config\.loss\.beta must be > 0.0 .*got -1\.0"),
    ("dpo", {"beta": 0.0}, r"config\.loss\.beta must be > 0"),
    ("dpo", {"beta": float("nan")}, r"config\.loss\.beta must be a finite number"),
    ("dpo", {"beta": "0.1"}, r"config\.loss\.beta must be a finite number"),
    ("dpo", {"label_smoothing": 0.5}, r"config\.loss\.label_smoothing must be in \[0.0, 0.5\)"),
    ("dpo", {"label_smoothing": -0.1}, r"config\.loss\.label_smoothing"),
    ("dpo", {"sft_weight": -1.0}, r"config\.loss\.sft_weight must be >= 0"),
    ("ipo", {"sft_weight": 1.0}, r"config\.loss\.sft_weight=1\.0 has no effect"),
    ("cdpo", {"label_smoothing": 0.0}, r"config\.loss\.label_smoothing must be in \(0.0, 0.5\)"),
    ("cdpo", {"label_smoothing": 0.5}, r"config\.loss\.label_smoothing must be in \(0.0, 0.5\)"),
    ("robust_dpo", {"label_smoothing": 0.5}, r"config\.loss\.label_smoothing must be in \[0.0"),
    ("ipo", {"beta": -0.1}, r"config\.loss\.beta"),
    ("ipo", {"label_smoothing": 0.1}, r"config\.loss\.label_smoothing=0\.1 has no effect"),
    ("ipo", {"ipo_average_logps": 1}, r"config\.loss\.ipo_average_logps must be True or False"),
    ("hinge", {"label_smoothing": 0.1}, r"config\.loss\.label_smoothing=0\.1 has no effect"),
    ("simpo", {"beta": -2.0}, r"config\.loss\.beta"),
    ("simpo", {"simpo_gamma_beta_ratio": -0.5}, r"config\.loss\.simpo_gamma_beta_ratio must be >= 0"),
    ("simpo", {"sft_weight": -1.0}, r"config\.loss\.sft_weight must be >= 0"),
    ("simpo", {"label_smoothing": 0.7}, r"config\.loss\.label_smoothing"),
])
def test_validate_rejects_bad_values(name, overrides, match):
  with pytest.raises(ValueError, match=match):
    get_algorithm(name).validate(loss_cfg(name, **overrides))


def test_validate_names_missing_key():
  cfg = ml_collections.ConfigDict({"name": "ipo", "beta": 0.1})
  with pytest.raises(ValueError, match=r"config\.loss\.ipo_average_logps is required"):
    get_algorithm("ipo").validate(cfg)
