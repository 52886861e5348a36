"""Exact targets of the small worlds, computed without the losses under test (numpy/scipy).

* `kl_optimum`: the KL-regularised reward maximiser π*(y|x) = π_ref(y|x) exp(r(x,y)/β) / Z(x)
  (Rafailov et al. 2023, Eq. 4), DPO's population optimum under Bradley-Terry labels.
* `ipo_optimum`: the minimiser of IPO's population loss (Azar et al. 2023, Eq. 17 in
  expectation) by a weighted least-squares linear solve for g = log π/π_ref.
* `nash_lp`: the maximin strategy of a two-player zero-sum matrix game by linear programming
  (scipy's HiGHS), for the preference game with payoff P(y ≻ y') − ½.
* `regularised_nash`: the Nash policy of the τ-KL-regularised preference game, the fixed
  point π = softmax(log π_ref + P π / τ), solved by Newton-type root finding in float64.
* `duality_gap`, `regularised_duality_gap`: how far a policy is from those equilibria.
* `auc`: the probability that a random positive scores above a random negative (ties ½).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize


def kl_optimum(ref: np.ndarray, reward: np.ndarray, beta: float) -> np.ndarray:
  """[Y] π_ref·exp(r/β)/Z for one prompt, in float64."""
  logits = np.log(np.asarray(ref, np.float64)) + np.asarray(reward, np.float64) / beta
  logits -= logits.max()
  p = np.exp(logits)
  return p / p.sum()


def ipo_optimum(ref: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
                weights: np.ndarray, tau: float) -> np.ndarray:
  """[Y] the policy minimising Σ_pairs w (g_a − g_b − 1/(2τ))², g = log π/π_ref, for one prompt.

  `chosen`, `rejected` index the prompt's responses and `weights` are the pairs' weights
  in the expected IPO loss (summed log-probs: the paper's h). The loss is a quadratic in g,
  so its minimiser solves the normal equations L g = b with the weighted graph Laplacian
  L = Σ w (e_a − e_b)(e_a − e_b)ᵀ and b = Σ w/(2τ) (e_a − e_b); g is fixed up to a constant,
  which the normalisation Σ π_ref e^g = 1 determines. With pairs drawn from μ⊗μ this is
  Azar et al.'s closed form g(y) = P(y ≻ μ)/τ + const.
  """
  n = len(ref)
  lap = np.zeros((n, n))
  rhs = np.zeros(n)
  c = 1.0 / (2.0 * tau)
  for a, b, w in zip(chosen, rejected, weights):
    d = np.zeros(n)
    d[a], d[b] = 1.0, -1.0
    lap += w * np.outer(d, d)
    rhs += w * c * d
  g = np.linalg.lstsq(lap, rhs, rcond=None)[0]
  return kl_optimum(ref, g, 1.0)


def nash_lp(payoff: np.ndarray) -> tuple[np.ndarray, float]:
  """Maximin mixed strategy p of the row player of a zero-sum game and the game's value.

  maximise v  s.t.  pᵀ A e_j ≥ v for every column j,  Σ p = 1,  p ≥ 0.
  """
  a = np.asarray(payoff, np.float64)
  m, n = a.shape
  # Variables (p_1..p_m, v); linprog minimises, so minimise −v.
  cost = np.zeros(m + 1)
  cost[-1] = -1.0
  a_ub = np.hstack([-a.T, np.ones((n, 1))])  # v − pᵀA e_j ≤ 0
  b_ub = np.zeros(n)
  a_eq = np.hstack([np.ones((1, m)), np.zeros((1, 1))])
  res = scipy.optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0],
                               bounds=[(0, None)] * m + [(None, None)], method="highs")
  if not res.success:
    raise RuntimeError(f"linprog failed: {res.message}")
  p = np.clip(res.x[:m], 0.0, None)
  return p / p.sum(), float(res.x[-1])


def duality_gap(payoff: np.ndarray, p: np.ndarray) -> float:
  """Duality gap of the symmetric profile (p, p) in a symmetric zero-sum game.

  For an antisymmetric payoff A (A = P − ½ for a preference matrix P) the value is 0 and
  gap(p) = max_i (A p)_i − min_j (pᵀ A)_j = 2·max_i (A p)_i: twice the best gain of a
  deviating player, 0 exactly at a Nash equilibrium.
  """
  a = np.asarray(payoff, np.float64)
  p = np.asarray(p, np.float64)
  return float(np.max(a @ p) - np.min(p @ a))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
  p = np.asarray(p, np.float64)
  nz = p > 0
  return float(np.sum(p[nz] * (np.log(p[nz]) - np.log(q[nz]))))


def _soft_best_response_value(u: np.ndarray, ref: np.ndarray, tau: float) -> float:
  """max_π ⟨π, u⟩ − τ KL(π‖π_ref) = τ log Σ π_ref exp(u/τ)."""
  z = u / tau + np.log(ref)
  return float(tau * (z.max() + np.log(np.exp(z - z.max()).sum())))


def regularised_duality_gap(pref: np.ndarray, ref: np.ndarray, tau: float,
                            p: np.ndarray) -> float:
  """Duality gap of (p, p) in the τ-KL-regularised preference game.

  The game (Munos et al. 2023; INPO, Zhang et al. 2025, Eq. 3):
      f(π1, π2) = P(π1 ≻ π2) − τ KL(π1‖π_ref) + τ KL(π2‖π_ref),
  so gap(p) = max_π1 f(π1, p) − min_π2 f(p, π2)
            = 2 [τ log Σ_y π_ref(y) exp(P(y ≻ p)/τ) + τ KL(p‖π_ref) − ½],
  using P(p ≻ π2) = 1 − P(π2 ≻ p). Zero exactly at the regularised Nash policy.
  """
  u = np.asarray(pref, np.float64) @ np.asarray(p, np.float64)  # P(y ≻ p)
  return 2.0 * (_soft_best_response_value(u, ref, tau) + tau * _kl(p, ref) - 0.5)


def regularised_nash(pref: np.ndarray, ref: np.ndarray, tau: float,
                     tol: float = 1e-12) -> np.ndarray:
  """[Y] the Nash policy of the τ-regularised game: π = softmax(log π_ref + P π / τ).

  The regularised game is strongly monotone, so the fixed point is unique. Solved for
  z = log π by scipy's hybrid Powell root finder, started from a damped fixed-point
  iteration; the returned policy's regularised duality gap is checked to be below `tol`.
  """
  pref = np.asarray(pref, np.float64)
  log_ref = np.log(np.asarray(ref, np.float64))

  def softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()

  def fixed_map(z):
    t = log_ref + pref @ softmax(z) / tau
    return t - (t.max() + np.log(np.exp(t - t.max()).sum()))

  z = log_ref.copy()
  for _ in range(2000):  # damped iteration: a good start for the root finder
    z = 0.9 * z + 0.1 * fixed_map(z)
  sol = scipy.optimize.root(lambda v: v - fixed_map(v), z, method="hybr", tol=1e-14)
  p = softmax(sol.x)
  gap = regularised_duality_gap(pref, ref, tau, p)
  if not gap < tol:
    raise RuntimeError(f"regularised Nash not found: duality gap {gap:.3e}")
  return p


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
  """P(score(pos) > score(neg)) over all positive/negative pairs, ties counted ½."""
  pos = np.asarray(positive, np.float64)[:, None]
  neg = np.asarray(negative, np.float64)[None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))
