"""Tests for LD-DPO, DNO, INPO and T-REG (algorithms/{ld_dpo,dno,inpo,t_reg}.py).

Expected numbers are the worked examples of shared/research/algorithms.md §2.4 (LD-DPO), §3.3
(DNO), §4.4 (INPO) and §6.3 (T-REG), recomputed in float64 with the numpy script of its
appendix. Completions are placed in [B, T] rows after left padding and a prompt (mask 0), so
every test also exercises completion-relative positions and masking; the positions that mask
0 covers hold garbage (finite noise, or ±inf/NaN) unless a test says otherwise.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import LossInputs, get_algorithm, get_loss
from algorithms import dno as dno_module
from algorithms import inpo as inpo_module
from algorithms import ld_dpo as ld_dpo_module
from algorithms import t_reg as t_reg_module
from algorithms import dpo as dpo_module  # noqa: F401  (registers dpo / ipo)
from algorithms import simpo as simpo_module  # noqa: F401  (registers simpo)
from tests.conftest import loss_hyperparameters

NAMES = ("ld_dpo", "dno", "inpo", "t_reg")


def loss_cfg(name, **overrides):
  """config.loss with the loss's registered defaults, then `overrides`."""
  return loss_hyperparameters(name, **overrides)


def sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------------------
# Building [B, T] rows: completions placed after left padding and a prompt.

T = 24


def positions(start, n, hole_after=None, hole=0):
  """Row positions of an n-token completion starting at `start`, optionally cut by a hole of
  `hole` mask-zero positions after `hole_after` tokens."""
  pos = np.arange(start, start + n)
  if hole_after is not None:
    pos = np.where(np.arange(n) >= hole_after, pos + hole, pos)
  assert n == 0 or (pos.min() >= 1 and pos.max() < T)
  return pos


def place(rows, row_positions, fill, rng):
  """[B, T] float32 with rows[b] at row_positions[b]; elsewhere `fill`:
  "zero", "garbage" (finite noise of either sign) or "nonfinite" (±inf, NaN, huge)."""
  b = len(rows)
  if fill == "zero":
    out = np.zeros((b, T))
  elif fill == "garbage":
    out = rng.uniform(-9.0, 9.0, size=(b, T))
  elif fill == "nonfinite":
    out = rng.choice(np.array([np.inf, -np.inf, np.nan, 3e38, -3e38]), size=(b, T))
  else:
    raise ValueError(fill)
  for i, (values, pos) in enumerate(zip(rows, row_positions)):
    out[i, pos] = values
  return jnp.asarray(out, jnp.float32)


def mask_of(row_positions):
  m = np.zeros((len(row_positions), T), np.float32)
  for i, pos in enumerate(row_positions):
    m[i, pos] = 1.0
  return jnp.asarray(m)


def build(chosen, rejected, pos_w, pos_l, fill="garbage", seed=0, probs=None):
  """LossInputs from per-row token values.

  `chosen` / `rejected`: dicts field -> list of per-row 1-D arrays, fields among
  "policy", "ref", "prev", "reward" (absent fields stay None).
  """
  rng = np.random.default_rng(seed)
  get = lambda side, pos, key: (place(side[key], pos, fill, rng) if key in side else None)
  return LossInputs(
      policy_chosen_logps=get(chosen, pos_w, "policy"),
      policy_rejected_logps=get(rejected, pos_l, "policy"),
      chosen_mask=mask_of(pos_w), rejected_mask=mask_of(pos_l),
      ref_chosen_logps=get(chosen, pos_w, "ref"),
      ref_rejected_logps=get(rejected, pos_l, "ref"),
      prev_chosen_logps=get(chosen, pos_w, "prev"),
      prev_rejected_logps=get(rejected, pos_l, "prev"),
  ).with_targets(
      chosen_token_rewards=get(chosen, pos_w, "reward"),
      rejected_token_rewards=get(rejected, pos_l, "reward"),
      preference_prob=None if probs is None else jnp.asarray(probs, jnp.float32))


# Fixture B (algorithms.md §0): one pair, chosen 4 tokens, rejected 6.
B_CHOSEN = {"policy": [np.array([-0.5, -1.0, -0.2, -0.8])],
            "ref": [np.array([-0.6, -0.9, -0.4, -1.0])]}
B_REJECTED = {"policy": [np.array([-0.7, -1.2, -0.3, -0.9, -1.5, -0.4])],
              "ref": [np.array([-0.6, -1.0, -0.5, -0.8, -1.1, -0.6])]}
# T-REG contrastive-prompt log-probs of the same tokens (§6.3).
B_BETTER_W = np.array([-0.4, -1.5, -0.2, -0.6])
B_WORSE_W = np.array([-0.9, -1.0, -0.3, -1.6])
B_BETTER_L = np.array([-0.9, -1.1, -0.6, -1.4, -2.0, -0.5])
B_WORSE_L = np.array([-0.5, -1.3, -0.2, -0.7, -0.9, -0.6])
R_HAT_W = [0.1224593312, -0.1224593312, 0.0249791875, 0.2310585786]
R_HAT_L = [-0.0986876601, 0.0498339973, -0.0986876601, -0.1681877722, -0.2502601056,
           0.0249791875]


def fixture_b(pad_w=2, prompt_w=5, pad_l=0, prompt_l=3, fill="garbage", extra=None):
  """Fixture B with each completion after `pad` left-padding and a `prompt` (both mask 0)."""
  chosen, rejected = dict(B_CHOSEN), dict(B_REJECTED)
  for key, (w, l) in (extra or {}).items():
    chosen[key], rejected[key] = [np.asarray(w)], [np.asarray(l)]
  return build(chosen, rejected, [positions(1 + pad_w + prompt_w, 4)],
               [positions(1 + pad_l + prompt_l, 6)], fill=fill)


