"""Offline preference worlds with closed-form optima: DPO, IPO, LD-DPO, T-REG.

The "KL world": two prompts with 5 and 4 responses of 2 to 4 tokens (shared prefixes,
branching at different depths), a non-uniform reference π_ref and rewards r(x, y) drawn once
from a fixed seed. Pairs (a, b) are drawn from π_ref ⊗ π_ref and labelled a ≻ b with the
Bradley-Terry probability σ(r_a − r_b); every ordered pair enters the exact expected loss
with its probability as pair weight. DPO's population optimum is then the KL-regularised
reward maximiser π_ref exp(r/β)/Z (Rafailov et al. 2023, Eq. 4 and §5).
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

import algorithms
from algorithms import dpo as _dpo  # noqa: F401  (registers dpo, ipo)
from algorithms import ld_dpo as _ld_dpo  # noqa: F401
from algorithms import t_reg as _t_reg  # noqa: F401
from verification import games, tabular
from verification.common import WorldResult, adam, loss_config, pair_inputs

EOS = 0
BETA = 0.5
TV_TOLERANCE = 0.02


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


class KLWorld:
  """Prompts with finite response sets, π_ref, rewards and the exact labelled-pair weights.

  Defaults: the two-prompt world of the module docstring with π_ref and r drawn from `seed`.
  `ref` [R] (normalised per prompt) and `reward` [R] override the draws; `win_prob(a, b)`
  overrides the Bradley-Terry labels σ(r_a − r_b). Pairs are drawn from π_ref ⊗ π_ref, or
  with probability `pair_prob(a, b)` (the data collection) where given.
  """

  RESPONSES = [
      [(1, EOS), (2, EOS), (2, 3, EOS), (2, 4, EOS), (5, 6, 7, EOS)],
      [(1, EOS), (1, 2, EOS), (3, 4, EOS), (3, 5, 6, EOS)],
  ]

  def __init__(self, seed: int = 0, responses=None, ref=None, reward=None, win_prob=None,
               pair_prob=None):
    rng = np.random.default_rng(seed)
    self.space = sp = tabular.build_space(responses or self.RESPONSES)
    drawn_ref = rng.uniform(0.5, 2.0, sp.num_responses)
    drawn_reward = rng.uniform(0.0, 2.0, sp.num_responses)
    self.ref = tabular.normalize_per_prompt(sp, drawn_ref if ref is None else ref)
    self.reward = drawn_reward if reward is None else np.asarray(reward, np.float64)
    self.ref_logits = tabular.logits_for(sp, self.ref)
    self.ref_tokens = tabular.token_log_probs(sp, jnp.asarray(self.ref_logits, jnp.float32))
    if win_prob is None:
      win_prob = lambda a, b: sigmoid(self.reward[a] - self.reward[b])
    if pair_prob is None:
      pair_prob = lambda a, b: self.ref[a] * self.ref[b]
    self.pairs = tabular.labelled_pairs(sp, win_prob, pair_prob)

  def kl_optimum(self, beta: float, reward=None) -> np.ndarray:
    reward = self.reward if reward is None else reward
    out = np.zeros(self.space.num_responses)
    for x in range(self.space.num_prompts):
      rows = self.space.rows(x)
      out[rows] = games.kl_optimum(self.ref[rows], reward[rows], beta)
    return out

  def objective(self, loss_name: str, cfg, extra_fields=None) -> Callable:
    """θ (tabular logits [E]) -> the loss's exact expected value over `self.pairs`."""
    loss = algorithms.get_loss(loss_name)
    extra_fields = extra_fields or {}

    def objective(theta):
      tok = tabular.token_log_probs(self.space, theta)
      return loss(pair_inputs(self.space, self.pairs, tok, ref=self.ref_tokens,
                              **extra_fields), cfg)[0]
    return objective

  def fit(self, loss_name: str, cfg, extra_fields=None, steps: int = 3000,
          learning_rate: float = 0.1, optimizer: Callable = adam) -> np.ndarray:
    """Minimises the exact expected loss from π = π_ref; returns the learned π [R].

    `optimizer(objective, params, steps=, learning_rate=)` -> (params, values), `adam` by
    default (`gradient_descent` where a world asks where plain gradient flow lands)."""
    objective = self.objective(loss_name, cfg, extra_fields)
    theta = jax.jit(lambda t: optimizer(objective, t, steps=steps,
                                        learning_rate=learning_rate)[0])(
        jnp.asarray(self.ref_logits, jnp.float32))
    return tabular.probs_np(self.space, theta)


