"""Preference-game worlds: DNO and INPO vs the Nash equilibrium, GPO on a GPM score game, and
GPM vs Bradley-Terry on cyclic preferences.

All on one prompt with single-token responses and an explicit preference matrix
P[a, b] = P(a ≻ b) (P + Pᵀ = 1):

* transitive: Bradley-Terry, P = σ(u_a − u_b) with u = (2, 1, 0.5, 0): the Nash equilibrium
  is the Condorcet winner, response 0;
* cyclic: a rock-paper-scissors-like core, P(0≻1) = 0.9, P(1≻2) = 0.7, P(2≻0) = 0.6, and a
  fourth response that every other beats with probability 0.7. The Nash equilibrium is the
  mixed policy (2, 1, 4, 0)/7 (checked by the LP), which no iterate starts at.

The online algorithms run their real losses round by round: round t fixes π_t (and its
on-policy pair distribution), minimises the exact expected loss from π_t to convergence
(Adam, decaying step) and hands the result on as π_{t+1}. The whole multi-round loop is one
jitted lax.scan.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

import algorithms
from algorithms import dno as _dno  # noqa: F401
from algorithms import gpo as gpo_module
from algorithms import inpo as _inpo  # noqa: F401
from algorithms import preference
from algorithms.base import LossInputs
from verification import games, tabular
from verification.common import WorldResult, adam, loss_config, pair_inputs
from verification.tabular import Pairs

GAP_TOLERANCE = 0.02


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def transitive_preferences() -> np.ndarray:
  u = np.array([2.0, 1.0, 0.5, 0.0])
  return sigmoid(u[:, None] - u[None, :])


def cyclic_preferences() -> np.ndarray:
  p = np.full((4, 4), 0.5)
  for a, b, v in [(0, 1, 0.9), (1, 2, 0.7), (2, 0, 0.6), (0, 3, 0.7), (1, 3, 0.7), (2, 3, 0.7)]:
    p[a, b], p[b, a] = v, 1.0 - v
  return p


GAMES = {"transitive": transitive_preferences, "cyclic": cyclic_preferences}


def single_token_space(num_responses: int) -> tabular.TreeSpace:
  return tabular.build_space([[(y,) for y in range(1, num_responses + 1)]])


def _pairs(a, b, weights=None) -> Pairs:
  a, b = np.asarray(a, np.int32), np.asarray(b, np.int32)
  return Pairs(a, b, np.ones(len(a)) if weights is None else np.asarray(weights))


def _ordered(n: int, diagonal: bool = False) -> Pairs:
  idx = [(a, b) for a in range(n) for b in range(n) if diagonal or a != b]
  return _pairs(*zip(*idx))


def run_rounds(space, round_objective, theta0, rounds: int, steps: int, learning_rate: float):
  """Iterates π_{t+1} = argmin_θ L_t(θ; π_t) from π_1 = softmax(θ0).

  `round_objective(theta, theta_t)` is the exact expected loss of round t, built from π_t.
  Returns the policies [rounds + 1, Y] (π_1 first) as float64 numpy.
  """

  def one_round(theta_t, _):
    theta_t = jax.lax.stop_gradient(theta_t)
    theta, _ = adam(round_objective, theta_t, theta_t, steps=steps,
                    learning_rate=learning_rate)
    return theta, theta

  @jax.jit
  def loop(theta):
    _, thetas = jax.lax.scan(one_round, theta, None, length=rounds)
    return jnp.concatenate([theta[None], thetas], axis=0)

  thetas = np.asarray(loop(jnp.asarray(theta0, jnp.float32)), np.float64)
  return np.stack([tabular.probs_np(space, t) for t in thetas])


def _policy(space, theta):
  return jnp.exp(tabular.sequence_log_probs(space, theta))


# ---------------------------------------------------------------------------------------
# DNO.

DNO_ETA = 0.5  # η = cfg.beta: the soft policy-iteration step is 1/η
DNO_ROUNDS = {"transitive": 40, "cyclic": 400}
ROUND_STEPS = 400  # Adam steps per round (decaying step): each round's loss is minimised


def dno_round_objective(pref: np.ndarray, eta: float):
  """(space, objective(θ, frozen)) of DNO's exact round with the real loss.

  Round t: every unordered pair (a, b), uniform weight, soft label σ(r_t(a) − r_t(b)) with
  r_t(y) = P(y ≻ π_t) exact; `frozen["prev"]` = θ_t, the logits of π_t; η = cfg.beta.
  """
  cfg = loss_config("dno", beta=eta)
  loss = algorithms.get_loss("dno")
  n = pref.shape[0]
  space = single_token_space(n)
  pairs = _pairs(*zip(*[(a, b) for a in range(n) for b in range(a + 1, n)]))
  pref_j = jnp.asarray(pref, jnp.float32)
  ca, cb = jnp.asarray(pairs.chosen), jnp.asarray(pairs.rejected)

  def objective(theta, frozen):
    theta_t = frozen["prev"]
    prev = tabular.token_log_probs(space, theta_t)
    win = pref_j @ _policy(space, theta_t)  # r_t(y) = P(y ≻ π_t)
    inputs = pair_inputs(space, pairs, tabular.token_log_probs(space, theta), prev=prev,
                         preference_prob=jax.nn.sigmoid(win[ca] - win[cb]))
    return loss(inputs, cfg)[0]

  return space, objective


def dno_iterates(pref: np.ndarray, eta: float, rounds: int, start=None) -> np.ndarray:
  """[rounds + 1, Y] DNO's iterates π_1 (uniform, or `start`) .. π_{T+1} with the real loss
  (`dno_round_objective`, the previous iterate as the anchor of each round)."""
  space, objective = dno_round_objective(pref, eta)
  theta0 = np.zeros(space.num_edges) if start is None else tabular.logits_for(space, start)
  return run_rounds(space, lambda theta, theta_t: objective(theta, {"prev": theta_t}),
                    theta0, rounds, steps=ROUND_STEPS, learning_rate=0.1)


def dno_worlds() -> Iterator[WorldResult]:
  """DNO (Algorithm 1, soft two-sided form) by self-play against π_t.

  Round t: r_t(y) = P(y ≻ π_t) exactly; every unordered pair (a, b) with uniform weight and
  soft label σ(r_t(a) − r_t(b)); η = cfg.beta. The exact minimiser is the soft policy
  iteration π_{t+1} ∝ π_t exp(r_t/η), i.e. multiplicative weights on the preference game,
  which is no-regret: its AVERAGE iterate converges to the Nash equilibrium, while on cyclic
  preferences the last iterate keeps cycling around it. The transitive world is judged on
  the last iterate, the cyclic one on the average of π_1..π_T.
  """
  for name, make in GAMES.items():
    pref = make()
    policies = dno_iterates(pref, DNO_ETA, DNO_ROUNDS[name])
    payoff = pref - 0.5
    nash, _ = games.nash_lp(payoff)
    last_gaps = np.array([games.duality_gap(payoff, p) for p in policies])
    averages = np.cumsum(policies, axis=0) / np.arange(1, len(policies) + 1)[:, None]
    avg_gaps = np.array([games.duality_gap(payoff, p) for p in averages])
    use_average = name == "cyclic"
    value = avg_gaps[-1] if use_average else last_gaps[-1]
    yield WorldResult(
        "dno", f"{name}_nash", "duality_gap_" + ("average_iterate" if use_average
                                                 else "last_iterate"),
        float(value), 0.0, GAP_TOLERANCE, "at_most",
        note=(f"η={DNO_ETA}, {DNO_ROUNDS[name]} rounds from uniform π_1; Nash (LP) "
              f"{np.round(nash, 3).tolist()}; last iterate {np.round(policies[-1], 3).tolist()} "
              f"(gap {last_gaps[-1]:.4f}), average {np.round(averages[-1], 3).tolist()} "
              f"(gap {avg_gaps[-1]:.4f})"
              + ("; the last iterate cycles, so the average is judged" if use_average else "")),
        plot={"kind": "curves", "title": f"DNO, {name} preferences", "xlabel": "round t",
              "ylabel": "duality gap", "logy": True,
              "x": list(range(1, len(policies) + 1)),
              "series": {"last iterate π_t": last_gaps.tolist(),
                         "average iterate": avg_gaps.tolist()}})


# ---------------------------------------------------------------------------------------
# INPO.

INPO_ETA = 1.0
INPO_RATIO = 0.1  # τ/η, so τ = 0.1
INPO_ROUNDS = 80
INPO_REF = np.array([0.1, 0.2, 0.3, 0.4])  # favours the worse responses: the KL term matters


def inpo_round_objective(pref: np.ndarray, eta: float, ratio: float):
  """(space, objective(θ, frozen)) of INPO's exact round with the real loss.

  Round t: every ordered pair (a, b) with weight π_t(a) π_t(b) P(a ≻ b) (pairs drawn from
  π_t ⊗ π_t and labelled by P), chosen = a; `frozen["ref"]` = the logits of π_ref,
  `frozen["prev"]` = those of π_t.
  """
  cfg = loss_config("inpo", inpo_eta=eta, inpo_ratio=ratio)
  loss = algorithms.get_loss("inpo")
  n = pref.shape[0]
  space = single_token_space(n)
  pairs = _ordered(n)
  pair_pref = jnp.asarray(pref[pairs.chosen, pairs.rejected], jnp.float32)
  ca, cb = jnp.asarray(pairs.chosen), jnp.asarray(pairs.rejected)

  def objective(theta, frozen):
    prev = tabular.token_log_probs(space, frozen["prev"])
    pi_t = _policy(space, frozen["prev"])
    inputs = pair_inputs(space, pairs, tabular.token_log_probs(space, theta),
                         ref=tabular.token_log_probs(space, frozen["ref"]), prev=prev,
                         weights=pi_t[ca] * pi_t[cb] * pair_pref)
    return loss(inputs, cfg)[0]

  return space, objective


def inpo_iterates(pref: np.ndarray, ref: np.ndarray, eta: float, ratio: float,
                  rounds: int) -> np.ndarray:
  """[rounds + 1, Y] INPO's iterates from π_1 = π_ref with the real loss
  (`inpo_round_objective`: π_ref fixed, π_t the previous iterate)."""
  space, objective = inpo_round_objective(pref, eta, ratio)
  ref_logits = jnp.asarray(tabular.logits_for(space, ref), jnp.float32)
  return run_rounds(
      space, lambda theta, theta_t: objective(theta, {"ref": ref_logits, "prev": theta_t}),
      ref_logits, rounds, steps=ROUND_STEPS, learning_rate=0.1)


def inpo_worlds() -> Iterator[WorldResult]:
  """INPO by self-play: its last iterate converges to the τ-regularised Nash policy.

  Round t: pairs (a, b) ~ π_t ⊗ π_t labelled a ≻ b with probability P(a ≻ b), i.e. every
  ordered pair with weight π_t(a) π_t(b) P(a ≻ b); the loss (h − 1/(2η))² with
  h = Δπ − (τ/η)Δref − (1 − τ/η)Δπ_t on summed log-probs. Its exact minimiser is the
  mirror-descent step log π_{t+1} = (τ/η) log π_ref + (1 − τ/η) log π_t + P(·≻π_t)/η + c,
  whose fixed point is the regularised Nash π ∝ π_ref exp(P(·≻π)/τ). Judged by the duality
  gap of the last iterate in the regularised game; the target policy is computed
  independently (games.regularised_nash) and its distance reported.
  """
  tau = INPO_ETA * INPO_RATIO
  for name, make in GAMES.items():
    pref = make()
    policies = inpo_iterates(pref, INPO_REF, INPO_ETA, INPO_RATIO, INPO_ROUNDS)
    target = games.regularised_nash(pref, INPO_REF, tau)
    gaps = np.array([games.regularised_duality_gap(pref, INPO_REF, tau, p) for p in policies])
    tv = 0.5 * np.abs(policies[-1] - target).sum()
    yield WorldResult(
        "inpo", f"{name}_regularised_nash", "regularised_duality_gap_last_iterate",
        float(gaps[-1]), 0.0, GAP_TOLERANCE, "at_most",
        note=(f"η={INPO_ETA}, τ/η={INPO_RATIO} (τ={tau}), π_ref={INPO_REF.tolist()}, "
              f"{INPO_ROUNDS} rounds from π_1 = π_ref; regularised Nash "
              f"{np.round(target, 4).tolist()}, last iterate "
              f"{np.round(policies[-1], 4).tolist()} (TV {tv:.2e}); unregularised gap of the "
              f"last iterate {games.duality_gap(pref - 0.5, policies[-1]):.3f} (the "
              f"regularised game's equilibrium is not the unregularised one)"),
        plot={"kind": "curves", "title": f"INPO, {name} preferences", "xlabel": "round t",
              "ylabel": "regularised duality gap", "logy": True,
              "x": list(range(1, len(policies) + 1)),
              "series": {"last iterate π_t": gaps.tolist()}})


# ---------------------------------------------------------------------------------------
# GPO.

# Five responses with fixed 4-dim GPM embeddings (algorithms.md §5.3's GPO example), L2
# normalised as the alignment-time scorer does; τ = 0.1.
GPO_EMBEDDINGS = np.array([[1, 2, -1, .5], [.5, -1, 2, 1], [-1, .5, .5, -2], [2, 0, 1, 1],
                           [0, 1, -1, 1]], np.float64)
GPO_TAU = 0.1
GPO_BETA = 100.0
GPO_ROUNDS = 600


def gpo_worlds() -> Iterator[WorldResult]:
  """GPO (SPPO-style self-play with GPM score targets, loss "sppo_score") on a score game.

  Round t: Ŝ(y) = 2 E_{y'∼π_t}[s(y ≻ y')]/τ, the population value of the official
  (1/K) Σ_j (table − tableᵀ)[y, j] over K samples from π_t (at t = 1, π_1 uniform, it equals
  `gpo.gpo_targets(table, τ).score_targets` over all responses; checked). Pairs
  (a, b) ~ π_t ⊗ π_t with targets Ŝ_a, Ŝ_b; loss ½[(ℓ_a − Ŝ_a/β)² + (ℓ_b − Ŝ_b/β)²] with
  ℓ = log π/π_t. GPO has no π_ref term, so its round minimiser is a normalised regression
  of log π_{t+1}/π_t on Ŝ/β; its fixed points are exactly the policies against which every
  response scores the same, i.e. the Nash equilibria of the antisymmetric score game s
  (the stated target). Like multiplicative weights it cycles on a cyclic table, so the
  average iterate is judged: the duality gap of the game rescaled to payoffs in [−½, ½]
  (s / (2 max|s|)), as for the preference games.
  """
  v = GPO_EMBEDDINGS / np.linalg.norm(GPO_EMBEDDINGS, axis=-1, keepdims=True)
  table = np.asarray(preference.gpm_score_table(jnp.asarray(v, jnp.float32)), np.float64)
  n = table.shape[0]
  space = single_token_space(n)
  pairs = _ordered(n, diagonal=True)
  ca, cb = jnp.asarray(pairs.chosen), jnp.asarray(pairs.rejected)
  cfg = loss_config("gpo", beta=GPO_BETA, gpo_loss_type="sppo_score")
  loss = algorithms.get_loss("gpo")
  table_j = jnp.asarray(table, jnp.float32)

  # The official targets at t = 1 (π_1 uniform): the population targets must agree.
  official = np.asarray(gpo_module.gpo_targets(table_j, GPO_TAU).score_targets)
  population = 2.0 * table @ np.full(n, 1.0 / n) / GPO_TAU
  if not np.allclose(official, population, atol=1e-4):
    raise AssertionError(f"gpo_targets {official} != population targets {population}")

  def objective(theta, theta_t):
    prev = tabular.token_log_probs(space, theta_t)
    pi_t = _policy(space, theta_t)
    s_hat = 2.0 * (table_j @ pi_t) / GPO_TAU
    inputs = pair_inputs(space, pairs, tabular.token_log_probs(space, theta), prev=prev,
                         weights=pi_t[ca] * pi_t[cb], chosen_score=s_hat[ca],
                         rejected_score=s_hat[cb])
    return loss(inputs, cfg)[0]

  policies = run_rounds(space, objective, np.zeros(space.num_edges), GPO_ROUNDS,
                        steps=ROUND_STEPS, learning_rate=0.1)
  payoff = table / (2.0 * np.abs(table).max())
  nash, _ = games.nash_lp(payoff)
  averages = np.cumsum(policies, axis=0) / np.arange(1, len(policies) + 1)[:, None]
  last_gaps = np.array([games.duality_gap(payoff, p) for p in policies])
  avg_gaps = np.array([games.duality_gap(payoff, p) for p in averages])
  yield WorldResult(
      "gpo", "gpm_score_game_nash", "scaled_duality_gap_average_iterate", float(avg_gaps[-1]),
      0.0, GAP_TOLERANCE, "at_most",
      note=(f"β={GPO_BETA}, τ={GPO_TAU}, {GPO_ROUNDS} rounds from uniform; score-game Nash "
            f"(LP) {np.round(nash, 3).tolist()}; average iterate "
            f"{np.round(averages[-1], 3).tolist()}; last iterate gap {last_gaps[-1]:.4f}"),
      plot={"kind": "curves", "title": "GPO on a GPM score game", "xlabel": "round t",
            "ylabel": "duality gap (payoffs scaled to [−½, ½])", "logy": True,
            "x": list(range(1, len(policies) + 1)),
            "series": {"last iterate π_t": last_gaps.tolist(),
                       "average iterate": avg_gaps.tolist()}})


# ---------------------------------------------------------------------------------------
# GPM vs BT on cyclic preferences.


def cyclic_tournaments() -> list[list[tuple[int, int]]]:
  """(winner, loser) pairs of two balanced cyclic tournaments (one prompt each).

  Prompt 0: rock-paper-scissors, 0 ≻ 1 ≻ 2 ≻ 0. Prompt 1: five responses, i ≻ i+1 and
  i ≻ i+2 (mod 5). Every response wins as often as it loses, so no ranking (no BT model)
  gets more than chance right, and BT's maximum-likelihood fit gives equal scores.
  """
  rps = [(0, 1), (1, 2), (2, 0)]
  five = [(i, (i + d) % 5) for i in range(5) for d in (1, 2)]
  return [rps, five]


def preference_model_worlds(algorithm: str) -> Iterator[WorldResult]:
  """Free per-response embeddings (GPM, 2k = 2) or scalar rewards (BT) trained with the real
  `gpm` / `bt_reward` losses on every labelled pair of the cyclic tournaments (deterministic
  labels, each pair once). Accuracy: the fraction of pairs whose score favours the winner,
  with |s/τ| < 1e-3 counted as a tie (½)."""
  tournaments = cyclic_tournaments()
  offsets = np.cumsum([0] + [1 + max(max(p) for p in t) for t in tournaments])
  winners = np.concatenate([[w + o for w, _ in t] for t, o in zip(tournaments, offsets)])
  losers = np.concatenate([[l + o for _, l in t] for t, o in zip(tournaments, offsets)])
  num = int(offsets[-1])
  dim = 2 if algorithm == "gpm" else 1
  cfg = loss_config(algorithm)
  tau = cfg.preference_tau
  loss = algorithms.get_loss(algorithm)
  w, l = jnp.asarray(winners), jnp.asarray(losers)

  def objective(values):
    inputs = LossInputs(policy_chosen_logps=None, policy_rejected_logps=None,
                        chosen_mask=None, rejected_mask=None,
                        chosen_values=values[w], rejected_values=values[l])
    return loss(inputs, cfg)[0]

  init = jax.random.normal(jax.random.PRNGKey(0), (num, dim)) * 0.5
  values, trace = jax.jit(lambda v: adam(objective, v, steps=2000, learning_rate=0.05))(init)
  values = np.asarray(values, np.float64)
  if algorithm == "gpm":
    scores = np.asarray(preference.gpm_scores(jnp.asarray(values[winners]),
                                              jnp.asarray(values[losers])), np.float64)
  else:
    scores = values[winners, 0] - values[losers, 0]
  tie = np.abs(scores / tau) < 1e-3
  spread = max(float(np.ptp(values[a:b])) for a, b in zip(offsets[:-1], offsets[1:]))
  acc = float(np.mean(np.where(tie, 0.5, (scores > 0).astype(float))))
  if algorithm == "gpm":
    res = WorldResult("gpm", "cyclic_accuracy", "pairwise_accuracy", acc, 1.0, 0.01,
                      "at_least",
                      note=f"τ={tau}, 2k=2, {len(winners)} labelled pairs (3-cycle and a "
                           f"5-response regular tournament); ties {int(tie.sum())}")
  else:
    res = WorldResult("bt_reward", "cyclic_accuracy", "pairwise_accuracy", acc, 0.5, 0.1,
                      "within",
                      note=f"τ={tau}, {len(winners)} labelled pairs; ties (|Δr/τ| < 1e-3) "
                           f"{int(tie.sum())}; largest reward spread within a prompt {spread:.1e}")
  res.plot = {"kind": "curves", "title": f"{algorithm} on cyclic preferences",
              "xlabel": "Adam step", "ylabel": "training loss", "logy": algorithm == "gpm",
              "x": list(range(1, len(trace) + 1)),
              "series": {"loss": np.asarray(trace, np.float64).tolist()}}
  yield res


def gpm_worlds() -> Iterator[WorldResult]:
  yield from preference_model_worlds("gpm")


def bt_reward_worlds() -> Iterator[WorldResult]:
  yield from preference_model_worlds("bt_reward")
