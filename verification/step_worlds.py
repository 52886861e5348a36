"""Multi-step worlds with outcome labels only: the implicit PRM and PRIME.

A response is S = 3 reasoning steps, each a choice token, correct (C) or wrong (E), followed
by a step separator (the step's last token, marked in `step_ends`); 2^3 = 8 responses per
prompt, 6 tokens each. The outcome is correct iff every step is. The reference π_ref picks C
at step k of prompt x with a fixed probability p[x, k] (the step's "difficulty").
"""

from __future__ import annotations

from typing import Iterator

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import algorithms
from algorithms import implicit_prm
from algorithms import prime as prime_module
from algorithms.base import LossInputs
from verification import games, tabular
from verification.common import (WorldResult, adam, garbage_padded, loss_config,
                                       normalized_weights)

C, E, SEP = 1, 2, 3
NUM_STEPS = 3


class StepWorld:
  """Prompts × 8 three-step responses; `p_correct[x, k]` = π_ref(C at step k | prompt x)."""

  def __init__(self, p_correct):
    self.p_correct = np.asarray(p_correct, np.float64)
    choices = list(itertools.product((C, E), repeat=NUM_STEPS))
    responses = [[tuple(t for c in ch for t in (c, SEP)) for ch in choices]
                 for _ in range(len(self.p_correct))]
    self.space = sp = tabular.build_space(responses)
    self.steps = np.array([[y[2 * k] == C for k in range(NUM_STEPS)]
                           for ys in sp.responses for y in ys])  # [R, S] step correct
    self.labels = self.steps.all(-1).astype(np.float32)  # [R]
    ref = np.array([np.prod([p[k] if ok else 1 - p[k] for k, ok in enumerate(row)])
                    for p, row in zip(self.p_correct[sp.prompt_of], self.steps)])
    self.ref = ref
    self.ref_logits = tabular.logits_for(sp, ref)
    self.ref_tokens = tabular.token_log_probs(sp, jnp.asarray(self.ref_logits, jnp.float32))
    self.step_ends = np.zeros(sp.mask.shape, np.float32)
    self.step_ends[:, 1::2] = 1.0  # the separators

  def expected_outcome(self, probs: np.ndarray) -> float:
    """Mean over prompts of E_{y∼π(·|x)}[label(y)], exact."""
    per_prompt = np.zeros(self.space.num_prompts)
    np.add.at(per_prompt, self.space.prompt_of, probs * self.labels)
    return float(per_prompt.mean())


# ---------------------------------------------------------------------------------------
# Implicit PRM.

PRM_BETA = 0.05  # the official training β


