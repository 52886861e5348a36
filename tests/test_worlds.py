"""Small worlds with known optima (verification ladder, rung 1): every world meets its
criterion, the independent solvers are right, and the CLI prints its JSON lines last."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from verification import games, tabular, worlds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Worlds that miss their criterion for a reason documented in the world and in
# docs/verification.md, with the value measured when that was written. The test pins the
# value (a change means the loss or the world changed: look again) and reports an xfail.
KNOWN_SHORTFALLS = {
    ("ld_dpo", "length_bias_drift"): 1.0097,
    ("ld_dpo", "length_bias_drift_policy_only_ld"): 0.5273,
    # Shared per-token policy (verification/length_worlds.py), α = 0.5.
    ("ld_dpo", "shared_params_length_drift"): 1.0434,
    ("ld_dpo", "shared_params_length_drift_policy_only_ld"): 0.5682,
    # Length-correlated data, length-blind labels (pre-registered in docs/ld_dpo_length.md).
    ("ld_dpo", "correlated_data_drift_k2"): 1.0075,
    ("ld_dpo", "correlated_data_drift_k4"): 0.9817,
    ("ld_dpo", "correlated_data_drift_k2_policy_only_ld"): 0.5034,
    ("ld_dpo", "correlated_data_drift_k4_policy_only_ld"): -1.5142,
}


# The nine LD-DPO worlds take about 40 s (20-odd fits): CI runs them with the other long tests.
@pytest.mark.parametrize("algorithm", [
    pytest.param(a, marks=pytest.mark.long) if a == "ld_dpo" else a for a in worlds.names()])
def test_world_meets_its_criterion(algorithm):
  results = worlds.run(algorithm)
  assert results, f"{algorithm} has no worlds"
  shortfalls = []
  for r in results:
    assert np.isfinite(r.value), f"{r.algorithm}/{r.world}: {r.metric} is {r.value}"
    key = (r.algorithm, r.world)
    if key in KNOWN_SHORTFALLS:
      assert not r.passed, f"{key} now passes: drop it from KNOWN_SHORTFALLS and the docs"
      assert r.expected_shortfall, f"{key} misses without an explanation"
      assert r.value == pytest.approx(KNOWN_SHORTFALLS[key], abs=0.02), (r.value, r.note)
      shortfalls.append(f"{r.world}: {r.metric}={r.value:.3f}")
      continue
    assert r.passed, (f"{r.algorithm}/{r.world}: {r.metric} = {r.value} misses target "
                      f"{r.target} ({r.criterion}, tolerance {r.tolerance}); {r.note}")
  if shortfalls:
    pytest.xfail("documented shortfalls: " + "; ".join(shortfalls))


def test_cli_prints_one_json_line_per_world_last():
  proc = subprocess.run([sys.executable, "-m", "experiments.worlds", "--algorithm=bt_reward"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
  lines = proc.stdout.strip().splitlines()
  record = json.loads(lines[-1])
  assert set(record) >= {"algorithm", "world", "metric", "value", "target", "tolerance",
                         "passed"}
  assert record["algorithm"] == "bt_reward" and record["world"] == "cyclic_accuracy"
  assert isinstance(record["passed"], bool) and record["passed"]
  assert all(isinstance(record[k], float) for k in ("value", "target", "tolerance"))
  assert not lines[-2].startswith("{")  # exactly one world, printed after the readable lines


def test_cli_refuses_an_unknown_algorithm():
  proc = subprocess.run([sys.executable, "-m", "experiments.worlds", "--algorithm=nope"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "no worlds" in proc.stderr


# ---------------------------------------------------------------------------------------
# The independent solvers and the tabular policy.


def test_nash_lp_rock_paper_scissors_and_a_dominated_response():
  payoff = np.array([[0, 1, -1, 1], [-1, 0, 1, 1], [1, -1, 0, 1], [-1, -1, -1, 0]]) * 0.3
  p, value = games.nash_lp(payoff)
  np.testing.assert_allclose(p, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-9)
  assert value == pytest.approx(0.0, abs=1e-9)
  assert games.duality_gap(payoff, p) == pytest.approx(0.0, abs=1e-9)
  # A pure strategy is exploitable by its counter: gap = 2 · 0.3.
  assert games.duality_gap(payoff, np.eye(4)[0]) == pytest.approx(0.6)


def test_regularised_nash_is_the_softmax_fixed_point():
  pref = np.array([[0.5, 0.9, 0.4], [0.1, 0.5, 0.7], [0.6, 0.3, 0.5]])
  ref = np.array([0.2, 0.3, 0.5])
  p = games.regularised_nash(pref, ref, tau=0.2)
  fixed = ref * np.exp(pref @ p / 0.2)
  np.testing.assert_allclose(p, fixed / fixed.sum(), atol=1e-10)
  assert games.regularised_duality_gap(pref, ref, 0.2, p) == pytest.approx(0.0, abs=1e-10)
  assert games.regularised_duality_gap(pref, ref, 0.2, ref) > 1e-3


def test_ipo_optimum_matches_azar_closed_form_for_product_pairs():
  # Pairs from μ⊗μ labelled by P: g(y) = P(y ≻ μ)/τ + const (Azar et al. 2023, Prop. 3/IPO).
  pref = np.array([[0.5, 0.8, 0.3], [0.2, 0.5, 0.9], [0.7, 0.1, 0.5]])
  mu = np.array([0.5, 0.3, 0.2])
  ref = np.array([0.3, 0.3, 0.4])
  tau = 0.7
  chosen, rejected, weights = [], [], []
  for a in range(3):
    for b in range(3):
      if a != b:
        chosen.append(a)
        rejected.append(b)
        weights.append((mu[a] * mu[b] + mu[b] * mu[a]) * pref[a, b])
  p = games.ipo_optimum(ref, np.array(chosen), np.array(rejected), np.array(weights), tau)
  np.testing.assert_allclose(p, games.kl_optimum(ref, pref @ mu, tau), atol=1e-10)


def test_tabular_policy_round_trip_and_token_structure():
  space = tabular.build_space([[(1, 0), (2, 3, 0), (2, 4, 0)], [(5, 0), (6, 0)]])
  probs = np.array([0.5, 0.2, 0.3, 0.9, 0.1])
  logits = tabular.logits_for(space, probs)
  np.testing.assert_allclose(tabular.probs_np(space, logits), probs, atol=1e-12)
  tok = np.asarray(tabular.token_log_probs(space, logits.astype(np.float32)))
  # Response (2, 3, 0): π(2) = 0.5, π(3 | 2) = 0.4, π(0 | 2, 3) = 1.
  np.testing.assert_allclose(np.exp(tok[1]), [0.5, 0.4, 1.0], atol=1e-6)
  assert tok[0, 2] == 0.0 and space.mask[0, 2] == 0.0  # right padding
  with pytest.raises(ValueError, match="prefix"):
    tabular.build_space([[(1,), (1, 2)]])


def test_auc_counts_ties_as_half():
  assert games.auc([1.0, 2.0], [0.0]) == 1.0
  assert games.auc([1.0], [1.0]) == 0.5
  assert games.auc([0.0, 2.0], [1.0]) == 0.5


def test_report_renders_a_table_row_and_a_figure(tmp_path):
  from experiments import verification_report
  results = worlds.run("gpm")
  verification_report.plot_algorithm(results, str(tmp_path / "gpm.png"))
  assert (tmp_path / "gpm.png").stat().st_size > 1000
  text = verification_report.render(results, {"gpm": "gpm.png"})
  assert "| gpm | cyclic_accuracy | pairwise_accuracy | 1 | 1 |" in text
  assert "![gpm](verification/gpm.png)" in text


def test_one_round_of_dno_and_inpo_is_their_closed_form_update():
  """The real losses' exact-expectation minimisers are the updates the worlds rely on:
  DNO π_{t+1} ∝ π_t exp(P(·≻π_t)/η); INPO log π_{t+1} = r log π_ref + (1−r) log π_t
  + P(·≻π_t)/η + c with r = τ/η."""
  from verification import game_worlds
  pref = game_worlds.cyclic_preferences()
  start = np.array([0.4, 0.1, 0.2, 0.3])
  dno_next = game_worlds.dno_iterates(pref, 0.5, 1, start=start)[1]
  want = start * np.exp(pref @ start / 0.5)
  np.testing.assert_allclose(dno_next, want / want.sum(), atol=1e-4)
  ref = np.array([0.1, 0.2, 0.3, 0.4])
  inpo_next = game_worlds.inpo_iterates(pref, ref, 1.0, 0.1, 1)[1]
  logits = 0.1 * np.log(ref) + 0.9 * np.log(ref) + pref @ ref / 1.0
  want = np.exp(logits - logits.max())
  np.testing.assert_allclose(inpo_next, want / want.sum(), atol=1e-4)


def test_shared_length_policy_contains_reference_and_neutral_optimum():
  """The design claims of the shared-parameter length world: θ = 0 is π_ref (uniform at
  every node), θ_C − θ_W = 1/β is the length-neutral KL optimum, and one stop logit serves
  both depths (P(stop) = e^θ_EOS / (e^θ_EOS + e^θ_e1 + e^θ_e2) after 0 and 1 elaborations)."""
  from verification import length_worlds
  w = length_worlds.SharedLengthWorld()
  np.testing.assert_allclose(w.probs(np.zeros(5)), w.world.ref, atol=1e-12)
  theta = np.zeros(5)
  theta[1] = 1.0 / length_worlds.BETA  # θ_C
  np.testing.assert_allclose(w.probs(theta), w.world.kl_optimum(length_worlds.BETA),
                             atol=1e-12)
  theta = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
  p = w.probs(theta)
  stop = np.e / (np.e + 2)
  by_len = {n: p[w.space.lengths == n].sum() for n in (2, 3, 4)}
  np.testing.assert_allclose([by_len[2], by_len[3], by_len[4]],
                             [stop, (1 - stop) * stop, (1 - stop) ** 2], atol=1e-12)


def test_correlated_data_world_design_and_the_pinned_tail():
  """The length-correlated world's design claims (docs/ld_dpo_length.md): only pairs whose
  correct response is strictly longer are collected, labels are σ(1) either way, π* has
  implicit-reward difference 1 on every pair and π_ref's length; and the reason its
  shortfall gives: DPO's minimiser keeps π_ref's stop probability after the first
  elaboration of the correct response, so its drift comes from decisions LD-DPO weights
  fully."""
  from verification import length_worlds
  from verification.common import loss_config
  w = length_worlds.CorrelatedDataWorld(2)
  space, pairs, n = w.world.space, w.world.pairs, w.n
  reward = w.world.reward
  for c, r, weight in zip(pairs.chosen, pairs.rejected, pairs.weights):
    correct, wrong = (c, r) if reward[c] > reward[r] else (r, c)
    assert reward[correct] == 1 and reward[wrong] == 0 and n[correct] > n[wrong]
  forward = {(c, r): wt for c, r, wt in zip(pairs.chosen, pairs.rejected, pairs.weights)}
  for (c, r), wt in forward.items():
    if reward[c] > reward[r]:
      assert wt / forward[r, c] == pytest.approx(np.e)  # σ(1) / σ(−1)
  log_ratio = np.log(w.target) - np.log(w.world.ref)
  h = log_ratio[pairs.chosen] - log_ratio[pairs.rejected]
  np.testing.assert_allclose(np.abs(h), 1.0, atol=1e-9)
  assert w.drift(w.world.ref) == pytest.approx(0.0, abs=1e-12)
  assert w.stop_probs(w.world.ref, length_worlds.CORRECT) == pytest.approx([1 / 3, 1 / 3])
  dpo = w.world.fit("dpo", loss_config("dpo", beta=length_worlds.BETA))
  stop = w.stop_probs(dpo, length_worlds.CORRECT)
  assert stop[1] == pytest.approx(1 / 3, abs=1e-4)  # pinned at π_ref's
  assert stop[0] < 0.2 and w.drift(dpo) > 0.2  # the drift: the first decision after C