def _labels(space: tabular.TreeSpace) -> list[str]:
  return [f"x{x}:" + "-".join(str(t) for t in y) for x, ys in enumerate(space.responses)
          for y in ys]


def _bars(title: str, space, **series) -> dict:
  return {"kind": "bars", "title": title, "labels": _labels(space),
          "series": {k: [float(v) for v in vals] for k, vals in series.items()}}


def _tv_result(algorithm, world, space, learned, target, note, title, **extra) -> WorldResult:
  tv = tabular.total_variation(space, learned, target)
  return WorldResult(algorithm, world, "total_variation", tv, 0.0, TV_TOLERANCE, "at_most",
                     note=note, plot=_bars(title, space, learned=learned, target=target,
                                           **extra))


# ---------------------------------------------------------------------------------------


def dpo_worlds() -> Iterator[WorldResult]:
  """DPO with BT labels reaches π_ref exp(r/β)/Z: TV ≤ 0.02."""
  world = KLWorld()
  cfg = loss_config("dpo", beta=BETA)
  learned = world.fit("dpo", cfg)
  target = world.kl_optimum(BETA)
  yield _tv_result("dpo", "bt_kl_optimum", world.space, learned, target,
                   f"β={BETA}; pairs ~ π_ref⊗π_ref, P(a≻b)=σ(r_a−r_b); target π_ref·e^(r/β)/Z",
                   "DPO: learned π vs KL optimum", reference=world.ref)


def ipo_worlds() -> Iterator[WorldResult]:
  """IPO (summed log-probs, the paper's form) reaches its own optimum: TV ≤ 0.02.

  The target is the least-squares solution of IPO's population loss (games.ipo_optimum), a
  linear solve that shares no code with the loss.
  """
  world = KLWorld()
  cfg = loss_config("ipo", beta=BETA, ipo_average_logps=False)
  learned = world.fit("ipo", cfg)
  sp, pairs = world.space, world.pairs
  target = np.zeros(sp.num_responses)
  for x in range(sp.num_prompts):
    rows = sp.rows(x)
    sel = sp.prompt_of[pairs.chosen] == x
    target[rows] = games.ipo_optimum(world.ref[rows], pairs.chosen[sel] - rows[0],
                                     pairs.rejected[sel] - rows[0], pairs.weights[sel], BETA)
  kl_target = world.kl_optimum(BETA)
  yield _tv_result("ipo", "ipo_optimum", sp, learned, target,
                   f"τ=β={BETA}, summed log-probs; target: weighted least-squares solve of "
                   f"the population loss (TV to DPO's KL optimum for contrast: "
                   f"{tabular.total_variation(sp, target, kl_target):.3f})",
                   "IPO: learned π vs its least-squares optimum", dpo_optimum=kl_target)


# LD-DPO's length world: an answer token (correct or wrong), then 0-2 elaboration tokens
# from {e1, e2} that carry no reward, then EOS; π_ref uniform at every node. Labels:
# P(a ≻ b) = σ(r_a − r_b + b·(n_a − n_b)), a reward plus a bias toward longer responses.
CORRECT, WRONG, E1, E2 = 1, 2, 3, 4
LENGTH_BIAS = 0.5
LD_ALPHA = 0.5  # the paper's and TRL's suggested α
LD_DRIFT_RATIO = 1 / 3  # the criterion: |LD-DPO's length drift| ≤ ⅓ of DPO's