def random_batch(seed=0, fill="garbage", lengths_w=(5, 9, 3), lengths_l=(8, 4, 3),
                 starts_w=(3, 10, 15), starts_l=(12, 2, 20), init=False, probs=False):
  """A [3, T] batch with every field, unequal lengths, a hole in one completion, and distinct
  starts (left padding + prompt). `init`: ref = prev = policy (the step-0 state)."""
  rng = np.random.default_rng(1000 + seed)

  def side(lengths):
    policy = [rng.uniform(-3.0, -0.05, n) for n in lengths]
    out = {"policy": policy,
           "reward": [rng.uniform(-0.5, 0.5, n) for n in lengths]}
    if init:
      out["ref"], out["prev"] = list(policy), list(policy)
    else:
      out["ref"] = [p + rng.normal(0, 0.3, len(p)) for p in policy]
      out["prev"] = [p + rng.normal(0, 0.3, len(p)) for p in policy]
    return out

  pos_w = [positions(s, n) for s, n in zip(starts_w, lengths_w)]
  pos_w[1] = positions(starts_w[1], lengths_w[1], hole_after=4, hole=3)
  pos_l = [positions(s, n) for s, n in zip(starts_l, lengths_l)]
  p = rng.uniform(0.0, 1.0, len(lengths_w)) if probs else None
  return build(side(lengths_w), side(lengths_l), pos_w, pos_l, fill=fill, seed=seed, probs=p)


# Every registered loss here, with a config that exercises its non-trivial path.
CASES = {
    "ld_dpo": loss_cfg("ld_dpo", ld_alpha=0.5, ld_apply_to_ref=True),
    "ld_dpo_policy_only": loss_cfg("ld_dpo", ld_alpha=0.3, ld_apply_to_ref=False),
    "dno": loss_cfg("dno"),
    "dno_soft": loss_cfg("dno"),
    "inpo": loss_cfg("inpo"),
    "inpo_moderate": loss_cfg("inpo", inpo_eta=0.5, inpo_ratio=0.2),
    "t_reg": loss_cfg("t_reg", t_reg_alpha=0.5),
    "t_reg_simpo": loss_cfg("t_reg", t_reg_alpha=0.5, t_reg_base="simpo", beta=2.0),
}


def case_batch(case, **kwargs):
  return random_batch(probs=case == "dno_soft", **kwargs)


def loss_of(case):
  cfg = CASES[case]
  return lambda inputs: get_loss(cfg.name)(inputs, cfg)


# ---------------------------------------------------------------------------------------
# Registry, requirements and validation.


def test_registered_with_requirements():
  req = {name: get_algorithm(name).requirements for name in NAMES}
  assert req["ld_dpo"].reference and not req["ld_dpo"].previous_policy
  assert not req["dno"].reference and req["dno"].previous_policy and req["dno"].online
  assert req["inpo"].reference and req["inpo"].previous_policy and req["inpo"].online
  assert req["t_reg"].reference and req["t_reg"].token_rewards
  assert not req["t_reg"].previous_policy and not req["ld_dpo"].online


@pytest.mark.parametrize("case", sorted(CASES))
def test_valid_configs_pass_validation(case):
  cfg = CASES[case]
  get_algorithm(cfg.name).validate(cfg)


def test_base_config_defaults_pass_validation():
  for name in NAMES:
    get_algorithm(name).validate(loss_cfg(name))


BAD = [
    ("ld_dpo", {"ld_alpha": 1.5}, "ld_alpha"),
    ("ld_dpo", {"ld_alpha": -0.1}, "ld_alpha"),
    ("ld_dpo", {"ld_alpha": float("nan")}, "ld_alpha"),
    ("ld_dpo", {"ld_apply_to_ref": 1}, "ld_apply_to_ref"),
    ("ld_dpo", {"beta": 0.0}, "beta"),
    ("ld_dpo", {"label_smoothing": 0.1}, "label_smoothing"),
    ("dno", {"beta": -1.0}, "beta"),
    ("dno", {"label_smoothing": 0.1}, "label_smoothing"),
    ("dno", {"sft_weight": -1.0}, "sft_weight"),
    ("inpo", {"sft_weight": float("nan")}, "sft_weight"),
    ("inpo", {"inpo_eta": 0.0}, "inpo_eta"),
    ("inpo", {"inpo_eta": float("inf")}, "inpo_eta"),
    ("inpo", {"inpo_ratio": 1.0}, "inpo_ratio"),
    ("inpo", {"inpo_ratio": -0.2}, "inpo_ratio"),
    ("inpo", {"label_smoothing": 0.1}, "label_smoothing"),
    ("t_reg", {"t_reg_alpha": -0.1}, "t_reg_alpha"),
    ("t_reg", {"t_reg_base": "ipo"}, "t_reg_base"),
    ("t_reg", {"beta": 0.0}, "beta"),
    ("t_reg", {"t_reg_base": "simpo", "simpo_gamma_beta_ratio": -1.0},
     "simpo_gamma_beta_ratio"),
    ("t_reg", {"sft_weight": 0.5}, "sft_weight"),
]


@pytest.mark.parametrize("name,overrides,key", BAD)
def test_validate_rejects_bad_values_naming_the_key(name, overrides, key):
  with pytest.raises(ValueError, match=f"config.loss.{key}"):
    get_algorithm(name).validate(loss_cfg(name, **overrides))