def implicit_prm_worlds() -> Iterator[WorldResult]:
  """Train the implicit PRM on outcome labels only, with the CE and the DPO objective.

  CE: every response once, weighted by its probability under π_ref (the data distribution),
  label = outcome. DPO: every (correct, wrong) pair of a prompt, weighted π_ref(y_w)π_ref(y_l).
  Step rewards r_k = q_{t_k} − q_{t_{k−1}}, q_t = β Σ_{i≤t} log π/π_ref (implicit_prm's
  `token_rewards` and `step_rewards`).

  Judged: AUC of the step rewards, correct steps vs wrong steps, over the steps whose earlier
  steps are all correct (the steps that decide whether the outcome can still be correct).
  Steps after a first error cannot be ranked from outcome labels at all (every continuation
  has label 0, so the data say nothing about them). The note also reports the AUC with
  value labels (good iff the prefix can still end correct: Math-Shepherd's labels, which the
  implicit PRM's q, a soft value, targets) and the AUC over all steps by per-step
  correctness, which includes the unidentifiable steps.
  """
  world = StepWorld([[0.7, 0.5, 0.6], [0.4, 0.8, 0.5]])
  sp = world.space
  loss = algorithms.get_loss("implicit_prm")
  mask = jnp.asarray(sp.mask)
  for objective_name in ("ce", "dpo"):
    cfg = loss_config("implicit_prm", beta=PRM_BETA, prm_objective=objective_name)
    if objective_name == "ce":
      rows = np.arange(sp.num_responses)

      def objective(theta, rows=jnp.asarray(rows)):
        tok = garbage_padded(sp, tabular.token_log_probs(sp, theta))
        inputs = LossInputs(
            policy_chosen_logps=tok[rows], policy_rejected_logps=None,
            chosen_mask=mask[rows], rejected_mask=None,
            ref_chosen_logps=garbage_padded(sp, world.ref_tokens)[rows],
            targets={"chosen_label": jnp.asarray(world.labels)[rows]},
            pair_weights=normalized_weights(world.ref[rows]))
        return loss(inputs, cfg)[0]
    else:
      pairs = [(a, b) for x in range(sp.num_prompts) for a in sp.rows(x) for b in sp.rows(x)
               if world.labels[a] == 1 and world.labels[b] == 0]
      ca, cb = (jnp.asarray(v) for v in zip(*pairs))
      weights = np.array([world.ref[a] * world.ref[b] for a, b in pairs])

      def objective(theta, ca=ca, cb=cb, weights=weights):
        tok = garbage_padded(sp, tabular.token_log_probs(sp, theta))
        ref = garbage_padded(sp, world.ref_tokens)
        inputs = LossInputs(
            policy_chosen_logps=tok[ca], policy_rejected_logps=tok[cb],
            chosen_mask=mask[ca], rejected_mask=mask[cb],
            ref_chosen_logps=ref[ca], ref_rejected_logps=ref[cb],
            pair_weights=normalized_weights(weights))
        return loss(inputs, cfg)[0]

    theta, trace = jax.jit(lambda t: adam(objective, t, steps=2000, learning_rate=0.1))(
        jnp.asarray(world.ref_logits, jnp.float32))
    tok = tabular.token_log_probs(sp, theta)
    token_r = implicit_prm.token_rewards(tok, world.ref_tokens, mask, PRM_BETA)
    _, singles, valid = implicit_prm.step_rewards(token_r, jnp.asarray(world.step_ends), mask,
                                                  max_steps=NUM_STEPS)
    singles = np.asarray(singles, np.float64)
    assert np.asarray(valid).all()
    clean, after_error = _step_items(world, singles)
    auc = games.auc(*clean)
    auc_all = games.auc(np.concatenate([clean[0], after_error[0]]),
                        np.concatenate([clean[1], after_error[1]]))
    auc_value = games.auc(clean[0], np.concatenate([clean[1], *after_error]))
    means = [float(np.mean(clean[0])), float(np.mean(clean[1])),
             float(np.mean(np.concatenate(after_error)))]
    yield WorldResult(
        "implicit_prm", f"{objective_name}_step_auc", "step_reward_auc", auc, 1.0, 0.1,
        "at_least",
        note=(f"β={PRM_BETA}, prm_objective={objective_name}, 2 prompts × 8 responses, "
              f"3 steps; {len(clean[0])} correct vs {len(clean[1])} first-wrong steps (unique "
              f"prefixes); mean step reward: correct {means[0]:+.4f}, first wrong "
              f"{means[1]:+.4f}, after an error {means[2]:+.4f}; AUC with value labels (a step "
              f"is good iff its prefix can still end correct, as Math-Shepherd) "
              f"{auc_value:.3f}; AUC over all steps by per-step correctness {auc_all:.3f} "
              f"(steps after an error are not identifiable from outcome labels)"),
        plot={"kind": "bars", "title": f"Implicit PRM ({objective_name}): mean step reward",
              "labels": ["correct step", "first wrong step", "step after an error"],
              "series": {"mean step reward": means}})


def _step_items(world: StepWorld, singles: np.ndarray):
  """Step rewards of unique (prompt, prefix) steps, split by clean/after-error prefix.

  Returns ((correct, wrong) on clean prefixes, (correct, wrong) after an earlier error).
  """
  seen = set()
  clean = ([], [])
  after = ([], [])
  for r in range(world.space.num_responses):
    steps = world.steps[r]
    for k in range(NUM_STEPS):
      key = (int(world.space.prompt_of[r]), tuple(steps[:k + 1]))
      if key in seen:
        continue
      seen.add(key)
      bucket = clean if steps[:k].all() else after
      bucket[0 if steps[k] else 1].append(singles[r, k])
  return tuple(map(np.asarray, clean)), tuple(map(np.asarray, after))


# ---------------------------------------------------------------------------------------
# PRIME.

PRIME_ROUNDS = 200
PRIME_SAMPLES = 4  # K responses per prompt per round
PRIME_MARGIN = 0.3  # required rise of the exact expected outcome reward
PRIME_LR = 0.05


