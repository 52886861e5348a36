"""Win rates of an online round's model against a baseline, plain and length-controlled.

Inputs are per held-out prompt: `prefs[i]` = P(model's response ≻ baseline's response) from a
judge (a soft preference in [0, 1]; a hard win/loss is 1/0 and a tie 0.5), and the two responses'
lengths (any unit, the same for both; AlpacaEval uses characters).

Sources:
  * AlpacaEval (Li, Zhang, Dubois, et al. 2023), github.com/tatsu-lab/alpaca_eval:
    `metrics/helpers.py`, `AbsoluteScoringRule.describe_head2head` (the plain win rate) and
    `metrics/glm_winrate.py`, `get_length_controlled_winrate` (the length-controlled one).
  * Dubois, Galambosi, Liang, Hashimoto 2024, "Length-Controlled AlpacaEval: A Simple Way to
    Debias Automatic Evaluators", arXiv:2404.04475.

AlpacaEval reports both numbers in percent; this module returns fractions in [0, 1].
Pure numpy; matplotlib is imported only by `plot_rounds`.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

# Ridge strength on the mean negative log-likelihood (see `fit_length_glm`). Small enough that
# it moves a well-posed fit by about L2 * |theta| (~1e-7) and large enough to keep separable
# data (every pref 1, or 0) finite: there theta solves 1 - sigmoid(theta) = L2 * theta, ~14.5.
L2 = 1e-7
MAX_NEWTON_STEPS = 200


class LengthGLM(NamedTuple):
  """A fitted length GLM: logit P(model ≻ baseline | i) = theta + phi * f_i + gamma * d_i."""
  theta: float  # model-identity term (the intercept)
  phi: float  # length coefficient on f_i = tanh(std-scaled length difference)
  gamma: float  # instruction-difficulty coefficient (0.0 when no difficulty was given)
  steps: int  # Newton steps taken


def _sigmoid(z):
  """sigma(z) = 1 / (1 + e^-z), without overflow for any finite z."""
  return np.exp(-np.logaddexp(0.0, -z))


def _check_finite_1d(name: str, values, size: int | None = None) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64)
  if array.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one value per prompt), got shape {array.shape}")
  if array.size == 0:
    raise ValueError(f"{name} is empty: need at least one held-out prompt")
  if size is not None and array.size != size:
    raise ValueError(f"{name} has {array.size} values but prefs has {size}: need one per prompt")
  bad = np.flatnonzero(~np.isfinite(array))
  if bad.size:
    raise ValueError(f"{name}[{bad[0]}] is {array[bad[0]]}: every value must be finite "
                     f"({bad.size} non-finite in all)")
  return array


def _check_prefs(prefs) -> np.ndarray:
  prefs = _check_finite_1d("prefs", prefs)
  bad = np.flatnonzero((prefs < 0.0) | (prefs > 1.0))
  if bad.size:
    raise ValueError(f"prefs[{bad[0]}] is {prefs[bad[0]]}: a preference probability must lie "
                     f"in [0, 1] ({bad.size} outside in all)")
  return prefs


def _check_lengths(name: str, lengths, size: int) -> np.ndarray:
  lengths = _check_finite_1d(name, lengths, size)
  bad = np.flatnonzero(lengths < 0)
  if bad.size:
    raise ValueError(f"{name}[{bad[0]}] is {lengths[bad[0]]}: a length cannot be negative")
  return lengths


def win_rate(prefs) -> float:
  """The plain win rate: mean_i prefs_i, with prefs_i = P(model ≻ baseline | prompt i).

  Ties count as 0.5. This is AlpacaEval's `win_rate` (AbsoluteScoringRule: the mean of the soft
  preferences, there times 100).
  """
  return float(np.mean(_check_prefs(prefs)))


def length_feature(model_lengths, baseline_lengths) -> np.ndarray:
  """f_i = tanh(Δ_i / std(Δ)), Δ_i = len_model_i − len_baseline_i, std over prompts (ddof=1).

  AlpacaEval's `std_delta_len` with pandas' sample standard deviation. AlpacaEval takes
  Δ = len_baseline − len_model; tanh is odd, so only the sign of the fitted phi differs (here
  phi > 0 means the judge favours the longer response). When every Δ_i is the same (including a
  single prompt) std(Δ) is 0 and f = 0: length is then confounded with the model and nothing can
  be attributed to it.
  """
  delta = np.asarray(model_lengths, np.float64) - np.asarray(baseline_lengths, np.float64)
  if delta.size < 2 or np.ptp(delta) == 0:
    return np.zeros_like(delta)
  return np.tanh(delta / np.std(delta, ddof=1))


def _objective(w, x, prefs, l2):
  """Mean soft-target logistic loss plus ridge, its gradient and Hessian at w.

  J(w) = −(1/n) Σ_i [p_i log σ(z_i) + (1 − p_i) log σ(−z_i)] + (l2/2) ||w||²,  z = X w
  ∇J = (1/n) Xᵀ (σ(z) − p) + l2 w,   ∇²J = (1/n) Xᵀ diag(σ(z) σ(−z)) X + l2 I.
  """
  z = x @ w
  n = prefs.size
  loss = (np.sum(prefs * np.logaddexp(0.0, -z) + (1.0 - prefs) * np.logaddexp(0.0, z)) / n
          + 0.5 * l2 * float(w @ w))
  s = _sigmoid(z)
  grad = x.T @ (s - prefs) / n + l2 * w
  hess = (x.T * (s * _sigmoid(-z))) @ x / n + l2 * np.eye(w.size)
  return loss, grad, hess


def _newton(x, prefs, l2, tol=1e-12):
  """Minimises the strictly convex J of `_objective` by Newton's method with backtracking."""
  w = np.zeros(x.shape[1])
  loss, grad, hess = _objective(w, x, prefs, l2)
  for step in range(1, MAX_NEWTON_STEPS + 1):
    direction = -np.linalg.solve(hess, grad)
    decrement = -float(grad @ direction)  # Newton decrement², ≥ 0 as the Hessian is PD
    if decrement / 2 <= tol:
      return w, step - 1
    t = 1.0
    while True:  # Armijo: J(w + t d) ≤ J(w) − t·decrement/4
      new_w = w + t * direction
      new_loss, new_grad, new_hess = _objective(new_w, x, prefs, l2)
      if new_loss <= loss - 0.25 * t * decrement:
        break
      t *= 0.5
      if t < 1e-10:  # no decrease left at float precision: w is the minimiser
        return w, step - 1
    w, loss, grad, hess = new_w, new_loss, new_grad, new_hess
  return w, MAX_NEWTON_STEPS


