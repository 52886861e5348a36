"""Tests for the implicit PRM (algorithms/implicit_prm.py) and PRIME (algorithms/prime.py).

Expected numbers are shared/research/algorithms.md §7.3 (implicit PRM, β = 0.05) and §8.3
(PRIME, n = 4, response length 5), from the float64 numpy script in its appendix. Fixtures
sit inside wider [B, T] rows with a prompt/padding region that holds garbage (including
inf and NaN) under mask 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import implicit_prm, prime
from algorithms.base import LossInputs, get_algorithm
from tests.conftest import loss_hyperparameters

f32 = lambda x: jnp.asarray(x, jnp.float32)

# ---------------------------------------------------------------------------------------
# §7.3 fixture.

BETA = 0.05
PRM_POLICY = np.array([-0.3, -0.8, -0.1, -1.2, -0.5, -0.2])
PRM_REF = np.array([-0.5, -0.7, -0.4, -1.0, -0.9, -0.6])
STEP_ENDS = [1, 3, 5]
WRONG_POLICY = np.array([-0.6, -0.9, -0.8, -1.1])
WRONG_REF = np.array([-0.5, -0.7, -0.4, -1.0])

TOKEN_REWARDS = [0.01, -0.005, 0.015, -0.01, 0.02, 0.02]
Q_AT_ENDS = [0.005, 0.01, 0.05]
SINGLE = [0.005, 0.005, 0.04]
CE_LABEL1, CE_LABEL0, DPO_LOSS = 0.6684596480, 0.7184596480, 0.6491593390

# §8.3 fixture.
PRIME_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]],
                      np.float32)
PRIME_Q = np.array([[0.2, -0.1, 0.3, 0.0, 0.4], [-0.2, -0.3, 0.1, 0, 0],
                    [0.1, 0.2, -0.1, 0.3, 0], [-0.4, 0.1, 0, 0, 0]], np.float32)
PRIME_ACC = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
PRIME_CE = 0.6807362389
PRIME_RETURNS = np.array([[1.996526, 1.663888, 1.831249, 1.331944, 1.332638],
                          [-1.335416, -1.001388, -0.500695, 0., 0.],
                          [1.497221, 1.331249, 0.998611, 1.165972, 0.],
                          [-1.168055, -0.500695, 0., 0., 0.]])
PRIME_ADVANTAGES = np.array([[1.130595, 0.857909, 0.995106, 0.585792, 0.586361],
                             [-1.600823, -1.326998, -0.916545, 0, 0],
                             [0.721281, 0.585223, 0.312536, 0.449734, 0],
                             [-1.463626, -0.916545, 0, 0, 0]])

GARBAGE = [np.inf, -np.inf, np.nan, 7.0, -3.0]


def loss_cfg(name, **overrides):
  defaults = dict(beta=BETA, prm_objective="ce", ppo_clip=0.2, prm_beta=0.05,
                  prime_rloo_form="code")
  return loss_hyperparameters(name, defaults, **overrides)


def embed(rows, width, offsets, rng=None, garbage=True):
  """Places 1-D token arrays into [B, width] rows starting at `offsets` (left-padding /
  prompt before them); returns (values, mask). Positions under mask 0 get garbage."""
  values = np.zeros((len(rows), width), np.float32)
  mask = np.zeros((len(rows), width), np.float32)
  rng = rng or np.random.default_rng(0)
  if garbage:
    values[:] = rng.choice(GARBAGE, size=values.shape)
  for b, (row, start) in enumerate(zip(rows, offsets)):
    values[b, start:start + len(row)] = row
    mask[b, start:start + len(row)] = 1.0
  return values, mask


def prm_inputs(pad=3, width=16, garbage=True, with_wrong=False, labels=(1.0,),
               wrong_labels=None):
  """The §7.3 response as chosen (one row per label), optionally the wrong one as rejected."""
  n = len(labels)
  pol, mask = embed([PRM_POLICY] * n, width, [pad] * n, garbage=garbage)
  ref, _ = embed([PRM_REF] * n, width, [pad] * n, np.random.default_rng(1), garbage=garbage)
  fields = dict(policy_chosen_logps=f32(pol), ref_chosen_logps=f32(ref), chosen_mask=f32(mask),
                targets={"chosen_label": f32(labels)}, policy_rejected_logps=None,
                rejected_mask=None)
  if with_wrong:
    wpol, wmask = embed([WRONG_POLICY] * n, width, [pad + 1] * n, np.random.default_rng(2),
                        garbage=garbage)
    wref, _ = embed([WRONG_REF] * n, width, [pad + 1] * n, np.random.default_rng(3),
                    garbage=garbage)
    fields.update(policy_rejected_logps=f32(wpol), ref_rejected_logps=f32(wref),
                  rejected_mask=f32(wmask))
    if wrong_labels is not None:
      fields["targets"] = dict(fields["targets"], rejected_label=f32(wrong_labels))
  return LossInputs(**fields)


def ce_reference(r, label):
  log_sig = lambda x: -np.logaddexp(0.0, -x)
  return -(label * log_sig(r) + (1 - label) * log_sig(-r))


# ---------------------------------------------------------------------------------------
# Implicit PRM: token and step quantities.


def _step_ends_row(pad, width):
  ends = np.zeros((1, width), np.float32)
  ends[0, [pad + e for e in STEP_ENDS]] = 1.0
  return ends


def test_token_rewards_worked_numbers():
  inputs = prm_inputs(pad=5)
  r = implicit_prm.token_rewards(inputs.policy_chosen_logps, inputs.ref_chosen_logps,
                                 inputs.chosen_mask, BETA)
  expected = np.zeros(16)
  expected[5:11] = TOKEN_REWARDS
  np.testing.assert_allclose(r[0], expected, atol=1e-6)


@pytest.mark.parametrize("pad", [0, 4, 10])
def test_step_rewards_worked_numbers(pad):
  inputs = prm_inputs(pad=pad)
  ends = _step_ends_row(pad, 16)
  ends[0, :pad] = 1.0  # step markers under mask 0 are ignored
  r = implicit_prm.token_rewards(inputs.policy_chosen_logps, inputs.ref_chosen_logps,
                                 inputs.chosen_mask, BETA)
  q, single, valid = implicit_prm.step_rewards(r, f32(ends), inputs.chosen_mask)
  assert q.shape == single.shape == valid.shape == (1, 16)
  np.testing.assert_array_equal(valid[0], [True] * 3 + [False] * 13)
  np.testing.assert_allclose(q[0, :3], Q_AT_ENDS, atol=1e-6)
  np.testing.assert_allclose(single[0, :3], SINGLE, atol=1e-6)
  np.testing.assert_array_equal(q[0, 3:], 0.0)
  np.testing.assert_array_equal(single[0, 3:], 0.0)
  for values in (q, single):
    assert implicit_prm.aggregate(values, valid, "min")[0] == pytest.approx(0.005, abs=1e-6)
  assert implicit_prm.aggregate(q, valid, "sum")[0] == pytest.approx(0.065, abs=1e-6)
  assert implicit_prm.aggregate(single, valid, "sum")[0] == pytest.approx(0.05, abs=1e-6)


def test_score_responses_all_four_strategies():
  inputs = prm_inputs(pad=2)
  ends = f32(_step_ends_row(2, 16))
  score = lambda mode, how: implicit_prm.score_responses(
      inputs.policy_chosen_logps, inputs.ref_chosen_logps, inputs.chosen_mask, ends, BETA,
      mode, how)[0]
  assert score("accumulative", "min") == pytest.approx(0.005, abs=1e-6)
  assert score("accumulative", "sum") == pytest.approx(0.065, abs=1e-6)
  assert score("single", "min") == pytest.approx(0.005, abs=1e-6)
  # The sum of single-step rewards is the outcome reward r = 0.05 (§7.3).
  assert score("single", "sum") == pytest.approx(0.05, abs=1e-6)


def _loop_step_rewards(rewards, ends, mask):
  """Python-loop reference: q at each step end in order, and the differences."""
  out = []
  for r, e, m in zip(rewards, ends, mask):
    q, prev, qs, singles = 0.0, 0.0, [], []
    for t in range(len(r)):
      if m[t] > 0:
        q += r[t]
        if e[t] > 0:
          qs.append(q)
          singles.append(q - prev)
          prev = q
    out.append((qs, singles))
  return out


def test_step_rewards_match_loop_on_random_rows():
  rng = np.random.default_rng(3)
  batch, width = 6, 20
  rewards = rng.normal(size=(batch, width)).astype(np.float32)
  mask = np.zeros((batch, width), np.float32)
  for b in range(batch):
    start = rng.integers(0, 8)
    mask[b, start:start + rng.integers(0, width - start + 1)] = 1.0
  ends = (rng.uniform(size=(batch, width)) < 0.3).astype(np.float32)
  q, single, valid = jax.jit(implicit_prm.step_rewards)(f32(rewards), f32(ends), f32(mask))
  for b, (qs, singles) in enumerate(_loop_step_rewards(rewards, ends, mask)):
    k = len(qs)
    assert int(valid[b].sum()) == k and bool(valid[b, :k].all())
    np.testing.assert_allclose(q[b, :k], qs, atol=1e-5)
    np.testing.assert_allclose(single[b, :k], singles, atol=1e-5)


def test_step_rewards_static_max_steps():
  inputs = prm_inputs(pad=1)
  r = implicit_prm.token_rewards(inputs.policy_chosen_logps, inputs.ref_chosen_logps,
                                 inputs.chosen_mask, BETA)
  ends = f32(_step_ends_row(1, 16))
  q2, s2, v2 = implicit_prm.step_rewards(r, ends, inputs.chosen_mask, max_steps=2)
  np.testing.assert_allclose(q2[0], Q_AT_ENDS[:2], atol=1e-6)
  assert v2.shape == (1, 2) and bool(v2.all())
  q40, _, v40 = implicit_prm.step_rewards(r, ends, inputs.chosen_mask, max_steps=40)
  assert q40.shape == (1, 40) and int(v40.sum()) == 3
  np.testing.assert_allclose(q40[0, :3], Q_AT_ENDS, atol=1e-6)


def test_aggregate_ignores_invalid_and_empty_rows():
  values = f32([[0.3, -5.0, 0.1], [9.0, 9.0, 9.0]])
  valid = jnp.array([[True, False, True], [False, False, False]])
  np.testing.assert_allclose(implicit_prm.aggregate(values, valid, "min"), [0.1, 0.0])
  np.testing.assert_allclose(implicit_prm.aggregate(values, valid, "sum"), [0.4, 0.0])
  grads = jax.grad(lambda v: implicit_prm.aggregate(v, valid, "min").sum())(values)
  np.testing.assert_array_equal(grads, [[0, 0, 1], [0, 0, 0]])
  with pytest.raises(ValueError, match="how"):
    implicit_prm.aggregate(values, valid, "max")


def test_best_of_n():
  scores = f32([[0.1, 0.5, -0.2], [-1.0, -3.0, -0.5], [0.2, 0.2, 0.1]])
  np.testing.assert_array_equal(implicit_prm.best_of_n(scores), [1, 2, 0])


# ---------------------------------------------------------------------------------------
# Implicit PRM: the registered loss.


@pytest.mark.parametrize("label,expected", [(1.0, CE_LABEL1), (0.0, CE_LABEL0)])
def test_implicit_prm_ce_worked_numbers(label, expected):
  loss, metrics = implicit_prm.implicit_prm(prm_inputs(labels=(label,)), loss_cfg("implicit_prm"))
  assert float(loss) == pytest.approx(expected, abs=1e-6)
  assert float(metrics["rewards/mean"]) == pytest.approx(0.05, abs=1e-6)
  assert float(metrics["prm/accuracy"]) == label  # σ(0.05) > 0.5 predicts "correct"


def test_implicit_prm_ce_unpaired_batch_and_rejected_slot():
  cfg = loss_cfg("implicit_prm")
  both = implicit_prm.implicit_prm(prm_inputs(labels=(1.0, 0.0)), cfg)[0]
  assert float(both) == pytest.approx((CE_LABEL1 + CE_LABEL0) / 2, abs=1e-6)
  # Rejected slot with labels: more unpaired responses (the wrong one has r = -0.04).
  inputs = prm_inputs(labels=(1.0,), with_wrong=True, wrong_labels=(0.0,))
  loss, metrics = implicit_prm.implicit_prm(inputs, cfg)
  expected = (CE_LABEL1 + ce_reference(-0.04, 0.0)) / 2
  assert float(loss) == pytest.approx(expected, abs=1e-6)
  assert float(metrics["prm/accuracy"]) == 1.0
  assert float(metrics["rewards/correct"]) == pytest.approx(0.05, abs=1e-6)
  assert float(metrics["rewards/wrong"]) == pytest.approx(-0.04, abs=1e-6)
  # Rejected slot without labels is ignored by the CE objective.
  unlabelled = prm_inputs(labels=(1.0,), with_wrong=True, wrong_labels=None)
  assert float(implicit_prm.implicit_prm(unlabelled, cfg)[0]) == pytest.approx(CE_LABEL1,
                                                                               abs=1e-6)


def test_implicit_prm_ce_pair_weights_drop_filler():
  inputs = prm_inputs(labels=(1.0, 0.0)).replace(pair_weights=f32([1.0, 0.0]))
  loss = implicit_prm.implicit_prm(inputs, loss_cfg("implicit_prm"))[0]
  assert float(loss) == pytest.approx(CE_LABEL1, abs=1e-6)


def test_implicit_prm_dpo_worked_number():
  loss, metrics = implicit_prm.implicit_prm(prm_inputs(with_wrong=True),
                                            loss_cfg("implicit_prm", prm_objective="dpo"))
  assert float(loss) == pytest.approx(DPO_LOSS, abs=1e-6)
  assert float(metrics["rewards/chosen"]) == pytest.approx(0.05, abs=1e-6)
  assert float(metrics["rewards/rejected"]) == pytest.approx(-0.04, abs=1e-6)
  assert float(metrics["rewards/accuracies"]) == 1.0


def test_implicit_prm_dpo_needs_pairs():
  with pytest.raises(ValueError, match="rejected"):
    implicit_prm.implicit_prm(prm_inputs(), loss_cfg("implicit_prm", prm_objective="dpo"))


@pytest.mark.parametrize("objective", ["ce", "dpo"])
def test_implicit_prm_garbage_padding_and_grads(objective):
  cfg = loss_cfg("implicit_prm", prm_objective=objective)
  fn = jax.jit(lambda x: implicit_prm.implicit_prm(x, cfg)[0])
  grad = jax.jit(jax.grad(lambda x: implicit_prm.implicit_prm(x, cfg)[0]))
  clean = prm_inputs(pad=0, garbage=False, with_wrong=True, wrong_labels=(0.0,))
  base = float(fn(clean))
  for pad in (0, 2, 7):
    dirty = prm_inputs(pad=pad, garbage=True, with_wrong=True, wrong_labels=(0.0,))
    assert float(fn(dirty)) == pytest.approx(base, abs=1e-6)
    g = grad(dirty)
    for leaf in (g.policy_chosen_logps, g.policy_rejected_logps):
      assert bool(jnp.all(jnp.isfinite(leaf)))
    # The gradient lives only on completion tokens.
    assert float(jnp.abs(jnp.where(dirty.chosen_mask > 0, 0.0, g.policy_chosen_logps)).max()) == 0


def test_implicit_prm_finite_grads_at_init():
  """policy == reference: every reward is 0 (σ = 0.5)."""
  for objective in ("ce", "dpo"):
    inputs = prm_inputs(with_wrong=True, wrong_labels=(0.0,))
    inputs = inputs.replace(policy_chosen_logps=inputs.ref_chosen_logps,
                            policy_rejected_logps=inputs.ref_rejected_logps)
    cfg = loss_cfg("implicit_prm", prm_objective=objective)
    loss, g = jax.value_and_grad(lambda x: implicit_prm.implicit_prm(x, cfg)[0])(inputs)
    assert float(loss) == pytest.approx(np.log(2.0), abs=1e-6)
    assert bool(jnp.all(jnp.isfinite(g.policy_chosen_logps)))


def test_implicit_prm_registration_and_validation():
  algo = get_algorithm("implicit_prm")
  assert algo.requirements.reference and algo.requirements.outcome_labels
  algo.validate(loss_cfg("implicit_prm"))
  algo.validate(loss_cfg("implicit_prm", prm_objective="dpo"))
  with pytest.raises(ValueError, match="prm_objective"):
    algo.validate(loss_cfg("implicit_prm", prm_objective="kto"))
  with pytest.raises(ValueError, match="beta"):
    algo.validate(loss_cfg("implicit_prm", beta=0.0))
  with pytest.raises(ValueError, match="label_smoothing"):
    algo.validate(loss_cfg("implicit_prm", label_smoothing=0.1))


# ---------------------------------------------------------------------------------------
# PRIME: rewards, RLOO, returns, advantages.


def prime_batch(width=8, garbage=True, offsets=(0, 0, 0, 0)):
  """The §8.3 q and mask placed at `offsets` in [4, width] rows, garbage elsewhere."""
  rows = [PRIME_Q[b, :int(PRIME_MASK[b].sum())] for b in range(4)]
  q, mask = embed(rows, width, offsets, garbage=garbage)
  return f32(q), f32(mask)


def _shift_back(x, offsets, length=5):
  return np.stack([np.asarray(x)[b, o:o + length] for b, o in enumerate(offsets)])


def test_prime_prm_ce_loss_worked_number_and_shared_path():
  ref = np.random.default_rng(4).uniform(-3, -0.1, size=PRIME_Q.shape).astype(np.float32)
  loss = prime.prm_update_loss(f32(PRIME_Q + ref), f32(ref), f32(PRIME_MASK), f32(PRIME_ACC),
                               0.05)
  assert float(loss) == pytest.approx(PRIME_CE, abs=1e-6)
  inputs = LossInputs(policy_chosen_logps=f32(PRIME_Q + ref), ref_chosen_logps=f32(ref),
                      chosen_mask=f32(PRIME_MASK), targets={"chosen_label": f32(PRIME_ACC)},
                      policy_rejected_logps=None, rejected_mask=None)
  same = implicit_prm.implicit_prm(inputs, loss_cfg("implicit_prm", beta=0.05))[0]
  assert float(same) == pytest.approx(float(loss), abs=1e-7)
  weighted = prime.prm_update_loss(f32(PRIME_Q + ref), f32(ref), f32(PRIME_MASK),
                                   f32(PRIME_ACC), 0.05, weights=f32([1, 1, 1, 1]))
  assert float(weighted) == pytest.approx(float(loss), abs=1e-7)


def test_prime_batch_norm_denominator():
  q, mask = prime_batch()
  normed = prime.batch_norm_rewards(q, mask)
  expected = np.zeros((4, 8), np.float32)
  expected[:, :5] = PRIME_Q / (0.8 + 1e-6)
  np.testing.assert_allclose(normed, expected, atol=1e-7)


@pytest.mark.parametrize("offsets", [(0, 0, 0, 0), (3, 0, 1, 2), (1, 5, 2, 6)])
def test_prime_returns_and_advantages_worked_numbers(offsets):
  q, mask = prime_batch(width=11, offsets=offsets)
  labels = f32(PRIME_ACC)
  got_returns = jax.jit(prime.prime_returns, static_argnums=(3, 4))(q, mask, labels, 4, "code")
  got_adv = jax.jit(prime.prime_advantages, static_argnums=(3, 4))(q, mask, labels, 4, "code")
  np.testing.assert_allclose(_shift_back(got_returns, offsets), PRIME_RETURNS, atol=1e-5)
  np.testing.assert_allclose(_shift_back(got_adv, offsets), PRIME_ADVANTAGES, atol=1e-5)
  for x in (got_returns, got_adv):
    assert bool(jnp.all(jnp.isfinite(x)))
    assert float(jnp.abs(jnp.where(mask > 0, 0.0, x)).max()) == 0.0


def _numpy_rloo(x, mask, n, form):
  """Explicit per-row loops: official code form, or the paper's leave-one-out."""
  x = np.where(mask > 0, x, 0.0).astype(np.float64)
  out = np.zeros_like(x)
  means = np.array([x[i][mask[i] > 0].mean() if mask[i].sum() else 0.0 for i in range(len(x))])
  for i in range(len(x)):
    g = range(i - i % n, i - i % n + n)
    if form == "code":
      value = x[i] * n / (n - 1) - sum(means[j] for j in g) / (n - 1)
    else:
      value = x[i] - np.mean([means[j] for j in g if j != i])
    out[i] = np.where(mask[i] > 0, value, 0.0)
  return out


