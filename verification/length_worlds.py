"""LD-DPO's length world with a policy whose parameters are shared across positions.

Why this world exists. In `offline_worlds.ld_dpo_worlds` the policy is tabular: one free
logit per node of the response tree, so every conditional can be fitted on its own. There
the decision to stop or to go on always lies at a position ≤ l_p of every pair, inside
LD-DPO's fully weighted shared part, and LD-DPO keeps most of DPO's length drift. The
LD-DPO paper (Liu et al. 2024, arXiv 2409.06411) argues about language models, whose
per-token distributions share their weights across positions: the tail tokens of the longer
response then move the same parameters that decide length everywhere, and down-weighting
them (α < 1) is meant to remove the "verbosity" part of the preference. This world asks
whether that happens in the smallest model with that property.

Design (written down before the world was first run, and not tuned afterwards):

  * Responses, reference, rewards and labels are those of the tabular length world: one
    prompt; an answer token C (r = 1) or W (r = 0); then 0-2 elaboration tokens from {e1, e2}
    with no reward; then EOS (after two elaboration tokens EOS is forced). π_ref is uniform
    at every node. Pairs are drawn from π_ref ⊗ π_ref and labelled
    P(a ≻ b) = σ(r_a − r_b + 0.5·(n_a − n_b)); β = 1; n counts tokens including EOS.
  * Policy: per-token logits from a shared linear model with one weight per vocabulary
    token, the same at every position:

        log π(v | x, y_<t) = θ_v − logsumexp_{v' allowed after y_<t} θ_v',
        θ = (θ_EOS, θ_C, θ_W, θ_e1, θ_e2).

    The allowed tokens are the children of the node in the response tree, so the answer
    node uses θ_C, θ_W, and the nodes after zero and after one elaboration token share
    θ_EOS, θ_e1, θ_e2: the stop/continue decision has ONE parameter for every depth. θ = 0 is π_ref exactly. The length-neutral KL optimum π* = π_ref e^(r/β)/Z is in
    the family (θ_C − θ_W = 1/β, the rest 0), so zero drift is attainable; DPO's own
    length-biased optimum π_ref e^((r + 0.5 n)/β)/Z is not (it wants a different stop
    probability at each depth), so DPO's drift here is that of the best fit within the
    family, measured, not assumed.
  * Training: the real registered `dpo` and `ld_dpo` losses on the exact expected loss
    (every ordered pair with its probability as pair weight, NaN under mask 0), Adam from
    θ = 0 as in the other worlds; the final gradient norm is reported as a convergence check.
  * Measured: drift = E_π[n] − E_π*[n]; criterion |drift_LD / drift_DPO| ≤ 1/3 at α = 0.5
    (the paper's and TRL's suggestion), for both `ld_apply_to_ref` settings, as in the
    issue. α = 0.25 and α = 0 are reported in the notes as information only.

What the design cannot settle in advance: with one stop parameter, per-token log-ratios are
d = log(p/p_ref) for a stop and c = log((1−p)/(1−p_ref)) for a continuation, and a pair's
implicit-reward difference under DPO (length 3 vs 2: c; 4 vs 2: 2c − d; 4 vs 3: c − d)
changes under LD-DPO in both directions (3 vs 2 gains a −(1−α)d term that makes the same
preference cheaper to express; 4 vs 2 loses (1−α)c, which makes it dearer; 4 vs 3 is
unchanged because the longer one's only tail token is the forced EOS). Which effect wins is
what the world measures.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

import algorithms
from algorithms import dpo as _dpo  # noqa: F401  (registers dpo)
from algorithms import ld_dpo as _ld_dpo  # noqa: F401
from verification import tabular
from verification.common import (WorldResult, adam, gradient_descent, loss_config,
                                       pair_inputs)
from verification.offline_worlds import (CORRECT, EOS, LD_ALPHA, LD_DRIFT_RATIO,
                                               LENGTH_BIAS, KLWorld, _length_world_responses,
                                               ld_drift_result, sigmoid)

BETA = 1.0
VOCAB = 5  # EOS, C, W, e1, e2 (token ids 0-4)
INFO_ALPHAS = (0.25, 0.0)  # reported in the notes, not judged


class SharedLengthWorld:
  """The tabular length world's pairs, scored by a 5-weight shared per-token policy."""

  def __init__(self):
    responses = _length_world_responses()
    self.space = sp = tabular.build_space(responses)
    self.n = sp.lengths.astype(np.float64)  # [R]
    self.reward = np.array([1.0 if y[0] == CORRECT else 0.0 for y in sp.responses[0]])
    # [E] vocabulary token of every edge of the response tree.
    edge_token = np.zeros(sp.num_edges, np.int32)
    for r, y in enumerate(sp.responses[0]):
      edge_token[sp.path[r, :len(y)]] = y
    self.edge_token = edge_token
    n, reward = self.n, self.reward
    ref = self.probs(np.zeros(VOCAB))
    self.world = KLWorld(responses=responses, ref=ref, reward=reward,
                         win_prob=lambda a, b: sigmoid(reward[a] - reward[b]
                                                       + LENGTH_BIAS * (n[a] - n[b])))
    self.ref_tokens = self.token_log_probs(jnp.zeros(VOCAB, jnp.float32))

  def token_log_probs(self, theta: jax.Array) -> jax.Array:
    """[R, T] log π(y_t | y_<t) with edge logit θ[token of the edge] (shared by position)."""
    return tabular.token_log_probs(self.space, theta[jnp.asarray(self.edge_token)])

  def probs(self, theta) -> np.ndarray:
    """[R] π(y) in float64."""
    return tabular.probs_np(self.space, np.asarray(theta, np.float64)[self.edge_token])

  def objective(self, loss_name: str, cfg):
    loss = algorithms.get_loss(loss_name)
    pairs = self.world.pairs
    return lambda theta: loss(pair_inputs(self.space, pairs, self.token_log_probs(theta),
                                          ref=self.ref_tokens), cfg)[0]

  def fit(self, loss_name: str, cfg, steps: int = 3000, learning_rate: float = 0.1):
    """Minimises the exact expected loss from θ = 0; returns (θ [5], final ‖∇‖)."""
    objective = self.objective(loss_name, cfg)
    theta = jax.jit(lambda t: adam(objective, t, steps=steps, learning_rate=learning_rate)[0])(
        jnp.zeros(VOCAB, jnp.float32))
    grad_norm = float(jnp.linalg.norm(jax.grad(objective)(theta)))
    return np.asarray(theta, np.float64), grad_norm

  def expected_length(self, probs: np.ndarray) -> float:
    return float(probs @ self.n)