def ld_drift_result(world: str, apply_to_ref: bool, ratio: float, *, note: str, plot,
                    shortfall: str) -> WorldResult:
  """The judged result of an LD-DPO length world: drift_LD / drift_DPO within ±⅓ of 0.

  `world` names it; the policy-only form (`ld_apply_to_ref=False`) gets a suffix."""
  return WorldResult("ld_dpo", world + ("" if apply_to_ref else "_policy_only_ld"),
                     "drift_ratio_ld_over_dpo", ratio, 0.0, LD_DRIFT_RATIO, "within",
                     note=note, plot=plot, expected_shortfall=shortfall)


def _length_world_responses(max_extra: int = 2):
  ys = []
  for answer in (CORRECT, WRONG):
    for k in range(max_extra + 1):
      for fill in np.ndindex(*([2] * k)):
        ys.append((answer,) + tuple(E1 + f for f in fill) + (EOS,))
  return [ys]


def ld_dpo_worlds() -> Iterator[WorldResult]:
  """LD-DPO (α = 0.5, the paper's suggestion): the KL optimum where it must equal DPO, and
  the length drift on length-biased labels.

  Length world (designed before it was run, not tuned): one prompt, an answer token
  (correct r = 1, wrong r = 0), 0-2 elaboration tokens from {e1, e2} and EOS, π_ref uniform
  at every node; P(a ≻ b) = σ(r_a − r_b + 0.5·(n_a − n_b)), β = 1. Drift = E_π[n] −
  E_π*[n] with π* = π_ref e^(r/β)/Z the length-neutral optimum; the criterion asks LD-DPO's
  drift to be within a third of DPO's. Both `ld_apply_to_ref` settings are run.

  What to expect (and what is measured): two distinct responses of a prefix-free set part
  at a position ≤ min(n_w, n_l) = l_p, so in a policy that can fit every conditional the
  decision to continue rather than stop always lies in LD-DPO's fully weighted shared part;
  only the choices after l_p are down-weighted. With the reference weighted alike
  (TRL HEAD) LD-DPO's optimum keeps DPO's drift; with policy-only weighting (TRL ≤ 0.28,
  LlamaFactory) the unweighted reference tail adds (1 − α)·|log π_ref(tail)| to the
  longer response's implicit reward, which explains part of the length preference without
  moving the policy. Whether LD-DPO's effect on real models comes from parameters shared
  across positions (which a tabular policy does not have) is not tested here.
  """
  # 1. Equal-length responses: every pair's shared length is the whole response, so LD-DPO
  #    is DPO and must reach the KL optimum.
  world = KLWorld(seed=1, responses=[[(1, 3, EOS), (1, 4, EOS), (2, 3, EOS), (2, 5, EOS)],
                                     [(1, 2, EOS), (3, 4, EOS), (3, 5, EOS)]])
  cfg = loss_config("ld_dpo", beta=BETA, ld_alpha=LD_ALPHA)
  learned = world.fit("ld_dpo", cfg)
  yield _tv_result(
      "ld_dpo", "equal_length_kl_optimum", world.space, learned, world.kl_optimum(BETA),
      f"α={LD_ALPHA}, β={BETA}; all responses 3 tokens, so l_p = n and LD-DPO = DPO",
      "LD-DPO (equal lengths): learned π vs KL optimum")

  # 2. Length-biased labels.
  beta = 1.0
  space = tabular.build_space(_length_world_responses())
  n = space.lengths.astype(np.float64)
  reward = np.array([1.0 if y[0] == CORRECT else 0.0 for y in space.responses[0]])
  uniform_ref = np.exp(np.asarray(tabular.sequence_log_probs(space, jnp.zeros(space.num_edges))))
  world = KLWorld(responses=_length_world_responses(), ref=uniform_ref, reward=reward,
                  win_prob=lambda a, b: sigmoid(reward[a] - reward[b]
                                                + LENGTH_BIAS * (n[a] - n[b])))
  neutral = world.kl_optimum(beta)
  biased = world.kl_optimum(beta, world.reward + LENGTH_BIAS * n)
  length = lambda p: float(p @ n)
  dpo_policy = world.fit("dpo", loss_config("dpo", beta=beta))
  dpo_drift = length(dpo_policy) - length(neutral)
  for apply_to_ref in (True, False):
    cfg = loss_config("ld_dpo", beta=beta, ld_alpha=LD_ALPHA, ld_apply_to_ref=apply_to_ref)
    ld_policy = world.fit("ld_dpo", cfg)
    ld_drift = length(ld_policy) - length(neutral)
    ratio = ld_drift / dpo_drift
    shortfall = ""
    if abs(ratio) > LD_DRIFT_RATIO:
      shortfall = (
          "In an exactly fitted autoregressive policy the length decision (EOS vs. one more "
          "token) sits at position ≤ l_p of every pair, inside LD-DPO's shared part, so "
          "down-weighting the tail cannot remove the drift"
          + ("" if apply_to_ref else "; the policy-only form removes part of it through the "
             "unweighted reference tail, a bonus (1−α)·|log π_ref(tail)| for long responses"))
    yield ld_drift_result(
        "length_bias_drift", apply_to_ref, ratio,
        note=(f"α={LD_ALPHA}, β={beta}, ld_apply_to_ref={apply_to_ref}, length bias "
              f"b={LENGTH_BIAS}/token; E[len]: neutral optimum {length(neutral):.3f}, "
              f"DPO {length(dpo_policy):.3f} (drift {dpo_drift:+.3f}; DPO's own optimum "
              f"{length(biased):.3f}), LD-DPO {length(ld_policy):.3f} (drift {ld_drift:+.3f})"),
        plot={"kind": "bars", "title": "Length drift: E_π[length] − E_π*[length]"
                                       + ("" if apply_to_ref else " (policy-only LD)"),
              "labels": ["DPO", f"LD-DPO α={LD_ALPHA}", "⅓ of DPO's (criterion)"],
              "series": {"drift (tokens)": [dpo_drift, ld_drift, dpo_drift / 3]}},
        shortfall=shortfall)