def test_validate_reports_missing_key():
  cfg = loss_cfg("inpo")
  del cfg["inpo_eta"]
  with pytest.raises(ValueError, match="config.loss.inpo_eta"):
    get_algorithm("inpo").validate(cfg)


# ---------------------------------------------------------------------------------------
# LD-DPO (§2).

# α: (policy log π̂_w, log π̂_l, LD ref_l, loss policy-only ref, loss policy+ref)
LD_TABLE = {
    1.0: (-2.5, -5.0, -4.6, 0.6539469673, 0.6539469673),
    0.5: (-2.5, -4.05, -3.75, 0.7006753053, 0.6587595555),
    0.0: (-2.5, -3.1, -2.9, 0.7496589186, 0.6635971131),
}


@pytest.mark.parametrize("alpha", sorted(LD_TABLE))
def test_ld_sequence_logps_fixture_b(alpha):
  inputs = fixture_b()
  pol_w, pol_l, ref_l, _, _ = LD_TABLE[alpha]
  w, l = ld_dpo_module.ld_sequence_logps(inputs.policy_chosen_logps, inputs.chosen_mask,
                                         inputs.policy_rejected_logps, inputs.rejected_mask,
                                         alpha)
  assert w.shape == l.shape == (1,) and w.dtype == jnp.float32
  np.testing.assert_allclose([float(w[0]), float(l[0])], [pol_w, pol_l], atol=1e-6)
  rw, rl = ld_dpo_module.ld_sequence_logps(inputs.ref_chosen_logps, inputs.chosen_mask,
                                           inputs.ref_rejected_logps, inputs.rejected_mask,
                                           alpha)
  np.testing.assert_allclose([float(rw[0]), float(rl[0])], [-2.9, ref_l], atol=1e-6)


@pytest.mark.parametrize("apply_to_ref", [False, True])
@pytest.mark.parametrize("alpha", sorted(LD_TABLE))
def test_ld_dpo_worked_numbers(alpha, apply_to_ref):
  expected = LD_TABLE[alpha][4 if apply_to_ref else 3]
  cfg = loss_cfg("ld_dpo", ld_alpha=alpha, ld_apply_to_ref=apply_to_ref)
  get_algorithm("ld_dpo").validate(cfg)
  loss, metrics = get_loss("ld_dpo")(fixture_b(), cfg)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(float(loss), expected, rtol=0, atol=1e-6)
  # Rewards are β·(log π̂ − ref), the quantities the loss compares.
  pol_w, pol_l, ref_l, _, _ = LD_TABLE[alpha]
  ref_l = ref_l if apply_to_ref else -4.6
  np.testing.assert_allclose(float(metrics["rewards/margins"]),
                             0.1 * ((pol_w + 2.9) - (pol_l - ref_l)), atol=1e-6)
  np.testing.assert_allclose(float(metrics["logps/rejected"]), pol_l, atol=1e-6)
  assert float(metrics["ld/public_length"]) == 4.0


def _absolute_position_ld(values, start, n, l_p, alpha):
  """TRL ≤ 0.28's split (algorithms.md §2.2), for contrast: absolute row positions p, tokens
  with p < l_p shared, l_p ≤ p < n tail, the rest dropped."""
  p = np.arange(start, start + n)
  return values[p < l_p].sum() + alpha * values[(p >= l_p) & (p < n)].sum()


@pytest.mark.parametrize("pad,prompt", [(0, 0), (0, 3), (4, 3), (2, 9), (11, 1)])
def test_ld_positions_are_completion_relative(pad, prompt):
  """Masks that start mid-row (left padding, then a prompt) give the §2.4 values for any
  amount of either; the absolute-position split of TRL ≤ 0.28 would not."""
  inputs = fixture_b(pad_w=pad, prompt_w=prompt, pad_l=pad + 1, prompt_l=prompt, fill="garbage")
  w, l = ld_dpo_module.ld_sequence_logps(inputs.policy_chosen_logps, inputs.chosen_mask,
                                         inputs.policy_rejected_logps, inputs.rejected_mask, 0.5)
  np.testing.assert_allclose([float(w[0]), float(l[0])], [-2.5, -4.05], atol=1e-6)
  cfg = loss_cfg("ld_dpo", ld_alpha=0.5, ld_apply_to_ref=True)
  np.testing.assert_allclose(float(get_loss("ld_dpo")(inputs, cfg)[0]), 0.6587595555,
                             atol=1e-6)


def test_ld_fixture_distinguishes_trl_028_bug():
  """The 3-token-prompt layout of §2.2: the old absolute-position split gives −0.5 / −1.45
  where the completion-relative one (ours) gives −2.5 / −4.05."""
  c, r = B_CHOSEN["policy"][0], B_REJECTED["policy"][0]
  assert _absolute_position_ld(c, 3, 4, 4, 0.5) == pytest.approx(-0.5)
  assert _absolute_position_ld(r, 3, 6, 4, 0.5) == pytest.approx(-1.45)
  chosen = {"policy": [c]}
  rejected = {"policy": [r]}
  inputs = build(chosen, rejected, [np.arange(3, 7)], [np.arange(3, 9)])
  w, l = ld_dpo_module.ld_sequence_logps(inputs.policy_chosen_logps, inputs.chosen_mask,
                                         inputs.policy_rejected_logps, inputs.rejected_mask, 0.5)
  np.testing.assert_allclose([float(w[0]), float(l[0])], [-2.5, -4.05], atol=1e-6)


