"""DPO-Positive (algorithms/dpop.py): Pal et al. 2024, Eq. 3, against numbers computed here,
DPO as its λ = 0 case, the penalty's direction, and the loss in a small world and a run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algorithms
from algorithms import LossInputs
from configs import dpop as dpop_config
from tests.conftest import loss_hyperparameters, micro_config
from training import config_check, loop
from verification.offline_worlds import KLWorld


def _inputs(policy_w, ref_w, policy_l, ref_l):
  """One token per response, so a sequence log-prob is that token's value."""
  col = lambda x: jnp.asarray(x, jnp.float32)[:, None]
  ones = jnp.ones((len(policy_w), 1), jnp.float32)
  return LossInputs(policy_chosen_logps=col(policy_w), policy_rejected_logps=col(policy_l),
                    chosen_mask=ones, rejected_mask=ones, ref_chosen_logps=col(ref_w),
                    ref_rejected_logps=col(ref_l))


# ℓ_w = −0.5 (the chosen response fell below the reference) and ℓ_w = +0.3 (it did not).
PAIRS = _inputs(policy_w=[-2.5, -1.7], ref_w=[-2.0, -2.0], policy_l=[-3.0, -3.5],
                ref_l=[-2.2, -2.4])


def _reference_number(beta, lam):
  """Eq. 3 by hand: mean over the pairs of −log σ(β(ℓ_w − ℓ_l − λ max(0, −ℓ_w)))."""
  losses = []
  for lw, ll in ((-0.5, -0.8), (0.3, -1.1)):
    z = beta * (lw - ll - lam * max(0.0, -lw))
    losses.append(math.log1p(math.exp(-z)))
  return sum(losses) / len(losses)


@pytest.mark.parametrize("beta,lam", [(0.1, 50.0), (0.5, 5.0), (0.1, 0.0)])
def test_dpop_matches_eq3_worked_numbers(beta, lam):
  cfg = loss_hyperparameters("dpop", beta=beta, dpop_lambda=lam)
  loss, metrics = algorithms.get_loss("dpop")(PAIRS, cfg)
  np.testing.assert_allclose(float(loss), _reference_number(beta, lam), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["dpop/penalty"]), 0.25, rtol=1e-6)


def test_lambda_zero_is_dpo_and_no_penalty_above_the_reference():
  dpo = algorithms.get_loss("dpo")(PAIRS, loss_hyperparameters("dpo", beta=0.1))
  dpop = algorithms.get_loss("dpop")(PAIRS, loss_hyperparameters("dpop", dpop_lambda=0.0))
  np.testing.assert_allclose(float(dpop[0]), float(dpo[0]), rtol=1e-7)
  # Only the second pair, whose chosen response stayed above the reference: DPO's value.
  above = jax.tree.map(lambda x: x[1:], PAIRS)
  np.testing.assert_allclose(
      float(algorithms.get_loss("dpop")(above, loss_hyperparameters("dpop"))[0]),
      float(algorithms.get_loss("dpo")(above, loss_hyperparameters("dpo"))[0]), rtol=1e-7)


def test_penalty_pushes_a_fallen_chosen_response_up():
  """Below the reference, DPOP's gradient raises log πθ(y_w) more than DPO's does."""
  def chosen_grad(name, **hyper):
    cfg = loss_hyperparameters(name, **hyper)
    f = lambda w: algorithms.get_loss(name)(PAIRS.replace(policy_chosen_logps=w), cfg)[0]
    return np.asarray(jax.grad(f)(PAIRS.policy_chosen_logps))[:, 0]

  dpo, dpop = chosen_grad("dpo"), chosen_grad("dpop", dpop_lambda=50.0)
  assert dpop[0] < dpo[0] < 0  # descent raises the fallen chosen response much more
  assert dpop[1] < 0 and dpo[1] < 0


def test_small_world_keeps_chosen_responses_above_the_reference():
  """The KL world of verification/offline_worlds.py (BT labels): DPO's optimum lowers many
  chosen responses below π_ref (pair-weighted shortfall E[max(0, −ℓ_w)] = 0.47 measured);
  DPOP with λ = 5 keeps it under 0.01 (4e-4 measured), and λ = 0 lands on DPO's optimum."""
  world = KLWorld()
  chosen = np.asarray(world.pairs.chosen)
  weights = np.asarray(world.pairs.weights) / np.sum(world.pairs.weights)

  def shortfall(name, **hyper):
    learned = world.fit(name, loss_hyperparameters(name, beta=0.5, **hyper), steps=1500)
    ratio = np.log(learned[chosen]) - np.log(world.ref[chosen])
    return float(np.sum(weights * np.maximum(-ratio, 0.0))), learned

  dpo, dpo_policy = shortfall("dpo")
  dpop, _ = shortfall("dpop", dpop_lambda=5.0)
  dpop_zero, zero_policy = shortfall("dpop", dpop_lambda=0.0)
  assert dpo > 0.3 and dpop < 0.01, (dpo, dpop)
  np.testing.assert_allclose(zero_policy, dpo_policy, atol=1e-5)
  assert dpop_zero == pytest.approx(dpo, abs=1e-5)


def test_config_validates_and_refuses_bad_values():
  config = dpop_config.get_config("tiny")
  config_check.validate(config, num_devices=1, process_count=1)
  config.loss.dpop_lambda = -1.0
  with pytest.raises(ValueError, match=r"config\.loss\.dpop_lambda must be >= 0"):
    config_check.validate(config, num_devices=1, process_count=1)


def test_dpop_trains_and_learns_the_task(tmp_path, tfds_dir):
  config = micro_config(**{"loss.name": "dpop", "data.data_dir": tfds_dir})
  config.update(total_steps=30, eval_every=30)
  summary = loop.train(config, str(tmp_path))
  assert summary["skipped_steps"] == 0
  assert summary["final_eval"]["eval/rewards/accuracies"] > summary["first_eval"][
      "eval/rewards/accuracies"]