# ---------------------------------------------------------------------------------------
# T-REG.

# The credit world: a style token P or Q that carries no reward, then the deciding answer
# token C (correct, r = 1) or W (r = 0). The reference answers correctly more often after P
# (0.8) than after Q (0.2), so the KL optimum, and DPO, also favour P: part of the implicit
# reward lands on the style token although the answer decides.
STYLE_P, STYLE_Q, ANSWER_C, ANSWER_W = 1, 2, 3, 4


def t_reg_worlds() -> Iterator[WorldResult]:
  """T-REG = DPO + α·sg(σ(−βh))·(L_REG(y_w) + L_REG(y_l)), L_REG = −Σ_t β r̂_t log π_t.

  1. r̂ ≡ 0: the regulariser vanishes, so T-REG must reach DPO's KL optimum (TV ≤ 0.02).
  2. Credit world (module constants above): the answer token decides the reward, the style
     token does not, but π_ref correlates them, so DPO's optimum also puts implicit reward
     β log π/π_ref on the style token (P up, Q down). With r̂ = ±0.4 on the answer token and
     0 elsewhere (what contrastive prompting should give), the regulariser raises C and
     lowers W after both styles, which shrinks the style token's share. Stated effect: the
     share of the implicit token-reward gaps carried by the answer token is larger under
     T-REG than under DPO (value = share_T-REG − share_DPO ≥ 0); both shares and gaps are
     reported. The stop-gradient weight makes T-REG a semi-gradient method without a closed
     form optimum, so this world checks a direction, not a point.
  """
  # 1. Token rewards 0: the regulariser vanishes and T-REG is DPO.
  world = KLWorld()
  cfg = loss_config("t_reg", beta=BETA, t_reg_alpha=0.25)
  zeros = jnp.zeros_like(world.ref_tokens)
  learned = world.fit("t_reg", cfg, extra_fields=_token_reward_fields(world, zeros))
  yield _tv_result(
      "t_reg", "zero_token_rewards_kl_optimum", world.space, learned, world.kl_optimum(BETA),
      f"α=0.25, β={BETA}, r̂ ≡ 0: L = L_DPO, target π_ref·e^(r/β)/Z",
      "T-REG with r̂ = 0: learned π vs KL optimum")

  # 2. Informative token rewards on the deciding token.
  responses = [[(s, a, EOS) for s in (STYLE_P, STYLE_Q) for a in (ANSWER_C, ANSWER_W)]]
  reward = np.array([1.0 if y[1] == ANSWER_C else 0.0 for y in responses[0]])
  # π_ref(s, a) = ½ · π_ref(a | s): C after P with 0.8, after Q with 0.2.
  ref = np.array([0.5 * (0.8 if (y[0] == STYLE_P) == (y[1] == ANSWER_C) else 0.2)
                  for y in responses[0]])
  world = KLWorld(responses=responses, ref=ref, reward=reward)
  sp = world.space
  r_hat = np.zeros(sp.mask.shape, np.float32)  # r̂ = ±0.4 on the answer token, 0 elsewhere
  for r, y in enumerate(sp.responses[0]):
    r_hat[r, 1] = 0.4 if y[1] == ANSWER_C else -0.4
  alpha = 0.25
  dpo_policy = world.fit("dpo", loss_config("dpo", beta=BETA))
  treg_policy = world.fit("t_reg", loss_config("t_reg", beta=BETA, t_reg_alpha=alpha),
                          extra_fields=_token_reward_fields(world, jnp.asarray(r_hat)))
  dpo_share, dpo_credit = _deciding_share(world, dpo_policy, BETA)
  treg_share, treg_credit = _deciding_share(world, treg_policy, BETA)
  yield WorldResult(
      "t_reg", "deciding_token_credit", "deciding_share_gain_over_dpo", treg_share - dpo_share,
      0.0, 0.0, "at_least",
      note=(f"α={alpha}, β={BETA}, r̂ = ±0.4 on the answer token; share of the implicit token "
            f"reward gap on the deciding token: DPO {dpo_share:.3f}, T-REG {treg_share:.3f} "
            f"(style-token gap |β log π/π_ref(P) − (Q)|: DPO {dpo_credit[0]:.3f}, T-REG "
            f"{treg_credit[0]:.3f}; answer-token gap: DPO {dpo_credit[1]:.3f}, T-REG "
            f"{treg_credit[1]:.3f})"),
      plot={"kind": "bars", "title": "T-REG: implicit token-reward gaps (style vs answer)",
            "labels": ["style token P−Q", "answer token C−W"],
            "series": {"DPO": list(dpo_credit), f"T-REG α={alpha}": list(treg_credit)}})