def test_ld_hole_inside_completion_does_not_shift_the_split():
  c, r = B_CHOSEN["policy"][0], B_REJECTED["policy"][0]
  plain = build({"policy": [c]}, {"policy": [r]}, [positions(2, 4)], [positions(5, 6)])
  holed = build({"policy": [c]}, {"policy": [r]}, [positions(2, 4, 1, 5)],
                [positions(5, 6, 3, 4)])
  for alpha in (0.0, 0.3, 0.5):
    a = ld_dpo_module.ld_sequence_logps(plain.policy_chosen_logps, plain.chosen_mask,
                                        plain.policy_rejected_logps, plain.rejected_mask, alpha)
    b = ld_dpo_module.ld_sequence_logps(holed.policy_chosen_logps, holed.chosen_mask,
                                        holed.policy_rejected_logps, holed.rejected_mask, alpha)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("apply_to_ref", [False, True])
def test_ld_dpo_alpha_one_equals_dpo(apply_to_ref):
  inputs = random_batch(seed=3)
  ld_loss, ld_metrics = get_loss("ld_dpo")(
      inputs, loss_cfg("ld_dpo", ld_alpha=1.0, ld_apply_to_ref=apply_to_ref))
  dpo_loss, dpo_metrics = get_loss("dpo")(inputs, loss_cfg("dpo"))
  np.testing.assert_array_equal(float(ld_loss), float(dpo_loss))
  for key, value in dpo_metrics.items():
    np.testing.assert_array_equal(float(ld_metrics[key]), float(value), err_msg=key)


def test_ld_dpo_alpha_zero_equals_dpo_on_truncated_completions():
  """α = 0 (with the reference split too) is DPO on both completions cut to l_p tokens."""
  inputs = random_batch(seed=4)
  cfg = loss_cfg("ld_dpo", ld_alpha=0.0, ld_apply_to_ref=True)
  mw, ml = np.asarray(inputs.chosen_mask), np.asarray(inputs.rejected_mask)
  l_p = np.minimum(mw.sum(-1), ml.sum(-1))[:, None]
  cut = lambda m: jnp.asarray(m * (np.cumsum(m, -1) <= l_p), jnp.float32)
  truncated = inputs.replace(chosen_mask=cut(mw), rejected_mask=cut(ml))
  np.testing.assert_allclose(float(get_loss("ld_dpo")(inputs, cfg)[0]),
                             float(get_loss("dpo")(truncated, loss_cfg("dpo"))[0]), rtol=1e-6)


def test_ld_dpo_equal_lengths_is_dpo_for_any_alpha():
  inputs = random_batch(seed=5, lengths_w=(4, 6, 2), lengths_l=(4, 6, 2))
  dpo_loss = float(get_loss("dpo")(inputs, loss_cfg("dpo"))[0])
  for alpha in (0.0, 0.4):
    for apply_to_ref in (False, True):
      cfg = loss_cfg("ld_dpo", ld_alpha=alpha, ld_apply_to_ref=apply_to_ref)
      np.testing.assert_allclose(float(get_loss("ld_dpo")(inputs, cfg)[0]), dpo_loss,
                                 rtol=1e-6)


def test_ld_dpo_rejects_missing_reference():
  inputs = random_batch().replace(ref_chosen_logps=None, ref_rejected_logps=None)
  with pytest.raises(ValueError, match="reference"):
    get_loss("ld_dpo")(inputs, CASES["ld_dpo"])


# ---------------------------------------------------------------------------------------
# DNO (§3).

DNO_CHOSEN = {"policy": [np.array([-4.0, -3.5, -2.5])], "prev": [np.array([-4.5, -3.0, -3.0])]}
DNO_REJECTED = {"policy": [np.array([-6.0, -2.0, -1.0, -3.0])],
                "prev": [np.array([-5.8, -2.0, -1.5, -2.5])]}


def dno_fixture(probs=None, fill="garbage"):
  """§3.3 split into tokens: log π(y+) = −10, log π(y−) = −12, π_t: −10.5, −11.8."""
  return build(DNO_CHOSEN, DNO_REJECTED, [positions(6, 3)], [positions(2, 4)], fill=fill,
               probs=probs)


def test_dno_hard_worked_number():
  loss, metrics = get_loss("dno")(dno_fixture(), loss_cfg("dno", beta=0.1))
  np.testing.assert_allclose(float(loss), 0.6587595555, atol=1e-6)
  np.testing.assert_allclose(float(metrics["rewards/chosen"]), 0.05, atol=1e-6)
  np.testing.assert_allclose(float(metrics["rewards/rejected"]), -0.02, atol=1e-6)
  np.testing.assert_allclose(float(metrics["logps/chosen"]), -10.0, atol=1e-5)
  assert float(metrics["dno/target"]) == 1.0


def test_dno_soft_worked_number():
  p = sigmoid(0.8 - 0.3)  # σ(r_t(y1) − r_t(y2)) with win-rates 0.8 and 0.3
  loss, metrics = get_loss("dno")(dno_fixture(probs=[p]), loss_cfg("dno", beta=0.1))
  np.testing.assert_allclose(float(loss), 0.6851874024, atol=1e-6)
  np.testing.assert_allclose(float(metrics["dno/target"]), 0.6224593312, atol=1e-7)


def test_dno_loss_primitive():
  args = [jnp.array([-10.0]), jnp.array([-12.0]), jnp.array([-10.5]), jnp.array([-11.8])]
  np.testing.assert_allclose(float(dno_module.dno_loss(*args, 0.1)[0]), 0.6587595555,
                             atol=1e-6)
  np.testing.assert_allclose(
      float(dno_module.dno_loss(*args, 0.1, jnp.array([sigmoid(0.5)]))[0]), 0.6851874024,
      atol=1e-6)