@pytest.mark.parametrize("form", ["code", "paper"])
def test_rloo_matches_explicit_loops(form):
  rng = np.random.default_rng(5)
  batch, width, n = 6, 9, 3
  x = rng.normal(size=(batch, width)).astype(np.float32)
  mask = (rng.uniform(size=(batch, width)) < 0.7).astype(np.float32)
  dirty = np.where(mask > 0, x, np.nan).astype(np.float32)
  got = prime.rloo_token_rewards(f32(dirty), f32(mask), n, form)
  np.testing.assert_allclose(got, _numpy_rloo(x, mask, n, form), atol=1e-5)


def test_rloo_code_minus_paper_is_the_extra_term():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(4, 5)).astype(np.float32)
  mask = np.ones((4, 5), np.float32)
  code = prime.rloo_token_rewards(f32(x), f32(mask), 4, "code")
  paper = prime.rloo_token_rewards(f32(x), f32(mask), 4, "paper")
  extra = (x - x.mean(axis=1, keepdims=True)) / 3
  np.testing.assert_allclose(code - paper, extra, atol=1e-6)


def test_outcome_rloo_is_standard_leave_one_out():
  q, mask = prime_batch(width=8, offsets=(2, 0, 1, 3))
  labels = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
  rewards, last = prime.outcome_token_rewards(f32(labels), mask)
  np.testing.assert_array_equal(np.argmax(np.asarray(last), axis=1), [6, 2, 4, 4])
  loo = labels - (labels.sum() - labels) / 3
  for form in ("code", "paper"):
    out = prime.rloo_token_rewards(rewards, last, 4, form)
    np.testing.assert_allclose(out.sum(axis=1), loo, atol=1e-6)
    assert float(jnp.abs(jnp.where(last > 0, 0.0, out)).max()) == 0.0