def shared_parameter_length_worlds() -> Iterator[WorldResult]:
  """LD-DPO vs DPO length drift with a shared per-token policy (module docstring)."""
  w = SharedLengthWorld()
  neutral = w.world.kl_optimum(BETA)
  neutral_len = w.expected_length(neutral)
  tabular_dpo_len = w.expected_length(w.world.kl_optimum(BETA, w.reward + LENGTH_BIAS * w.n))
  dpo_theta, dpo_grad = w.fit("dpo", loss_config("dpo", beta=BETA))
  dpo_len = w.expected_length(w.probs(dpo_theta))
  dpo_drift = dpo_len - neutral_len

  for apply_to_ref in (True, False):
    drifts, grads, thetas = {}, {}, {}
    for alpha in (LD_ALPHA,) + INFO_ALPHAS:
      cfg = loss_config("ld_dpo", beta=BETA, ld_alpha=alpha, ld_apply_to_ref=apply_to_ref)
      thetas[alpha], grads[alpha] = w.fit("ld_dpo", cfg)
      drifts[alpha] = w.expected_length(w.probs(thetas[alpha])) - neutral_len
    ld_drift = drifts[LD_ALPHA]
    ratio = ld_drift / dpo_drift
    info = ", ".join(f"α={a}: drift {drifts[a]:+.3f} (ratio {drifts[a] / dpo_drift:.3f})"
                     for a in INFO_ALPHAS)
    shortfall = ""
    if abs(ratio) > LD_DRIFT_RATIO:
      shortfall = (
          "Measured after the design was fixed: with one stop parameter shared by every "
          "position, LD-DPO's tail down-weighting makes a 3-vs-2 length preference cheaper "
          "to express and a 4-vs-2 one dearer (module docstring); "
          + ("with the reference weighted alike the measured net effect is nil: the drift "
             "stays at DPO's for α = 0.5, 0.25 and 0 (at α = 0 every pair's implicit-reward "
             "difference is c − d, the stop-vs-continue log-odds at the first position where "
             "the two differ, which lies inside the shared part)" if apply_to_ref else
             "with policy-only weighting the unweighted reference tail adds "
             "(1−α)·|log π_ref(tail)| to the longer response's implicit reward, which "
             "explains part of the label's length bias without moving the policy: about "
             "half of the drift at α = 0.5, nearly all of it at α = 0 (notes)"))
    stop = lambda t: float(np.exp(t[EOS]) / np.exp(t[[EOS, 3, 4]]).sum())
    yield ld_drift_result(
        "shared_params_length_drift", apply_to_ref, ratio,
        note=(f"policy: one logit per token shared by all positions; α={LD_ALPHA}, β={BETA}, "
              f"ld_apply_to_ref={apply_to_ref}, length bias b={LENGTH_BIAS}/token; E[len]: "
              f"neutral optimum {neutral_len:.3f}, DPO {dpo_len:.3f} (drift {dpo_drift:+.3f}; "
              f"the tabular DPO optimum {tabular_dpo_len:.3f}), LD-DPO "
              f"{neutral_len + ld_drift:.3f} (drift {ld_drift:+.3f}); P(stop) at depths 1-2: "
              f"π_ref 0.333, DPO {stop(dpo_theta):.3f}, LD-DPO {stop(thetas[LD_ALPHA]):.3f}. "
              f"Information only, not judged: {info}. Final ‖∇‖: DPO {dpo_grad:.1e}, LD-DPO "
              f"{max(grads.values()):.1e} (largest over α)"),
        plot={"kind": "bars",
              "title": "Shared-parameter policy: length drift"
                       + ("" if apply_to_ref else " (policy-only LD)"),
              "labels": ["DPO", "LD α=0.5", "LD α=0.25", "LD α=0", "⅓ of DPO's"],
              "series": {"drift (tokens)": [dpo_drift, drifts[0.5], drifts[0.25], drifts[0.0],
                                            dpo_drift / 3]}},
        shortfall=shortfall)