def test_dno_hard_is_dpo_against_the_previous_iterate():
  """DNO-Prct is DPO whose reference is π_t: same loss and same metrics."""
  inputs = random_batch(seed=7)
  as_ref = inputs.replace(ref_chosen_logps=inputs.prev_chosen_logps,
                          ref_rejected_logps=inputs.prev_rejected_logps)
  dno_loss, dno_metrics = get_loss("dno")(inputs, loss_cfg("dno", beta=0.3))
  dpo_loss, dpo_metrics = get_loss("dpo")(as_ref, loss_cfg("dpo", beta=0.3))
  np.testing.assert_allclose(float(dno_loss), float(dpo_loss), rtol=1e-7)
  for key, value in dpo_metrics.items():
    np.testing.assert_allclose(float(dno_metrics[key]), float(value), rtol=1e-6, err_msg=key)


def test_dno_soft_with_certain_label_is_hard_and_symmetric_under_swap():
  cfg = loss_cfg("dno", beta=0.2)
  inputs = random_batch(seed=8)
  hard = float(get_loss("dno")(inputs, cfg)[0])
  certain = float(get_loss("dno")(inputs.with_targets(preference_prob=jnp.ones(3)), cfg)[0])
  np.testing.assert_allclose(certain, hard, rtol=1e-6)
  # Eq. 8 is symmetric in (y1, y2): swapping the slots and p -> 1 − p changes nothing.
  p = jnp.array([0.9, 0.3, 0.55])
  soft = float(get_loss("dno")(inputs.with_targets(preference_prob=p), cfg)[0])
  swapped = inputs.replace(
      policy_chosen_logps=inputs.policy_rejected_logps,
      policy_rejected_logps=inputs.policy_chosen_logps,
      chosen_mask=inputs.rejected_mask, rejected_mask=inputs.chosen_mask,
      prev_chosen_logps=inputs.prev_rejected_logps,
      prev_rejected_logps=inputs.prev_chosen_logps).with_targets(preference_prob=1.0 - p)
  np.testing.assert_allclose(float(get_loss("dno")(swapped, cfg)[0]), soft, rtol=1e-6)


def test_dno_ignores_reference_and_needs_previous_iterate():
  inputs = random_batch(seed=9)
  cfg = loss_cfg("dno")
  with_ref = float(get_loss("dno")(inputs, cfg)[0])
  no_ref = inputs.replace(ref_chosen_logps=None, ref_rejected_logps=None)
  assert float(get_loss("dno")(no_ref, cfg)[0]) == with_ref
  with pytest.raises(ValueError, match="previous iterate"):
    get_loss("dno")(no_ref.replace(prev_chosen_logps=None), cfg)


# ---------------------------------------------------------------------------------------
# INPO (§4).

INPO_CHOSEN = {"policy": [np.array([-4.0, -3.5, -2.5])],
               "ref": [np.array([-5.0, -3.0, -3.0])],
               "prev": [np.array([-4.5, -3.0, -3.0])]}
INPO_REJECTED = {"policy": [np.array([-6.0, -2.0, -1.0, -3.0])],
                 "ref": [np.array([-6.0, -2.5, -1.0, -2.0])],
                 "prev": [np.array([-5.8, -2.0, -1.5, -2.5])]}


def inpo_fixture(fill="garbage"):
  """§4.4 in tokens: π −10 / −12, ref −11 / −11.5, π_t −10.5 / −11.8."""
  return build(INPO_CHOSEN, INPO_REJECTED, [positions(8, 3)], [positions(3, 4)], fill=fill)


def _inpo_float64(eta, ratio, pw=-10.0, pl=-12.0, rw=-11.0, rl=-11.5, tw=-10.5, tl=-11.8):
  h = (pw - pl) - ratio * (rw - rl) - (1.0 - ratio) * (tw - tl)
  return h, (h - 1.0 / (2.0 * eta)) ** 2


@pytest.mark.parametrize("eta,ratio,expected_h,expected", [
    (0.0075, 1.0 / 3.0, 0.9666666667, 4316.49),  # τ = 0.0025, the INPO/MNPO defaults
    (0.5, 0.2, 0.86, 0.0196),  # τ = 0.1
])
def test_inpo_worked_numbers(eta, ratio, expected_h, expected):
  h64, loss64 = _inpo_float64(eta, ratio)
  assert h64 == pytest.approx(expected_h, abs=1e-9) and loss64 == pytest.approx(expected,
                                                                                 rel=1e-12)
  cfg = loss_cfg("inpo", inpo_eta=eta, inpo_ratio=ratio)
  get_algorithm("inpo").validate(cfg)
  loss, metrics = get_loss("inpo")(inpo_fixture(), cfg)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), loss64, rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(float(metrics["inpo/h"]), h64, atol=1e-5)
  primitive = inpo_module.inpo_loss(jnp.array([2.0]), jnp.array([0.5]), jnp.array([1.3]),
                                    eta, ratio)
  np.testing.assert_allclose(float(primitive[0]), loss64, rtol=2e-6, atol=1e-6)
  # rewards/margins = η·h, the estimated win-rate gap that the loss pulls to 1/2.
  np.testing.assert_allclose(float(metrics["rewards/margins"]), eta * h64, atol=1e-6)


def test_inpo_primitive_identity_example():
  """§4.4: π_t = π_ref, η = 0.5: h = 1.5, loss 0.25."""
  margin = lambda a, b: jnp.array([a - b])
  value = inpo_module.inpo_loss(margin(-10.0, -12.0), margin(-11.0, -11.5),
                                margin(-11.0, -11.5), 0.5, 0.2)
  np.testing.assert_allclose(float(value[0]), 0.25, atol=1e-6)


