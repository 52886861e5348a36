"""One online round: sample K responses per prompt, score them, build the training data.

    pairs = run_round(exp, params, key)        # data.pipeline.TokenizedPairs

The online algorithms (DNO, INPO, GPO, PRIME) train on responses of their own policy:

  1. sample: `config.online.num_prompts` prompts of the train split, K =
     `config.online.num_samples` responses each, from the policy the round starts from
     (`models.sampling`, temperature `config.online.temperature`, a KV cache);
  2. score: the built-in task's rule-based verifier: PRIME's outcome label is correctness
     (`data.synthetic.verify`, 1 or 0); the pairwise methods' oracle also grades wrong
     answers (`data.synthetic.score`, partial credit below ½) so that ties are rare; or,
     with `config.online.scorer = "gpm"`, a trained General Preference Model;
  3. build what the algorithm trains on, token ids kept as sampled (never re-tokenized):
       dno, inpo  the best and the worst response of each prompt by win-rate against the
                  other K−1 (DNO-Prct, Rosset et al. 2024, Alg. 2; INPO's oracle-labelled
                  pairs), prompts without a strict winner dropped;
       gpo        the GPO / SPPO selection and targets (`algorithms.gpo.gpo_targets`) of
                  the score table s(i ≻ j) = r_i − r_j;
       prime      every response as its own row with its verifier label and PRIME's
                  advantages (`algorithms.prime.prime_advantages`), prompts kept when
                  their accuracy lies in `config.online.accuracy_range` (PRIME's filter).

The round's samples, scores and data are written to WORKDIR/online/round_0.json, so a
resumed run trains on exactly the same data. The multi-round loop (moving π_t, a new
round's checkpoint per round) is `experiments/iterate.py`'s job, a later issue.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data import synthetic
from data.errors import DataError
from data.pipeline import TokenizedPair, TokenizedPairs
from training.step import pair_logps

ONLINE_ALGORITHMS = ("dno", "inpo", "gpo", "prime")


def round_prompts(source, tokenizer, num_prompts: int, seed: int) -> list[tuple[str, list]]:
  """(text, [bos] + ids) of `num_prompts` distinct prompts of `source`, a seeded choice."""
  order = np.random.default_rng(seed).permutation(len(source))
  prompts, seen = [], set()
  bos = [] if tokenizer.bos_id is None else [int(tokenizer.bos_id)]
  for index in order:
    text = source[int(index)]["prompt"]
    if text not in seen:
      seen.add(text)
      prompts.append((text, bos + list(tokenizer.encode(text))))
    if len(prompts) == num_prompts:
      break
  return prompts


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[N, P] ids and attention mask, each row right-aligned."""
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = r
    mask[i, width - len(r):] = 1
  return ids, mask


def sample_responses(graphdef, params, prompts, tokenizer, config, key) -> list[list[list[int]]]:
  """K sampled completions (token ids, eos included when emitted) for each prompt."""
  from models import sampling  # local: the sampler is only needed by online runs
  from flax import nnx

  k = config.online.num_samples
  rows = [ids for _, ids in prompts for _ in range(k)]  # prompt i -> rows i*K .. i*K+K-1
  ids, mask = left_padded(rows, tokenizer.pad_id)
  model = nnx.merge(graphdef, params)
  tokens, completion_mask, _ = sampling.sample(
      model, ids, mask, key=key, max_new_tokens=config.online.max_new_tokens,
      temperature=config.online.temperature, eos_id=tokenizer.eos_id,
      pad_id=tokenizer.pad_id)
  tokens, completion_mask = np.asarray(tokens), np.asarray(completion_mask)
  completions = [tokens[r, completion_mask[r] > 0].tolist() for r in range(len(rows))]
  return [completions[i * k:(i + 1) * k] for i in range(len(prompts))]


def verifier_rewards(prompts, completions, tokenizer, *, graded: bool = False) -> np.ndarray:
  """[N, K] rewards of the built-in task's rule: 1.0 where the response sorts the prompt's
  digits and ends with eos, else 0 (`graded`: `data.synthetic.score`'s partial credit)."""
  eos = int(tokenizer.eos_id)
  rule = synthetic.score if graded else (lambda p, c: float(synthetic.verify(p, c)))
  rewards = np.zeros((len(prompts), len(completions[0])), np.float32)
  for i, ((text, _), responses) in enumerate(zip(prompts, completions)):
    for j, ids in enumerate(responses):
      if ids[-1:] == [eos]:  # a response cut off at max_new_tokens scores 0
        rewards[i, j] = rule(text, tokenizer.decode(ids[:-1]))
  return rewards


def verifier_wins(rewards: np.ndarray) -> np.ndarray:
  """[N, K, K] P(y_i ≻ y_j) of a reward: 1 if r_i > r_j, ½ on a tie, 0 otherwise."""
  return ((rewards[:, :, None] > rewards[:, None, :])
          + 0.5 * (rewards[:, :, None] == rewards[:, None, :])).astype(np.float32)