def _token_reward_fields(world: KLWorld, r_hat) -> dict:
  pairs = world.pairs
  return {"chosen_token_rewards": r_hat[jnp.asarray(pairs.chosen)],
          "rejected_token_rewards": r_hat[jnp.asarray(pairs.rejected)]}


def _deciding_share(world: KLWorld, policy: np.ndarray, beta: float):
  """Share of the implicit token-reward gaps carried by the answer token.

  Style gap: |β log π/π_ref(P) − β log π/π_ref(Q)| at the first token. Answer gap: the mean
  over both styles of β log π/π_ref(C|s) − β log π/π_ref(W|s). Share = answer/(style+answer).
  """
  sp = world.space
  tok = np.asarray(tabular.token_log_probs(sp, jnp.asarray(tabular.logits_for(sp, policy),
                                                           jnp.float32)))
  ratio = beta * (tok - np.asarray(world.ref_tokens))  # [R, T]
  by = {y[:2]: r for r, y in enumerate(sp.responses[0])}
  style = abs(ratio[by[(STYLE_P, ANSWER_C)], 0] - ratio[by[(STYLE_Q, ANSWER_C)], 0])
  answer = np.mean([ratio[by[(s, ANSWER_C)], 1] - ratio[by[(s, ANSWER_W)], 1]
                    for s in (STYLE_P, STYLE_Q)])
  return float(answer / (style + answer)), (float(style), float(answer))