@pytest.mark.parametrize("eta,ratio", [(0.5, 0.2), (0.0075, 1.0 / 3.0), (0.1, 0.0)])
def test_inpo_with_prev_equal_ref_is_summed_ipo(eta, ratio):
  """Round 1 (π_t = π_ref): INPO is IPO with β = η on summed log-probs, metrics included."""
  inputs = random_batch(seed=11)
  inputs = inputs.replace(prev_chosen_logps=inputs.ref_chosen_logps,
                          prev_rejected_logps=inputs.ref_rejected_logps)
  inpo_loss, inpo_metrics = get_loss("inpo")(inputs, loss_cfg("inpo", inpo_eta=eta,
                                                              inpo_ratio=ratio))
  ipo_loss, ipo_metrics = get_loss("ipo")(inputs, loss_cfg("ipo", beta=eta,
                                                           ipo_average_logps=False))
  np.testing.assert_allclose(float(inpo_loss), float(ipo_loss), rtol=1e-7)
  for key, value in ipo_metrics.items():
    np.testing.assert_allclose(float(inpo_metrics[key]), float(value), rtol=1e-6, atol=1e-8,
                               err_msg=key)


def test_inpo_fixture_identity_value():
  inputs = inpo_fixture()
  inputs = inputs.replace(prev_chosen_logps=inputs.ref_chosen_logps,
                          prev_rejected_logps=inputs.ref_rejected_logps)
  loss, _ = get_loss("inpo")(inputs, loss_cfg("inpo", inpo_eta=0.5, inpo_ratio=0.2))
  np.testing.assert_allclose(float(loss), 0.25, atol=1e-6)


def test_inpo_is_float32_for_bfloat16_inputs():
  """bf16 log-probs are upcast before the square: the loss is the float64 value of the
  bf16-rounded inputs to float32 precision, even with the 1/(2η) ≈ 67 target."""
  inputs = random_batch(seed=12)
  bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), inputs)
  cfg = loss_cfg("inpo")  # η = 0.0075
  loss, _ = get_loss("inpo")(bf16, cfg)
  assert loss.dtype == jnp.float32

  def seq(x, m):
    x, m = np.asarray(x.astype(jnp.float32), np.float64), np.asarray(m, np.float64)
    return np.where(m > 0, x, 0.0).sum(-1)

  d = lambda a, b: seq(a, bf16.chosen_mask) - seq(b, bf16.rejected_mask)
  h = (d(bf16.policy_chosen_logps, bf16.policy_rejected_logps)
       - cfg.inpo_ratio * d(bf16.ref_chosen_logps, bf16.ref_rejected_logps)
       - (1 - cfg.inpo_ratio) * d(bf16.prev_chosen_logps, bf16.prev_rejected_logps))
  np.testing.assert_allclose(float(loss), np.mean((h - 1 / (2 * cfg.inpo_eta)) ** 2), rtol=1e-6)


def test_inpo_rejects_missing_inputs():
  inputs = random_batch()
  cfg = loss_cfg("inpo")
  with pytest.raises(ValueError, match="previous iterate"):
    get_loss("inpo")(inputs.replace(prev_rejected_logps=None), cfg)
  with pytest.raises(ValueError, match="reference"):
    get_loss("inpo")(inputs.replace(ref_chosen_logps=None), cfg)


# ---------------------------------------------------------------------------------------
# T-REG (§6).


def test_contrastive_token_rewards_fixture_b():
  rng = np.random.default_rng(0)
  pos = [positions(7, 4)]
  better = place([B_BETTER_W], pos, "nonfinite", rng)
  worse = place([B_WORSE_W], pos, "nonfinite", rng)
  mask = mask_of(pos)
  r = t_reg_module.contrastive_token_rewards(better, worse, mask)
  assert r.shape == (1, T) and r.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(r)[0, pos[0]], R_HAT_W, atol=1e-7)
  assert np.all(np.asarray(r)[0, np.asarray(mask)[0] == 0] == 0.0)
  pos_l = [positions(2, 6)]
  r_l = t_reg_module.contrastive_token_rewards(place([B_BETTER_L], pos_l, "garbage", rng),
                                               place([B_WORSE_L], pos_l, "garbage", rng),
                                               mask_of(pos_l))
  np.testing.assert_allclose(np.asarray(r_l)[0, pos_l[0]], R_HAT_L, atol=1e-7)
  # Finite gradients although ±inf / NaN sit under mask 0.
  g = jax.grad(lambda b: jnp.sum(t_reg_module.contrastive_token_rewards(b, worse, mask)))(
      better)
  assert np.isfinite(np.asarray(g)).all()


def t_reg_fixture(fill="garbage"):
  return fixture_b(fill=fill, extra={"reward": (R_HAT_W, R_HAT_L)})


@pytest.mark.parametrize("alpha,expected", [(0.1, 0.6518971235), (0.25, 0.6488223578),
                                            (0.5, 0.6436977483)])