def win_rates(wins: np.ndarray) -> np.ndarray:
  """[N, K] mean over the other K−1 responses of P(y_k ≻ y_j) (wins [N, K, K], ½ diagonal)."""
  k = wins.shape[1]
  return (wins.sum(-1) - 0.5) / max(k - 1, 1)  # minus the self-comparison's ½


def best_worst_pairs(prompts, completions, wins: np.ndarray) -> list[TokenizedPair]:
  """The best and worst response of each prompt by win-rate; ties (no winner) dropped."""
  rates = win_rates(wins)
  pairs = []
  for i, ((_, prompt_ids), responses) in enumerate(zip(prompts, completions)):
    best, worst = int(np.argmax(rates[i])), int(np.argmin(rates[i]))
    if rates[i, best] <= rates[i, worst]:
      continue
    pairs.append(TokenizedPair(len(pairs), np.asarray(prompt_ids, np.int32),
                               np.asarray(responses[best], np.int32),
                               np.asarray(responses[worst], np.int32)))
  return pairs


def gpo_pairs(prompts, completions, table: np.ndarray, tau: float,
              loss_cfg) -> list[TokenizedPair]:
  """GPO's chosen/rejected and targets from a score table s(i ≻ j) [N, K, K]."""
  from algorithms import gpo

  _, chosen, rejected, scores, probs = jax.device_get(gpo.gpo_targets(jnp.asarray(table), tau))
  targets = scores if loss_cfg.gpo_loss_type == "sppo_score" else probs
  pairs = []
  for i, ((_, prompt_ids), responses) in enumerate(zip(prompts, completions)):
    w, l = int(chosen[i]), int(rejected[i])
    if not np.any(table[i]):
      continue  # every response scores the same: the table is 0, nothing to learn
    pairs.append(TokenizedPair(
        len(pairs), np.asarray(prompt_ids, np.int32), np.asarray(responses[w], np.int32),
        np.asarray(responses[l], np.int32),
        {"chosen_score": float(targets[i, w]), "rejected_score": float(targets[i, l])}))
  return pairs


def gpm_table(scorer, prompts, completions, pad_id: int) -> np.ndarray:
  """[N, K, K] GPM scores s(y_i ≻ y_j) of each prompt's K responses (Zhang et al. 2025,
  the score ⟨R v_i, v_j⟩), from `scorer = (config, graphdef, params)` of a trained `gpm` run."""
  from algorithms.preference import gpm_score_table
  from data.pipeline import collate
  from training.step import head_values

  _, graphdef, params = scorer
  k = len(completions[0])
  rows = [TokenizedPair(n, np.asarray(prompt_ids, np.int32), np.asarray(response, np.int32),
                        None)
          for n, ((_, prompt_ids), response) in enumerate(
              (p, r) for p, responses in zip(prompts, completions) for r in responses)]
  length = max(len(r.prompt) + len(r.chosen) for r in rows)
  values, _, gates = jax.jit(lambda p, b: head_values(graphdef, p, b))(
      params, collate(rows, length, pad_id))
  values = values.reshape(len(prompts), k, -1)
  gates = None if gates is None else gates.reshape(len(prompts), k, -1)[:, 0]
  return np.asarray(gpm_score_table(values, gates), np.float32)


def prime_rows(graphdef, prm_params, ref_params, prompts, completions, rewards, config,
               pad_id: int) -> list[TokenizedPair]:
  """Every response of the prompts PRIME's accuracy filter keeps, with label and advantages.

  The implicit PRM π_φ scores q_t = log π_φ(y_t) − log π_ref(y_t) with the PRM before its
  update (PRIME's `update=after`); in the first round π_φ is the SFT policy, so q = 0 and
  the advantages come from the outcome rewards alone.
  """
  from algorithms import prime
  from data.pipeline import collate

  low, high = config.online.accuracy_range
  k = rewards.shape[1]
  keep = [i for i in range(len(prompts)) if low <= rewards[i].mean() <= high]
  rows = [TokenizedPair(n, np.asarray(prompts[i][1], np.int32),
                        np.asarray(completions[i][j], np.int32), None)
          for n, (i, j) in enumerate((i, j) for i in keep for j in range(k))]
  if not rows:
    return []
  length = max(len(r.prompt) + len(r.chosen) for r in rows)
  batch = collate(rows, length, pad_id)
  fn = jax.jit(lambda p, b: pair_logps(graphdef, p, b)[0])
  prm_logps, ref_logps = fn(prm_params, batch), fn(ref_params, batch)
  mask = jnp.asarray(batch["chosen_loss_mask"])
  q = prime.implicit_process_rewards(prm_logps, ref_logps, mask)
  labels = jnp.asarray([rewards[i, j] for i in keep for j in range(k)], jnp.float32)
  advantages = np.asarray(prime.prime_advantages(q, mask, labels, k,
                                                 config.loss.prime_rloo_form))
  out = []
  for n, row in enumerate(rows):
    start = len(row.prompt)
    out.append(TokenizedPair(n, row.prompt, row.chosen, None, {
        "chosen_label": float(labels[n]),
        "chosen_advantages": advantages[n, start:start + len(row.chosen)].tolist()}))
  return out


