"""Plain and length-controlled win rates (training/win_rates.py): known values, bias removal,
degenerate inputs, an independent fit, the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import win_rates


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _lengths(n, seed, model_mean=500.0, baseline_mean=500.0):
  rng = np.random.default_rng(seed)
  model = rng.normal(model_mean, 150.0, n).clip(1).round()
  baseline = rng.normal(baseline_mean, 150.0, n).clip(1).round()
  return model, baseline


def test_win_rate_known_values():
  assert win_rates.win_rate([1, 0, 0.5, 1]) == pytest.approx(0.625)
  assert win_rates.win_rate(np.array([0.2, 0.4])) == pytest.approx(0.3)
  assert win_rates.win_rate([0.5]) == 0.5
  assert isinstance(win_rates.win_rate([1.0, 0.0]), float)


def test_length_feature_is_tanh_of_std_scaled_difference():
  model, baseline = np.array([10.0, 20.0, 40.0]), np.array([10.0, 10.0, 10.0])
  delta = model - baseline
  expected = np.tanh(delta / np.std(delta, ddof=1))
  np.testing.assert_allclose(win_rates.length_feature(model, baseline), expected)
  np.testing.assert_array_equal(win_rates.length_feature([5.0, 7.0], [3.0, 5.0]), [0.0, 0.0])
  np.testing.assert_array_equal(win_rates.length_feature([5.0], [3.0]), [0.0])


def test_pure_length_bias_is_removed():
  """The judge prefers the longer response only; the model is longer on average."""
  model, baseline = _lengths(2000, seed=0, model_mean=650.0)
  prefs = _sigmoid(3.0 * win_rates.length_feature(model, baseline))
  plain = win_rates.win_rate(prefs)
  lc = win_rates.length_controlled_win_rate(prefs, model, baseline)
  assert plain > 0.65
  assert abs(lc - 0.5) < 0.05
  glm = win_rates.fit_length_glm(prefs, model, baseline)
  assert glm.phi == pytest.approx(3.0, abs=1e-3) and abs(glm.theta) < 1e-3  # exact data: recovered


def test_pure_length_bias_with_hard_sampled_labels():
  model, baseline = _lengths(4000, seed=1, model_mean=650.0)
  p = _sigmoid(2.0 * win_rates.length_feature(model, baseline))
  labels = (np.random.default_rng(2).random(p.size) < p).astype(float)
  assert win_rates.win_rate(labels) > 0.6
  assert abs(win_rates.length_controlled_win_rate(labels, model, baseline) - 0.5) < 0.05


def test_pure_identity_effect_leaves_win_rate_unchanged():
  model, baseline = _lengths(2000, seed=3)  # lengths independent of the preference
  rng = np.random.default_rng(4)
  prefs = _sigmoid(1.0 + 0.3 * rng.normal(size=model.size))
  plain = win_rates.win_rate(prefs)
  lc = win_rates.length_controlled_win_rate(prefs, model, baseline)
  assert plain > 0.7
  assert lc == pytest.approx(plain, abs=0.02)


def test_equal_lengths_give_the_plain_win_rate():
  prefs = np.random.default_rng(5).random(300)
  lengths = np.full(300, 123.0)
  lc = win_rates.length_controlled_win_rate(prefs, lengths, lengths)
  assert lc == pytest.approx(win_rates.win_rate(prefs), abs=1e-6)
  # A constant nonzero difference is confounded with the model: also the plain win rate.
  lc = win_rates.length_controlled_win_rate(prefs, lengths + 40, lengths)
  assert lc == pytest.approx(win_rates.win_rate(prefs), abs=1e-6)


@pytest.mark.parametrize("value", [1.0, 0.0])
@pytest.mark.parametrize("lengths", ["varied", "equal", "single"])
def test_separable_prefs_stay_finite(value, lengths):
  n = 1 if lengths == "single" else 64
  model, baseline = _lengths(n, seed=6, model_mean=600.0)
  if lengths == "equal":
    model = baseline.copy()
  prefs = np.full(n, value)
  glm = win_rates.fit_length_glm(prefs, model, baseline)
  assert math.isfinite(glm.theta) and math.isfinite(glm.phi)
  lc = win_rates.length_controlled_win_rate(prefs, model, baseline)
  assert 0.0 < lc < 1.0
  assert (lc > 0.9) if value == 1.0 else (lc < 0.1)


def test_prefs_separable_by_length_stay_finite():
  model, baseline = _lengths(200, seed=7)
  prefs = (model > baseline).astype(float)
  glm = win_rates.fit_length_glm(prefs, model, baseline)
  assert all(math.isfinite(v) for v in glm[:3])
  assert 0.0 < win_rates.length_controlled_win_rate(prefs, model, baseline) < 1.0


def test_difficulty_term_is_optional_and_averaged():
  model, baseline = _lengths(3000, seed=8, model_mean=600.0)
  rng = np.random.default_rng(9)
  difficulty = rng.normal(size=model.size)
  logits = 0.4 + 1.5 * win_rates.length_feature(model, baseline) - 0.8 * difficulty
  prefs = _sigmoid(logits)
  glm = win_rates.fit_length_glm(prefs, model, baseline, difficulty=difficulty)
  np.testing.assert_allclose([glm.theta, glm.phi, glm.gamma], [0.4, 1.5, -0.8], atol=1e-3)
  lc = win_rates.length_controlled_win_rate(prefs, model, baseline, difficulty=difficulty)
  assert lc == pytest.approx(np.mean(_sigmoid(0.4 - 0.8 * difficulty)), abs=1e-4)


def test_fit_matches_an_independent_lbfgs_fit():
  torch = pytest.importorskip("torch")
  model, baseline = _lengths(500, seed=10, model_mean=560.0)
  rng = np.random.default_rng(11)
  prefs = rng.random(model.size) ** 0.8  # arbitrary soft preferences
  glm = win_rates.fit_length_glm(prefs, model, baseline)

  f = torch.tensor(win_rates.length_feature(model, baseline), dtype=torch.float64)
  p = torch.tensor(prefs, dtype=torch.float64)
  w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
  opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-13,
                          tolerance_change=1e-16, line_search_fn="strong_wolfe")

  def closure():
    opt.zero_grad()
    z = w[0] + w[1] * f
    loss = -(p * torch.nn.functional.logsigmoid(z)
             + (1 - p) * torch.nn.functional.logsigmoid(-z)).mean()
    loss = loss + 0.5 * win_rates.L2 * (w ** 2).sum()
    loss.backward()
    return loss

  opt.step(closure)
  theta, phi = w.detach().numpy()
  assert glm.theta == pytest.approx(theta, abs=1e-4)
  assert glm.phi == pytest.approx(phi, abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (([], [], []), "prefs is empty"),
    (([0.5, float("nan"), 1.0], [1, 2, 3], [1, 2, 3]), r"prefs\[1\] is nan"),
    (([0.5, 1.5], [1, 2], [1, 2]), r"prefs\[1\] is 1.5.*\[0, 1\]"),
    (([0.5, 1.0], [1, 2, 3], [1, 2]), "model_lengths has 3 values but prefs has 2"),
    (([0.5, 1.0], [1, 2], [1]), "baseline_lengths has 1 values but prefs has 2"),
    (([0.5, 1.0], [1, float("inf")], [1, 2]), r"model_lengths\[1\] is inf"),
    (([0.5, 1.0], [1, 2], [-1, 2]), r"baseline_lengths\[0\] is -1.0.*negative"),
    (([[0.5, 1.0]], [1, 2], [1, 2]), "prefs must be 1-D"),
])
def test_bad_inputs_raise_clear_errors(args, message):
  with pytest.raises(ValueError, match=message):
    win_rates.length_controlled_win_rate(*args)
  with pytest.raises(ValueError, match=message):
    win_rates.round_summary(*args)


def test_win_rate_rejects_empty_and_nan():
  with pytest.raises(ValueError, match="prefs is empty"):
    win_rates.win_rate([])
  with pytest.raises(ValueError, match=r"prefs\[2\] is nan"):
    win_rates.win_rate([0.1, 0.2, float("nan")])


def test_round_summary_keys():
  model, baseline = _lengths(50, seed=12)
  prefs = np.random.default_rng(13).random(50)
  summary = win_rates.round_summary(prefs, model, baseline)
  assert set(summary) == {"eval/win_rate", "eval/lc_win_rate", "eval/length"}
  assert all(type(v) is float for v in summary.values())
  assert summary["eval/length"] == pytest.approx(model.mean())
  assert summary["eval/win_rate"] == pytest.approx(prefs.mean())
  summary = win_rates.round_summary(prefs, model, baseline, accuracy=np.float32(0.75))
  assert summary["eval/accuracy"] == 0.75 and type(summary["eval/accuracy"]) is float


def test_plot_rounds_writes_a_png(tmp_path):
  rows = []
  for r in range(4):
    model, baseline = _lengths(40, seed=20 + r, model_mean=500.0 + 50 * r)
    prefs = np.random.default_rng(r).random(40)
    rows.append({"round": r, **win_rates.round_summary(prefs, model, baseline,
                                                       accuracy=0.5 + 0.1 * r)})
  rows.append({"round": 4, "eval/win_rate": 0.6})  # a row missing keys is still plotted
  path = str(tmp_path / "sub" / "rounds.png")
  assert win_rates.plot_rounds(rows[::-1], path) == path
  with open(path, "rb") as f:
    data = f.read()
  assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
  with pytest.raises(ValueError, match="no 'round' key"):
    win_rates.plot_rounds([{"eval/win_rate": 0.5}], path)
  with pytest.raises(ValueError, match="at least one row"):
    win_rates.plot_rounds([], path)