def fit_length_glm(prefs, model_lengths, baseline_lengths, *, difficulty=None,
                   l2: float = L2) -> LengthGLM:
  """Fits AlpacaEval's length GLM for one model against one baseline by maximum likelihood.

    logit P(model ≻ baseline | prompt i) = theta + phi · f_i [+ gamma · d_i],
    f_i = tanh(Δ_i / std(Δ)) (see `length_feature`), d_i = difficulty[i] if given,

  maximising the soft-target likelihood Σ_i p_i log σ(z_i) + (1 − p_i) log σ(−z_i) (the judge's
  probability p_i is the target, as in AlpacaEval's
  `fit_LogisticRegressionCV(is_ytrue_proba=True)`) minus a ridge (n·l2/2)·||w||² (i.e. l2 on
  the mean loss), by Newton's method. The ridge makes the objective strictly convex, so the fit
  is unique and finite even for separable data.

  Differences from AlpacaEval (length_controlled_v1), on purpose: AlpacaEval fits with an L1
  penalty whose strength is chosen by 5-fold cross-validation, adds the annotations of two
  "gamed" (verbose/concise-prompted) baselines, 0.2/2 weight each, to regularise towards them, and
  uses a precomputed per-instruction difficulty whose coefficient is fitted per model. Here the
  penalty is a fixed tiny ridge, there are no gamed baselines, and the difficulty term is off
  unless `difficulty` (one number per prompt) is passed.
  """
  prefs = _check_prefs(prefs)
  n = prefs.size
  model_lengths = _check_lengths("model_lengths", model_lengths, n)
  baseline_lengths = _check_lengths("baseline_lengths", baseline_lengths, n)
  if not (l2 > 0 and math.isfinite(l2)):
    raise ValueError(f"l2 must be a positive finite number, got {l2}")
  columns = [np.ones(n), length_feature(model_lengths, baseline_lengths)]
  if difficulty is not None:
    columns.append(_check_finite_1d("difficulty", difficulty, n))
  w, steps = _newton(np.stack(columns, axis=1), prefs, l2)
  gamma = float(w[2]) if difficulty is not None else 0.0
  return LengthGLM(theta=float(w[0]), phi=float(w[1]), gamma=gamma, steps=steps)