# ---------------------------------------------------------------------------------------
# Length-correlated data with length-neutral labels (pre-registered in docs/ld_dpo_length.md).

CORRELATED_KS = (2, 4)  # most elaboration tokens: the first length world's responses, and longer


class CorrelatedDataWorld:
  """Pairs whose correct response is strictly longer; labels σ(r_C − r_W), blind to length.

  Responses: answer C (r = 1) or W (r = 0), 0..K elaboration tokens from {e1, e2}, EOS;
  π_ref uniform at every node; the data draws {y_C, y_W} with probability ∝
  π_ref(y_C)·π_ref(y_W) among the pairs with n(y_C) > n(y_W). π* = π_ref·e^(r/β)/Z has
  implicit-reward difference 1 = r_C − r_W on every pair, so it minimises DPO's expected loss
  and, with the reference weighted alike, LD-DPO's; a tabular policy has a manifold of such
  minimisers, and the drift says where training from π_ref lands on it.
  """

  def __init__(self, max_extra: int):
    responses = _length_world_responses(max_extra)
    space = tabular.build_space(responses)
    self.n = n = space.lengths.astype(np.float64)  # [R]
    reward = np.array([1.0 if y[0] == CORRECT else 0.0 for y in space.responses[0]])
    ref = np.exp(np.asarray(tabular.sequence_log_probs(space, jnp.zeros(space.num_edges))))

    def collected(a, b):  # the correct one of the two is strictly longer
      correct, wrong = (a, b) if reward[a] > reward[b] else (b, a)
      return reward[correct] > reward[wrong] and n[correct] > n[wrong]

    self.world = KLWorld(responses=responses, ref=ref, reward=reward,
                         win_prob=lambda a, b: sigmoid(reward[a] - reward[b]),
                         pair_prob=lambda a, b: ref[a] * ref[b] * collected(a, b))
    self.target = self.world.kl_optimum(BETA)

  def drift(self, probs: np.ndarray) -> float:
    """E_π[n] − E_π*[n] (π*'s expected length is π_ref's)."""
    return float((probs - self.target) @ self.n)

  def stop_probs(self, probs: np.ndarray, answer: int) -> np.ndarray:
    """[K] P(EOS | answer, j elaboration tokens so far) for j = 0..K−1, summed over fills."""
    extra = self.n - 2  # elaboration tokens of each response
    of_answer = np.array([y[0] == answer for y in self.world.space.responses[0]])
    max_extra = int(extra.max())
    stop = [probs[of_answer & (extra == j)].sum() for j in range(max_extra)]
    reach = [probs[of_answer & (extra >= j)].sum() for j in range(max_extra)]
    return np.array(stop) / np.array(reach)

  def loss_and_grad_norm(self, loss_name: str, cfg, probs: np.ndarray) -> tuple[float, float]:
    """The exact expected loss at the policy `probs` [R] and its gradient's norm."""
    logits = jnp.asarray(tabular.logits_for(self.world.space, probs), jnp.float32)
    value, grad = jax.value_and_grad(self.world.objective(loss_name, cfg))(logits)
    return float(value), float(jnp.linalg.norm(grad))