def prime_worlds() -> Iterator[WorldResult]:
  """PRIME online: sample K responses per prompt from π (seeded), verifier labels, implicit
  process rewards from the PRM before its update (`update=after`), one PRM step on the CE
  loss (`prm_update_loss`, β_train = prm_beta), RLOO advantages of process + outcome
  rewards (`prime_advantages`, the official "code" baseline), one PPO-clip step of the
  registered `prime` loss against the old log-probs (ratio 1 at the step, as officially).
  Policy and PRM both start at π_ref (the SFT model), which stays the PRM's reference.
  Judged: the exact expected outcome reward E_π[label] (by enumeration) must rise by at
  least PRIME_MARGIN over PRIME_ROUNDS rounds. No accuracy filter (all prompts are kept).
  """
  world = StepWorld([[0.7, 0.5, 0.6], [0.4, 0.8, 0.5], [0.5, 0.5, 0.5], [0.8, 0.3, 0.7]])
  sp = world.space
  cfg = loss_config("prime")
  loss = algorithms.get_loss("prime")
  k = PRIME_SAMPLES
  mask = jnp.asarray(sp.mask)
  labels_all = jnp.asarray(world.labels)
  ref_tok = world.ref_tokens
  offsets = jnp.asarray(sp.offsets[:-1])
  per_prompt = int(np.diff(sp.offsets)[0])  # 8 responses per prompt
  prompt_of = jnp.asarray(sp.prompt_of)
  opt = optax.adam(PRIME_LR)

  def expected(theta):
    probs = jnp.exp(tabular.sequence_log_probs(sp, theta))
    return jnp.sum(probs * labels_all) / sp.num_prompts

  def one_round(carry, key):
    theta, phi, opt_theta, opt_phi = carry
    # 1. Rollout: K samples per prompt, grouped consecutively.
    seq = tabular.sequence_log_probs(sp, theta).reshape(sp.num_prompts, per_prompt)
    picks = jax.random.categorical(key, seq, axis=-1, shape=(k, sp.num_prompts)).T  # [X, K]
    rows = (offsets[:, None] + picks).reshape(-1)  # [X·K]
    labels = labels_all[rows]
    m = mask[rows]
    ref = garbage_padded(sp, ref_tok)[rows]
    # 2. Implicit process rewards from the PRM's forward pass (before its update).
    prm_tok = garbage_padded(sp, tabular.token_log_probs(sp, phi))[rows]
    q = prime_module.implicit_process_rewards(prm_tok, ref, m)
    adv = prime_module.prime_advantages(q, m, labels, k, form=cfg.prime_rloo_form)
    # 3. PRM update on the same responses (CE, β_train).
    prm_loss = lambda p: prime_module.prm_update_loss(
        garbage_padded(sp, tabular.token_log_probs(sp, p))[rows], ref, m, labels,
        cfg.prm_beta)
    g_phi = jax.grad(prm_loss)(phi)
    up, opt_phi = opt.update(g_phi, opt_phi, phi)
    phi = optax.apply_updates(phi, up)
    # 4. Policy update: PPO-clip against the rollout policy's log-probs.
    old = jax.lax.stop_gradient(garbage_padded(sp, tabular.token_log_probs(sp, theta))[rows])

    def policy_loss(t):
      tok = garbage_padded(sp, tabular.token_log_probs(sp, t))[rows]
      inputs = LossInputs(policy_chosen_logps=tok, policy_rejected_logps=None,
                          chosen_mask=m, rejected_mask=None, prev_chosen_logps=old,
                          targets={"chosen_label": labels, "chosen_advantages": adv})
      return loss(inputs, cfg)[0]

    g_theta = jax.grad(policy_loss)(theta)
    up, opt_theta = opt.update(g_theta, opt_theta, theta)
    theta = optax.apply_updates(theta, up)
    return (theta, phi, opt_theta, opt_phi), (expected(theta), jnp.mean(labels))

  @jax.jit
  def run(theta0, key):
    carry = (theta0, theta0, opt.init(theta0), opt.init(theta0))
    (theta, phi, _, _), (curve, acc) = jax.lax.scan(
        one_round, carry, jax.random.split(key, PRIME_ROUNDS))
    return theta, curve, acc

  theta0 = jnp.asarray(world.ref_logits, jnp.float32)
  theta, curve, acc = run(theta0, jax.random.PRNGKey(0))
  start = world.expected_outcome(world.ref)
  end = world.expected_outcome(tabular.probs_np(sp, theta))
  curve = [start] + np.asarray(curve, np.float64).tolist()
  yield WorldResult(
      "prime", "expected_outcome_reward", "rise_of_expected_outcome_reward", end - start,
      PRIME_MARGIN, 0.0, "at_least",
      note=(f"{sp.num_prompts} prompts × {k} samples/round, {PRIME_ROUNDS} rounds, Adam lr "
            f"{PRIME_LR} (policy and PRM, one step each per round), ppo_clip={cfg.ppo_clip}, "
            f"prm_beta={cfg.prm_beta}, RLOO form {cfg.prime_rloo_form!r}, seed 0; "
            f"E[outcome] {start:.3f} → {end:.3f}"),
      plot={"kind": "curves", "title": "PRIME: exact expected outcome reward",
            "xlabel": "round", "ylabel": "E_π[outcome]", "logy": False,
            "x": list(range(len(curve))), "series": {"E_π[outcome]": curve}})