def length_controlled_win_rate(prefs, model_lengths, baseline_lengths, *, difficulty=None,
                               l2: float = L2) -> float:
  """The length-controlled win rate: the GLM's predicted win rate at zero length difference.

    LC = (1/n) Σ_i σ(theta + gamma · d_i)  =  σ(theta)  without the difficulty term,

  with theta, phi, gamma from `fit_length_glm` (f_i set to 0, i.e. "what would the preference
  be if the model's and the baseline's outputs had the same length", Dubois et al. 2024, §3).

  Verified against AlpacaEval's code (metrics/glm_winrate.py): the formula
  "np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline - 1" (no separate
  intercept; the not_gamed_baseline indicator, 1 on every row of the model, is theta here),
  std_delta_len = length difference / its pandas std, soft targets, and
  LC = mean over prompts of predict_proba with std_delta_len = 0 (there × 100). Not reproduced:
  the L1 + cross-validation fit and the gamed-baseline regularisation (see `fit_length_glm`), so
  numbers are close to, not identical with, AlpacaEval's on the same data. With all lengths equal
  (f = 0) LC = mean(prefs) up to l2·|theta|.
  """
  glm = fit_length_glm(prefs, model_lengths, baseline_lengths, difficulty=difficulty, l2=l2)
  if difficulty is None:
    return float(_sigmoid(glm.theta))
  d = np.asarray(difficulty, np.float64)
  return float(np.mean(_sigmoid(glm.theta + glm.gamma * d)))


def round_summary(prefs, model_lengths, baseline_lengths, accuracy=None) -> dict:
  """The eval metrics of one online round, as floats.

  eval/win_rate = mean prefs; eval/lc_win_rate = `length_controlled_win_rate`;
  eval/length = mean model length; eval/accuracy = `accuracy`, only when given.
  """
  summary = {
      "eval/win_rate": win_rate(prefs),
      "eval/lc_win_rate": length_controlled_win_rate(prefs, model_lengths, baseline_lengths),
      "eval/length": float(np.mean(np.asarray(model_lengths, np.float64))),
  }
  if accuracy is not None:
    summary["eval/accuracy"] = float(accuracy)
  return summary


def plot_rounds(rows, path: str) -> str:
  """Writes a PNG of the eval metrics against the round; returns `path`.

  Left axis (0..1, dashed line at 0.5): eval/win_rate, eval/lc_win_rate and eval/accuracy where
  present; right axis: eval/length. A row may lack any eval key; every row needs "round".
  """
  rows = list(rows)
  if not rows:
    raise ValueError("plot_rounds needs at least one row")
  for i, row in enumerate(rows):
    if "round" not in row:
      raise ValueError(f"rows[{i}] has no 'round' key: {sorted(row)}")
  rows = sorted(rows, key=lambda r: r["round"])
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  def series(key):
    return [(r["round"], float(r[key])) for r in rows if r.get(key) is not None]

  fig, left = plt.subplots(figsize=(6, 3.6))
  lines = []
  for key, label, style in (("eval/win_rate", "win rate", "o-"),
                            ("eval/lc_win_rate", "LC win rate", "s-"),
                            ("eval/accuracy", "accuracy", "^-")):
    points = series(key)
    if points:
      lines += left.plot(*zip(*points), style, label=label)
  left.axhline(0.5, color="gray", linestyle="--", linewidth=1)
  left.set_ylim(0.0, 1.0)
  left.set_xlabel("round")
  left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  left.set_ylabel("rate")
  left.grid(alpha=0.3)
  points = series("eval/length")
  if points:
    right = left.twinx()
    lines += right.plot(*zip(*points), "d:", color="tab:gray", label="mean length")
    right.set_ylabel("mean model length")
  if lines:
    left.legend(lines, [line.get_label() for line in lines], loc="best", fontsize="small")
  fig.tight_layout()
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