def test_t_reg_worked_numbers(alpha, expected):
  cfg = loss_cfg("t_reg", beta=0.1, t_reg_alpha=alpha, t_reg_base="dpo")
  get_algorithm("t_reg").validate(cfg)
  loss, metrics = get_loss("t_reg")(t_reg_fixture(), cfg)
  np.testing.assert_allclose(float(loss), expected, atol=1e-6)
  np.testing.assert_allclose(float(metrics["t_reg/weight"]), 0.4800106598, atol=1e-7)
  np.testing.assert_allclose(float(metrics["t_reg/reg_chosen"]), 0.0128613035, atol=1e-7)
  np.testing.assert_allclose(float(metrics["t_reg/reg_rejected"]), -0.0555654342, atol=1e-7)
  np.testing.assert_allclose(float(metrics["t_reg/base_loss"]), 0.6539469673, atol=1e-6)


def test_t_reg_regularizer_primitive():
  inputs = t_reg_fixture()
  reg = t_reg_module.token_reward_regularizer(inputs.policy_rejected_logps,
                                              inputs.targets["rejected_token_rewards"],
                                              inputs.rejected_mask, 0.1)
  np.testing.assert_allclose(float(reg[0]), -0.0555654342, atol=1e-7)


@pytest.mark.parametrize("alpha,expected", [(0.1, 0.9719409089), (0.25, 0.8897140141),
                                            (0.5, 0.7526691894)])
def test_t_reg_simpo_base_numbers(alpha, expected):
  """SimPO-REG on Fixture B (β = 2, γ/β = 0.5); float64 values computed for these tests with
  the §6.3 recipe and SimPO's logit z = β(Δavg − γ/β) (not in algorithms.md)."""
  cfg = loss_cfg("t_reg", beta=2.0, t_reg_alpha=alpha, t_reg_base="simpo",
                 simpo_gamma_beta_ratio=0.5)
  inputs = t_reg_fixture().replace(ref_chosen_logps=None, ref_rejected_logps=None)
  loss, metrics = get_loss("t_reg")(inputs, cfg)
  np.testing.assert_allclose(float(loss), expected, atol=2e-6)
  np.testing.assert_allclose(float(metrics["t_reg/base_loss"]), 1.0267588388, atol=2e-6)


def test_t_reg_alpha_zero_is_the_base_loss():
  inputs = random_batch(seed=13)
  dpo_base = get_loss("t_reg")(inputs, loss_cfg("t_reg", t_reg_alpha=0.0))
  dpo = get_loss("dpo")(inputs, loss_cfg("dpo"))
  np.testing.assert_allclose(float(dpo_base[0]), float(dpo[0]), rtol=1e-7)
  for key, value in dpo[1].items():
    np.testing.assert_allclose(float(dpo_base[1][key]), float(value), rtol=1e-6, err_msg=key)
  cfg = loss_cfg("t_reg", t_reg_alpha=0.0, t_reg_base="simpo", beta=2.0)
  simpo_base = get_loss("t_reg")(inputs, cfg)
  simpo = get_loss("simpo")(inputs, loss_cfg("simpo", beta=2.0))
  np.testing.assert_allclose(float(simpo_base[0]), float(simpo[0]), rtol=1e-7)
  for key, value in simpo[1].items():
    np.testing.assert_allclose(float(simpo_base[1][key]), float(value), rtol=1e-6, err_msg=key)


def test_t_reg_zero_token_rewards_is_the_base_loss():
  inputs = random_batch(seed=14)
  zero = inputs.with_targets(
      chosen_token_rewards=jnp.zeros_like(inputs.targets["chosen_token_rewards"]),
      rejected_token_rewards=jnp.zeros_like(inputs.targets["rejected_token_rewards"]))
  np.testing.assert_allclose(float(get_loss("t_reg")(zero, loss_cfg("t_reg"))[0]),
                             float(get_loss("dpo")(inputs, loss_cfg("dpo"))[0]), rtol=1e-7)


@pytest.mark.parametrize("base", ["dpo", "simpo"])
def test_t_reg_sequence_weight_is_stop_gradient(base):
  """∂L/∂logπ_t = ∂L_base/∂logπ_t − α·w·β·r̂_t: no term through w (closed form)."""
  beta, alpha = (0.1, 0.5) if base == "dpo" else (2.0, 0.5)
  inputs = t_reg_fixture()
  cfg = loss_cfg("t_reg", beta=beta, t_reg_alpha=alpha, t_reg_base=base)
  grads = jax.grad(lambda x: get_loss("t_reg")(x, cfg)[0])(inputs)
  if base == "dpo":
    z = beta * 0.8
    base_w, base_l = -beta * sigmoid(-z), beta * sigmoid(-z)
  else:
    pw, pl = B_CHOSEN["policy"][0], B_REJECTED["policy"][0]
    z = beta * ((pw.mean() - pl.mean()) - 0.5)
    base_w, base_l = -beta * sigmoid(-z) / 4, beta * sigmoid(-z) / 6
  w = sigmoid(-z)
  gw = np.asarray(grads.policy_chosen_logps)[0]
  gl = np.asarray(grads.policy_rejected_logps)[0]
  mw = np.asarray(inputs.chosen_mask)[0] > 0
  ml = np.asarray(inputs.rejected_mask)[0] > 0
  np.testing.assert_allclose(gw[mw], base_w - alpha * w * beta * np.array(R_HAT_W), atol=1e-6)
  np.testing.assert_allclose(gl[ml], base_l - alpha * w * beta * np.array(R_HAT_L), atol=1e-6)
  assert np.all(gw[~mw] == 0.0) and np.all(gl[~ml] == 0.0)
  # Token rewards are constants.
  assert np.all(np.asarray(grads.targets["chosen_token_rewards"]) == 0.0)