def _save(path: str, record: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f)
  os.replace(tmp, path)  # atomic: a resumed run never reads half a round


def _pairs_from_record(record: dict) -> list[TokenizedPair]:
  def array(x):
    return None if x is None else np.asarray(x, np.int32)
  return [TokenizedPair(p["id"], array(p["prompt"]), array(p["chosen"]), array(p["rejected"]),
                        p["extras"]) for p in record["pairs"]]


def _pair_record(p: TokenizedPair) -> dict:
  as_list = lambda x: None if x is None else np.asarray(x).tolist()
  return {"id": p.example_id, "prompt": as_list(p.prompt), "chosen": as_list(p.chosen),
          "rejected": as_list(p.rejected),
          "extras": {k: as_list(v) if isinstance(v, (list, np.ndarray)) else v
                     for k, v in p.extras.items()}}


def run_round(name: str, graphdef, params, ref_params, source, tokenizer, config,
              workdir: str, scorer=None) -> TokenizedPairs:
  """The round's training data for algorithm `name`; loaded from the workdir if saved.

  `scorer`: (config, graphdef, params) of a trained GPM (`loop.load_trained`) when
  `config.online.scorer == "gpm"`: P(y_i ≻ y_j) = σ(s_ij / τ) with the GPM's τ ranks the
  pairwise methods' responses and s / τ is GPO's score table (the GPO paper's pipeline).
  The verifier's rewards are recorded either way (the built-in task).
  """
  path = os.path.join(workdir, "online", "round_0.json")
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    logging.info("online round: loaded %d rows from %s", len(record["pairs"]), path)
    return TokenizedPairs.from_pairs(_pairs_from_record(record), tokenizer.pad_id,
                                     source_name=path)
  prompts = round_prompts(source, tokenizer, config.online.num_prompts, config.seed)
  key = jax.random.fold_in(jax.random.key(config.seed), 0x4F4E)  # "ON"
  completions = sample_responses(graphdef, params, prompts, tokenizer, config, key)
  # PRIME's outcome reward is correctness (0/1); the preference oracle of the pairwise
  # methods grades partial answers so that a weak policy's responses are rarely tied.
  rewards = verifier_rewards(prompts, completions, tokenizer, graded=name != "prime")
  if scorer is not None:
    tau = scorer[0].loss.preference_tau
    table = gpm_table(scorer, prompts, completions, tokenizer.pad_id)
    wins = jax.device_get(jax.nn.sigmoid(table / tau))
  else:  # the verifier's reward as a BT-style score r_i − r_j
    tau = config.loss.preference_tau
    table, wins = rewards[:, :, None] - rewards[:, None, :], verifier_wins(rewards)
  if name == "gpo":
    pairs = gpo_pairs(prompts, completions, table, tau, config.loss)
  elif name == "prime":
    pairs = prime_rows(graphdef, params, ref_params, prompts, completions, rewards, config,
                       tokenizer.pad_id)
  else:
    pairs = best_worst_pairs(prompts, completions, np.asarray(wins))
  logging.info("online round: %d prompts x %d samples, mean verifier reward %.3f, %d rows",
               len(prompts), rewards.shape[1], float(rewards.mean()), len(pairs))
  _save(path, {"algorithm": name, "scorer": config.online.scorer,
               "mean_reward": float(rewards.mean()),
               "prompts": [text for text, _ in prompts], "rewards": rewards.tolist(),
               "score_table": np.asarray(table).tolist(),
               "completions": completions, "pairs": [_pair_record(p) for p in pairs]})
  if len(pairs) < config.batch_size:
    raise DataError(
        f"{path}: the online round produced {len(pairs)} training rows, fewer than "
        f"config.batch_size={config.batch_size} (mean verifier reward "
        f"{float(rewards.mean()):.3f}); raise config.online.num_prompts or "
        "config.online.sft_steps")
  return TokenizedPairs.from_pairs(pairs, tokenizer.pad_id, source_name=path)


def sample_accuracy(graphdef, params, source, tokenizer, config, *, num_prompts: int) -> float:
  """Mean verifier reward of greedy responses to `num_prompts` prompts of `source`."""
  prompts = round_prompts(source, tokenizer, num_prompts, seed=0)
  greedy = config.online.copy_and_resolve_references()
  greedy.temperature = 0.0
  greedy.num_samples = 1
  cfg = config.copy_and_resolve_references()
  cfg.online = greedy
  completions = sample_responses(graphdef, params, prompts, tokenizer, cfg,
                                 jax.random.key(0))
  return float(verifier_rewards(prompts, completions, tokenizer).mean())