def test_last_token_mask_empty_row():
  mask = f32([[0, 1, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(prime.last_token_mask(mask), [[0, 0, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_returns_discounted(gamma):
  rng = np.random.default_rng(7)
  r = rng.normal(size=(3, 6)).astype(np.float32)
  mask = np.array([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]], np.float32)
  expected = np.zeros_like(r)
  for b in range(3):
    pos = np.flatnonzero(mask[b])
    for k, t in enumerate(pos):
      expected[b, t] = sum(gamma ** (j - k) * r[b, pos[j]] for j in range(k, len(pos)))
  got = jax.jit(prime.returns, static_argnums=2)(f32(np.where(mask > 0, r, np.inf)), f32(mask),
                                                  gamma)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_masked_whiten():
  rng = np.random.default_rng(8)
  x = rng.normal(2.0, 3.0, size=(3, 7)).astype(np.float32)
  mask = (rng.uniform(size=(3, 7)) < 0.6).astype(np.float32)
  w = np.asarray(prime.masked_whiten(f32(np.where(mask > 0, x, np.nan)), f32(mask)))
  valid = w[mask > 0]
  assert valid.mean() == pytest.approx(0.0, abs=1e-5)
  assert valid.var(ddof=1) == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_array_equal(w[mask == 0], 0.0)


def test_prime_options():
  q, mask = prime_batch()
  labels = f32(PRIME_ACC)
  base = prime.prime_advantages(q, mask, labels, 4)
  # Equal coefficients (verl's 5, 5) only rescale the returns, which whitening removes.
  scaled = prime.prime_advantages(q, mask, labels, 4, process_coef=5.0, outcome_coef=5.0)
  np.testing.assert_allclose(scaled, base, atol=1e-5)
  # Without batch_norm, scaling q (β in r) changes the process returns.
  r1 = prime.prime_returns(q, mask, labels, 4, normalize=False)
  r2 = prime.prime_returns(0.05 * q, mask, labels, 4, normalize=False)
  assert float(jnp.abs(r1 - r2).max()) > 1e-3
  # With batch_norm a positive β on q changes nothing.
  np.testing.assert_allclose(prime.prime_returns(0.05 * q, mask, labels, 4),
                             prime.prime_returns(q, mask, labels, 4), atol=1e-4)
  # drop_last_token_reward equals zeroing the last process reward by hand.
  last = prime.last_token_mask(mask)
  q_dropped = jnp.where(last > 0, 0.0, jnp.where(mask > 0, q, 0.0))
  np.testing.assert_allclose(prime.prime_returns(q, mask, labels, 4, drop_last_token_reward=True),
                             prime.prime_returns(q_dropped, mask, labels, 4), atol=1e-6)


def test_prime_rloo_group_size_checks():
  q, mask = prime_batch()
  with pytest.raises(ValueError, match="group_size"):
    prime.rloo_token_rewards(q, mask, 3)
  with pytest.raises(ValueError, match="group_size"):
    prime.rloo_token_rewards(q, mask, 1)
  with pytest.raises(ValueError, match="form"):
    prime.rloo_token_rewards(q, mask, 4, "other")


def test_prime_advantages_have_no_gradient():
  q, mask = prime_batch(garbage=False)
  g = jax.grad(lambda x: jnp.sum(prime.prime_advantages(x, mask, f32(PRIME_ACC), 4) ** 3))(q)
  np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------------------------------
# PRIME: the policy loss.


def ppo_inputs(rng, batch=4, width=10, garbage=True, shift=0.0):
  mask = np.zeros((batch, width), np.float32)
  for b in range(batch):
    start = rng.integers(0, 4)
    mask[b, start:start + rng.integers(1, width - start + 1)] = 1.0
  old = rng.uniform(-4, -0.1, size=mask.shape).astype(np.float32)
  new = old + shift * rng.normal(size=mask.shape).astype(np.float32)
  adv = rng.normal(size=mask.shape).astype(np.float32)
  if garbage:
    junk = rng.choice(GARBAGE, size=mask.shape)
    old, new, adv = (np.where(mask > 0, x, junk).astype(np.float32) for x in (old, new, adv))
  return LossInputs(policy_chosen_logps=f32(new), prev_chosen_logps=f32(old),
                    targets={"chosen_advantages": f32(adv)}, chosen_mask=f32(mask),
                    policy_rejected_logps=None,
                    rejected_mask=None)


def test_ppo_ratio_one_is_policy_gradient():
  inputs = ppo_inputs(np.random.default_rng(9))
  mask = np.asarray(inputs.chosen_mask)
  adv = np.where(mask > 0, np.asarray(inputs.targets["chosen_advantages"]), 0.0)
  n = mask.sum()
  fn = lambda logps: prime.ppo_clip_loss(logps, inputs.prev_chosen_logps,
                                         inputs.targets["chosen_advantages"],
                                         inputs.chosen_mask, 0.2)
  (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(inputs.policy_chosen_logps)
  assert float(loss) == pytest.approx(-adv.sum() / n, abs=1e-6)
  np.testing.assert_allclose(g, -adv * mask / n, atol=1e-7)
  assert float(metrics["clipfrac"]) == 0.0
  assert float(metrics["approx_kl"]) == pytest.approx(0.0, abs=1e-7)


def test_ppo_clipping():
  mask = f32([[1, 1, 1, 1]])
  old = f32([[-1.0, -1.0, -1.0, -1.0]])
  new = old + f32([[0.5, 0.5, -0.5, 0.05]])  # ratios 1.65, 1.65, 0.61, 1.05
  adv = f32([[1.0, -1.0, -1.0, 1.0]])
  fn = lambda x: prime.ppo_clip_loss(x, old, adv, mask, 0.2)
  (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(new)
  ratio = np.exp([0.5, 0.5, -0.5, 0.05])
  per_token = [-1.2, ratio[1], 0.8, -ratio[3]]  # clipped where it is pessimistic
  assert float(loss) == pytest.approx(np.mean(per_token), abs=1e-6)
  np.testing.assert_allclose(g[0], [0.0, ratio[1] / 4, 0.0, -ratio[3] / 4], atol=1e-6)
  assert float(metrics["clipfrac"]) == pytest.approx(0.5)
  assert float(metrics["approx_kl"]) == pytest.approx(-(0.5 + 0.5 - 0.5 + 0.05) / 4, abs=1e-6)


def test_prime_loss_garbage_invariance_jit_and_grads():
  cfg = loss_cfg("prime")
  fn = jax.jit(lambda x: prime.prime(x, cfg))
  dirty = ppo_inputs(np.random.default_rng(10), shift=0.3)
  clean = ppo_inputs(np.random.default_rng(10), garbage=False, shift=0.3)
  (l1, m1), (l2, m2) = fn(dirty), fn(clean)
  assert float(l1) == pytest.approx(float(l2), abs=1e-6)
  for k in m1:
    assert float(m1[k]) == pytest.approx(float(m2[k]), abs=1e-6), k
  g = jax.grad(lambda x: prime.prime(x, cfg)[0])(dirty)
  assert bool(jnp.all(jnp.isfinite(g.policy_chosen_logps)))
  assert float(jnp.abs(jnp.where(dirty.chosen_mask > 0, 0.0, g.policy_chosen_logps)).max()) == 0


def test_prime_loss_pair_weights_drop_filler_rows():
  cfg = loss_cfg("prime")
  inputs = ppo_inputs(np.random.default_rng(11), shift=0.3)
  real = jax.tree_util.tree_map(lambda x: x[:2], inputs)
  weighted = inputs.replace(pair_weights=f32([1, 1, 0, 0]))
  (l1, m1), (l2, m2) = prime.prime(weighted, cfg), prime.prime(real, cfg)
  assert float(l1) == pytest.approx(float(l2), abs=1e-6)
  for k in m1:
    assert float(m1[k]) == pytest.approx(float(m2[k]), abs=1e-6), k


def test_prime_loss_needs_inputs():
  inputs = ppo_inputs(np.random.default_rng(12))
  with pytest.raises(ValueError, match="advantages"):
    prime.prime(inputs.with_targets(chosen_advantages=None), loss_cfg("prime"))
  with pytest.raises(ValueError, match="prev_chosen_logps"):
    prime.prime(inputs.replace(prev_chosen_logps=None), loss_cfg("prime"))


def test_prime_registration_and_validation():
  algo = get_algorithm("prime")
  req = algo.requirements
  assert not req.reference and req.previous_policy and req.online and req.outcome_labels
  algo.validate(loss_cfg("prime"))
  algo.validate(loss_cfg("prime", prime_rloo_form="paper"))
  for key, bad in [("ppo_clip", 0.0), ("ppo_clip", 1.0), ("prm_beta", -1.0),
                   ("prime_rloo_form", "verl")]:
    with pytest.raises(ValueError, match=key):
      algo.validate(loss_cfg("prime", **{key: bad}))