def test_t_reg_simpo_base_ignores_reference_dpo_base_needs_it():
  inputs = random_batch(seed=15)
  no_ref = inputs.replace(ref_chosen_logps=None, ref_rejected_logps=None)
  cfg = loss_cfg("t_reg", t_reg_base="simpo", beta=2.0)
  assert float(get_loss("t_reg")(no_ref, cfg)[0]) == float(get_loss("t_reg")(inputs, cfg)[0])
  with pytest.raises(ValueError, match="reference"):
    get_loss("t_reg")(no_ref, loss_cfg("t_reg"))


def test_t_reg_rejects_missing_token_rewards():
  inputs = random_batch().with_targets(rejected_token_rewards=None)
  with pytest.raises(ValueError, match="token rewards"):
    get_loss("t_reg")(inputs, loss_cfg("t_reg"))


# ---------------------------------------------------------------------------------------
# Invariants shared by all four: masking, padding, gradients, pair weights, jit.

GRAD_FIELDS = ("policy_chosen_logps", "policy_rejected_logps")


@pytest.mark.parametrize("case", sorted(CASES))
def test_garbage_under_mask_changes_neither_loss_nor_gradients(case):
  """Zeros, finite noise and ±inf/NaN under mask 0 (in every per-token field: policy, ref,
  previous iterate, token rewards) give the same loss, metrics and gradients."""
  loss_fn = loss_of(case)
  results = []
  for fill in ("zero", "garbage", "nonfinite"):
    inputs = case_batch(case, seed=21, fill=fill)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(inputs)
    results.append((loss, metrics, grads))
  (loss0, metrics0, grads0) = results[0]
  assert np.isfinite(float(loss0))
  for loss, metrics, grads in results[1:]:
    assert float(loss) == float(loss0)
    for key in metrics0:
      assert float(metrics[key]) == float(metrics0[key]), key
    for field in GRAD_FIELDS:
      np.testing.assert_array_equal(np.asarray(getattr(grads, field)),
                                    np.asarray(getattr(grads0, field)), err_msg=field)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_finite_at_init_and_zero_under_mask(case):
  """At step 0 (π = π_ref = π_t) with ±inf/NaN under the mask: finite, non-zero gradients on
  completion tokens, exactly zero elsewhere, and a finite loss."""
  inputs = case_batch(case, seed=22, fill="nonfinite", init=True)
  (loss, metrics), grads = jax.value_and_grad(loss_of(case), has_aux=True)(inputs)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  for field, mask in zip(GRAD_FIELDS, (inputs.chosen_mask, inputs.rejected_mask)):
    g, m = np.asarray(getattr(grads, field)), np.asarray(mask) > 0
    assert np.isfinite(g).all(), field
    assert np.all(g[~m] == 0.0), field
    assert np.abs(g[m]).sum() > 0.0, field


def test_init_values():
  """Known step-0 values: log 2 for LD-DPO (reference split too) and DNO, (1/(2η))² for
  INPO, and for T-REG log 2 plus α·½·(L_REG(y_w) + L_REG(y_l))."""
  at_init = lambda case, inputs: float(loss_of(case)(inputs)[0])
  inputs = random_batch(seed=23, init=True)
  np.testing.assert_allclose(at_init("ld_dpo", inputs), math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(at_init("dno", inputs), math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(at_init("inpo", inputs), (1 / (2 * 0.0075)) ** 2, rtol=1e-6)
  reg = lambda lp, r, m: -0.1 * np.where(np.asarray(m) > 0, np.asarray(r) * np.asarray(lp),
                                         0.0).sum(-1)
  regs = (reg(inputs.policy_chosen_logps, inputs.targets["chosen_token_rewards"],
              inputs.chosen_mask)
          + reg(inputs.policy_rejected_logps, inputs.targets["rejected_token_rewards"],
                inputs.rejected_mask))
  np.testing.assert_allclose(at_init("t_reg", inputs),
                             math.log(2.0) + 0.5 * 0.5 * regs.mean(), rtol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_left_padding_amount_does_not_change_the_loss(case):
  """The same pairs shifted right by different amounts of left padding (and prompt)."""
  loss_fn = loss_of(case)
  values = [float(loss_fn(case_batch(case, seed=24, starts_w=sw, starts_l=sl))[0])
            for sw, sl in [((3, 10, 15), (12, 2, 20)), ((1, 1, 1), (1, 1, 1)),
                           ((7, 2, 19), (14, 8, 9))]]
  np.testing.assert_allclose(values, values[0], rtol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_zero_weight_pairs_are_ignored(case):
  loss_fn = loss_of(case)
  full = case_batch(case, seed=25)
  weights = jnp.array([1.0, 0.0, 1.0])
  sub = jax.tree_util.tree_map(lambda x: x[jnp.array([0, 2])], full)
  weighted, w_metrics = loss_fn(full.replace(pair_weights=weights))
  expected, e_metrics = loss_fn(sub)
  np.testing.assert_allclose(float(weighted), float(expected), rtol=1e-6)
  for key in e_metrics:
    np.testing.assert_allclose(float(w_metrics[key]), float(e_metrics[key]), rtol=1e-5,
                               atol=1e-7, err_msg=key)
  grads = jax.grad(lambda x: loss_fn(x)[0])(full.replace(pair_weights=weights))
  for field in GRAD_FIELDS:
    assert np.all(np.asarray(getattr(grads, field))[1] == 0.0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_jit_matches_eager(case):
  loss_fn = loss_of(case)
  inputs = case_batch(case, seed=26)
  eager, eager_metrics = loss_fn(inputs)
  jitted, jit_metrics = jax.jit(loss_fn)(inputs)
  np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
  assert set(jit_metrics) == set(eager_metrics)
  for key in eager_metrics:
    assert jit_metrics[key].shape == ()