def length_correlated_data_worlds() -> Iterator[WorldResult]:
  """LD-DPO vs DPO drift when the data, not the labels, carries the length bias.

  The LD-DPO paper's claim is that DPO's gradient direction is biased by the lengths in the
  data (Liu et al. 2024, arXiv 2409.06411, §3), so DPO drifts toward verbosity although the
  preference is about content; offline data whose chosen responses are longer is that case.
  Design, criterion and the prediction were fixed before the first run
  (docs/ld_dpo_length.md): K = 2 and 4, both `ld_apply_to_ref` settings, judged at α = 0.5
  with Adam as in every world; α = 0.25, 0 and plain gradient descent (20,000 steps of 1.0)
  are information only.
  """
  dpo_cfg = loss_config("dpo", beta=BETA)
  dpo_fits = {}  # K -> (world, {optimizer: DPO's learned π})
  for k in CORRELATED_KS:
    w = CorrelatedDataWorld(k)
    dpo_fits[k] = w, {"adam": w.world.fit("dpo", dpo_cfg),
                      "gd": w.world.fit("dpo", dpo_cfg, **_GD)}
  for apply_to_ref in (True, False):
    series = {}
    ld_cfg = lambda alpha: loss_config("ld_dpo", beta=BETA, ld_alpha=alpha,
                                       ld_apply_to_ref=apply_to_ref)
    for k in CORRELATED_KS:
      w, dpo = dpo_fits[k]
      dpo_drift = {opt: w.drift(p) for opt, p in dpo.items()}
      ld_adam = {alpha: w.world.fit("ld_dpo", ld_cfg(alpha))
                 for alpha in (LD_ALPHA,) + INFO_ALPHAS}
      ratios = {(alpha, "adam"): w.drift(p) / dpo_drift["adam"] for alpha, p in ld_adam.items()}
      ratios[LD_ALPHA, "gd"] = (w.drift(w.world.fit("ld_dpo", ld_cfg(LD_ALPHA), **_GD))
                                / dpo_drift["gd"])
      ratio = ratios[LD_ALPHA, "adam"]
      target_loss = {name: w.loss_and_grad_norm(name, c, w.target)[0]
                     for name, c in (("dpo", dpo_cfg), ("ld_dpo", ld_cfg(LD_ALPHA)))}
      dpo_loss, dpo_grad = w.loss_and_grad_norm("dpo", dpo_cfg, dpo["adam"])
      ld_loss, ld_grad = w.loss_and_grad_norm("ld_dpo", ld_cfg(LD_ALPHA), ld_adam[LD_ALPHA])
      series[f"K={k}"] = [dpo_drift["adam"]] + [w.drift(p) for p in ld_adam.values()]
      shortfall = ""
      if abs(ratio) > LD_DRIFT_RATIO:
        shortfall = (
            "Pre-registered world (docs/ld_dpo_length.md), measured once: "
            + ("every minimiser, DPO's and LD-DPO's at any α > 0, keeps π_ref's "
               "conditionals at the correct response's decisions after its first "
               "elaboration step (a correct response that stops there and one that goes on "
               "are paired with the same shorter wrong responses, and an implicit-reward "
               "difference of 1 on both pairs makes their log-ratios equal); DPO's drift "
               "comes from the first decision after the answer and from the wrong "
               "responses, all inside LD-DPO's fully weighted shared part, so α has "
               "nothing to act on" if apply_to_ref else
               "policy-only weighting makes the unweighted reference tail a bonus "
               "(1−α)·|log π_ref(tail)| for the longer, correct response, which shortens "
               "the policy by an amount set by π_ref's tail, not by the data's bias; here it "
               "overshoots past π*'s length or undershoots, depending on K and optimiser"))
      yield ld_drift_result(
          f"correlated_data_drift_k{k}", apply_to_ref, ratio,
          note=(f"labels blind to length, correct response always the longer one; K={k}, "
                f"α={LD_ALPHA}, β={BETA}, ld_apply_to_ref={apply_to_ref}; E_π*[len] "
                f"{w.target @ w.n:.3f}; drift (Adam): DPO {dpo_drift['adam']:+.3f}, LD-DPO "
                f"{w.drift(ld_adam[LD_ALPHA]):+.3f}; P(stop | C, j elaborations), j = "
                f"0..{k - 1}: π_ref 0.333 each, DPO "
                f"{np.round(w.stop_probs(dpo['adam'], CORRECT), 3).tolist()}, LD-DPO "
                f"{np.round(w.stop_probs(ld_adam[LD_ALPHA], CORRECT), 3).tolist()}. "
                f"Information only, not judged: ratio at α=0.25 {ratios[0.25, 'adam']:.3f}, "
                f"α=0 {ratios[0.0, 'adam']:.3f}; plain gradient descent: DPO drift "
                f"{dpo_drift['gd']:+.3f}, ratio at α={LD_ALPHA} "
                f"{ratios[LD_ALPHA, 'gd']:.3f}. Loss − π*'s loss: DPO "
                f"{dpo_loss - target_loss['dpo']:+.1e}, LD-DPO "
                f"{ld_loss - target_loss['ld_dpo']:+.1e}; final ‖∇‖: DPO {dpo_grad:.1e}, "
                f"LD-DPO {ld_grad:.1e}"),
          plot=None if k != CORRELATED_KS[-1] else {
              "kind": "bars",
              "title": "Length-correlated data: drift" + ("" if apply_to_ref
                                                          else " (policy-only LD)"),
              "labels": ["DPO", "LD α=0.5", "LD α=0.25", "LD α=0"],
              "series": series},
          shortfall=shortfall)


_GD = {"optimizer": gradient_descent, "steps": 20_000, "learning_rate": 1.0}
