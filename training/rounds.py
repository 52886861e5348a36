"""Online rounds: sample from π_t, ask an oracle, build rows, train, move the anchors.

    summary = iterate(config, workdir)          # python -m experiments.iterate

The online algorithms (DNO, INPO, SPPO/GPO, PRIME, and online DPO, their baseline) train on
their own samples, round after round. With π_0 the starting policy (the SFT warm-up of
`config.online.sft_steps`, or the loaded checkpoint), round t = 1 .. `config.online.rounds`
runs `config.online.rollouts_per_round` rollouts, each:

  1. sample: `online.num_prompts` prompts of the train split (a seeded choice per rollout),
     K = `online.num_samples` responses each from π_t (`models.sampling`, a KV cache);
  2. score: the oracle (`training.oracles`: the built-in task's verifier, a trained GPM or BT
     reward model, or a user's pairwise judge) gives P(y_i ≻ y_j) for every pair;
  3. rows, as the algorithm's `Requirements.online` (an `OnlineRound`) declares:
       best_worst   DNO-Prct (Rosset et al. 2024, Alg. 2), INPO (Zhang et al. 2025, Alg. 1),
                    online DPO: the best and worst response by win-rate against the other
                    K − 1, kept when the win-rate margin is ≥ `online.min_margin`; teacher
                    responses from the data join the candidates with `online.teacher`; with
                    `online.soft_labels` each pair carries DNO Alg. 1's soft label
                    p = σ(r_t(y_w) − r_t(y_l)) (Eq. 8), r_t the win-rate;
       gpo_targets  SPPO / GPO's chosen, rejected and score / win-rate targets;
       groups       PRIME (Cui et al. 2025, Alg. 1): every response of the prompts whose
                    accuracy lies in `online.accuracy_range`, its outcome label, and RLOO
                    advantages of outcome + process rewards, the process rewards from the
                    implicit PRM carried over from the previous rollout;
     and the frozen models' log-probs on the rows, once: π_ref = π_0 (never moves) where
     `Requirements.reference`, π_t (the sampler of this rollout) where
     `Requirements.previous_policy` (`frozen_models`);
  4. PRIME only: the PRM takes one CE epoch on the rollout's rows and labels (the PRM saved
     here scores the next rollout);
  5. train: `config.total_steps` updates of the shared loop (`training.loop.fit`) on the
     rows, from π_t with a fresh optimizer; the result is π_{t+1} (`advance`).

After each round the policy is evaluated (`evaluate_policy`): on `online.eval_prompts`
held-out prompts, π_t's response against π_0's under the oracle: win rate, length-controlled
win rate, mean length and, where a verifier exists, accuracy. One row per round (round 0 is
π_0) goes to WORKDIR/metrics.jsonl and the curves to WORKDIR/rounds.png.

Everything a round makes is kept in WORKDIR/round_<t>/ (with several rollouts per round,
WORKDIR/round_<t>/rollout_<u>/): samples.json, scores.json, rows.json, checkpoints/ (the
policy), prm/ (PRIME's PRM), metrics.jsonl (training), eval.json. Each file is written
atomically when its stage ends and read back when present, so a killed run resumes in the
stage it died in (training from its last checkpoint) and ends with the parameters of an
uninterrupted run.

On several processes (`experiments.iterate --distributed`) every process runs every stage
the same way, on global arrays: the sampler splits the rollout's rows over the mesh's batch
axes and every process gets all completions back, the frozen models' log-probs come back
replicated, and `fit` feeds each process its slice of every batch. Whether a stage (or π_0's,
or the PRM's checkpoint) is done is process 0's view, shared with all; process 0 alone writes
the files, and the others wait until it has (`_stage`, `training.multihost`). The runs match
one process with as many devices (tests/test_multihost.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import algorithms
from algorithms import Requirements
from data.errors import DataError
from data.pipeline import TokenizedPair, TokenizedPairs, bucket_length, collate
from training import config_check
from training import multihost
from training import oracles as oracles_lib
from training import win_rates
from training.experiment import Experiment, build, logp_options, make_batcher
from training import workdir as workdir_lib
from training.loop import fit, fresh_state, maybe_export, train_side_model
from training.mesh import batch_divisor, batch_sharding, put_global, put_whole_batch, replicated
from training.step import pair_logps

_ROLLOUT_STREAM = 0x4F4E  # "ON": the sampling keys' stream, apart from init and the step's
_EVAL_STREAM = 0x4556  # "EV"

PyTree = Any


# ---------------------------------------------------------------------------------------
# The anchors: what the step's frozen slots hold, and what moves after a round.


@dataclasses.dataclass(frozen=True)
class Anchors:
  """The frozen models of a rollout (params pytrees).

  reference: π_ref = π_0, fixed for the run. previous: π_t, the policy that samples the
  rollout. prm: PRIME's implicit PRM (None for the other algorithms).
  """

  reference: PyTree
  previous: PyTree
  prm: Optional[PyTree] = None


def frozen_models(needs: Requirements, anchors: Anchors) -> dict[str, PyTree]:
  """{"ref": π_ref, "prev": π_t}, each only where the algorithm's Requirements ask for it:
  the batch fields `ref_*_logps` / `prev_*_logps` that the step reads (training/step.py)."""
  slots = {}
  if needs.reference:
    slots["ref"] = anchors.reference
  if needs.previous_policy:
    slots["prev"] = anchors.previous
  return slots


def advance(anchors: Anchors, policy: PyTree, prm: Optional[PyTree] = None) -> Anchors:
  """The anchors of the next rollout: π_{t+1} = the trained policy samples it and is its
  previous iterate; π_ref stays; PRIME's PRM is its updated copy."""
  return dataclasses.replace(anchors, previous=policy,
                             prm=anchors.prm if prm is None else prm)


# ---------------------------------------------------------------------------------------
# Where a round's files live.


def round_dir(workdir: str, t: int, rollout: int = 0, rollouts: int = 1) -> str:
  """WORKDIR/round_<t>/, or WORKDIR/round_<t>/rollout_<u>/ with several rollouts a round."""
  path = os.path.join(workdir, f"round_{t}")
  return path if rollouts == 1 else os.path.join(path, f"rollout_{rollout}")


def _save_json(path: str, record) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f)
  os.replace(tmp, path)  # atomic: a resumed run never reads half a stage


def _load_json(path: str):
  with open(path) as f:
    return json.load(f)


# What a directory's progress.json says while each stage's file is being made.
_STAGES = {"samples.json": "sampling", "scores.json": "scoring", "rows.json": "rows",
           "eval_samples.json": "evaluating", "eval.json": "evaluating"}


def note_progress(directory: str, stage: str) -> None:
  """`directory/progress.json` = {"stage": stage}: where a running round is (for people
  watching a run, and for the kill tests)."""
  if multihost.is_main():
    _save_json(os.path.join(directory, "progress.json"), {"stage": stage})


def _stage(path: str, compute):
  """The stage's record from `path` if a run already finished it, else `compute()` saved.

  On several processes all take the same branch, process 0's view of `path` (none may skip a
  computation whose collectives the others run: the sampler and the frozen models work on
  global arrays), all compute the same record, process 0 alone writes it, and all wait until
  it is written before going on (`training.multihost`)."""
  if multihost.process_0_says(os.path.exists(path)):
    return _load_json(path)
  note_progress(os.path.dirname(path), _STAGES[os.path.basename(path)])
  record = compute()
  if multihost.is_main():
    _save_json(path, record)
  multihost.barrier(f"saved {path}")
  return record


# ---------------------------------------------------------------------------------------
# Sampling.


def round_prompts(pairs: TokenizedPairs, source, num_prompts: int, seed: int,
                  start: int = 0) -> list[dict]:
  """Distinct prompts of a split, a seeded choice: dicts with `prompt` (the record's prompt
  text, what an oracle reads), `ids` (the pair's prompt ids, exactly as training sees them:
  the chat template's rendering with its generation prompt when the tokenizer has one, else
  [bos] + text, cut to `config.data.max_prompt_len` by the pipeline's rule), `teacher` (the
  pair's chosen completion ids, eos included unless it was truncated; None for a prompt
  alone) and `answer` (the record's reference answer, None without one).

  The order is a seeded permutation of the split's records; records the pipeline dropped
  (identical pairs, long prompts with `on_long_prompt='drop'`) are skipped, as are repeats
  of a prompt already taken. Returns the prompts `start` .. `start + num_prompts - 1` of
  that order (fewer when the split runs out).
  """
  by_record = {int(p.example_id): p for p in pairs}
  order = np.random.default_rng(seed).permutation(len(source))
  prompts, seen = [], set()
  for index in order:
    pair = by_record.get(int(index))
    if pair is None:
      continue
    record = source[int(index)]
    text = record["prompt"]
    if text in seen:
      continue
    seen.add(text)
    if len(seen) <= start:
      continue
    prompts.append({"prompt": text, "ids": [int(i) for i in pair.prompt],
                    "teacher": [int(i) for i in pair.chosen] or None,
                    "answer": record.get("answer")})
    if len(prompts) == num_prompts:
      break
  return prompts


def rollout_prompts(exp: Experiment, index: int) -> list[dict]:
  """The train-split prompts of rollout `index` (0-based over the run) by
  `config.online.prompt_order`: "resample" draws a fresh seeded choice each rollout;
  "partition" cuts one seeded order into disjoint slices of `num_prompts`, rollout r the
  r-th, and a split too small for every rollout's slice is a DataError."""
  config, online = exp.config, exp.config.online
  pairs, source = exp.train_batches.pairs, exp.train_source
  if online.prompt_order == "resample":
    return round_prompts(pairs, source, online.num_prompts, seed=config.seed * 1_000_003 + index)
  prompts = round_prompts(pairs, source, online.num_prompts, seed=config.seed,
                          start=index * online.num_prompts)
  if len(prompts) < online.num_prompts:
    rollouts = online.rounds * online.rollouts_per_round
    raise DataError(
        f"{pairs.source_name}: config.online.prompt_order='partition' needs "
        f"{rollouts} x {online.num_prompts} distinct prompts (rounds x rollouts_per_round x "
        f"num_prompts) in split {config.data.train_split!r}; rollout {index} found "
        f"{len(prompts)} left. Lower config.online.num_prompts or use prompt_order 'resample'")
  return prompts


def check_online_data(exp: Experiment, verifier: bool) -> None:
  """What the run asks of its records, checked before π_0 is trained; the first record that
  fails is a DataError naming its file and line (or split and index):

  * with the verifier as the oracle (`verifier`), a rule for every record: a prompt of the
    built-in task or a reference `answer`;
  * with `online.sft_steps` or `online.teacher`, a chosen response on the train split's
    records (not the prompt-only layout);
  * with `online.prompt_order='partition'`, enough distinct prompts for every rollout's slice.
  """
  config, online = exp.config, exp.config.online
  if online.prompt_order == "partition":
    need = online.rounds * online.rollouts_per_round * online.num_prompts
    have = len({exp.train_source[int(p.example_id)]["prompt"] for p in exp.train_batches.pairs})
    if have < need:
      raise DataError(
          f"{exp.train_batches.pairs.source_name}: config.online.prompt_order='partition' "
          f"needs {need} distinct prompts (rounds x rollouts_per_round x num_prompts = "
          f"{online.rounds} x {online.rollouts_per_round} x {online.num_prompts}), split "
          f"{config.data.train_split!r} has {have}; lower config.online.num_prompts or use "
          "prompt_order 'resample'")
  needs_responses = [f"config.online.{f}={online[f]}" for f in ("sft_steps", "teacher")
                     if online[f]]
  for source, pairs, split in ((exp.train_source, exp.train_batches.pairs,
                                config.data.train_split),
                               (exp.eval_source, exp.eval_batches.pairs,
                                config.data.eval_split)):
    def where(index, field):
      find = getattr(source, "locate", None)
      return (find(index, field) if callable(find)
              else f"split {split!r}, record {index}, field {field!r}")

    if needs_responses and split == config.data.train_split:
      bare = next((p.example_id for p in pairs if len(p.chosen) == 0), None)
      if bare is not None:
        raise DataError(f"{where(bare, 'chosen')}: missing; {' and '.join(needs_responses)} "
                        "train on the data's chosen responses, and this split holds prompts "
                        "only: set them to 0 / False, or give prompt/chosen/rejected records")
    if not verifier:
      continue
    for index, record in enumerate(source):
      if oracles_lib.VerifierOracle.rule(record["prompt"], record.get("answer")) is None:
        raise DataError(f"{where(index, 'answer')}: missing; config.online.scorer='verifier' "
                        "checks each sampled answer against the record's reference answer "
                        "(or the built-in task's rule); give `answer` on every record, or use "
                        "scorer 'gpm', 'bt_reward' or 'judge'")


def left_padded(rows: list[list[int]], pad_id: int, multiple: int = 16):
  """[N, P] ids and attention mask, each row right-aligned; P a multiple of `multiple` so
  that rollouts of similar prompts share one compiled sampler."""
  width = -(-max(len(r) for r in rows) // multiple) * multiple
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = r
    mask[i, width - len(r):] = 1
  return ids, mask


def sample_responses(exp: Experiment, params, prompt_ids: list[list[int]], k: int, *,
                     temperature: float, key) -> list[list[list[int]]]:
  """K completions (token ids, eos included when emitted) per prompt, from `params`.

  The N·K rows are split over the mesh's batch axes (data x fsdp; filler copies of the last
  row, dropped, make them a multiple), so every device samples its share; on several
  processes every one passes the same rows and key and gets every completion back."""
  from flax import nnx

  from models import sampling  # local: only online runs sample

  tokenizer = exp.tokenizer
  rows = [ids for ids in prompt_ids for _ in range(k)]  # prompt i -> rows i*K .. i*K+K-1
  filler = [rows[-1]] * (-len(rows) % batch_divisor(exp.mesh))
  ids, mask = left_padded(rows + filler, tokenizer.pad_id)  # [N·K + filler, P]
  sharding = batch_sharding(exp.mesh)
  model = nnx.merge(exp.graphdef, params)
  tokens, completion_mask, _ = sampling.sample(
      model, put_global(ids, sharding), put_global(mask, sharding), key=key,
      max_new_tokens=exp.config.online.max_new_tokens, temperature=temperature,
      eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  tokens, completion_mask = multihost.host_value(tokens), multihost.host_value(completion_mask)
  completions = [tokens[r, completion_mask[r] > 0].tolist() for r in range(len(rows))]
  return [completions[i * k:(i + 1) * k] for i in range(len(prompt_ids))]


def candidates(exp: Experiment, prompts: list[dict], completions) -> oracles_lib.Candidates:
  """The oracle's view of a rollout: texts decoded without the eos."""
  eos = int(exp.tokenizer.eos_id)
  decode = lambda ids: exp.tokenizer.decode(ids[:-1] if ids[-1:] == [eos] else ids)  # noqa
  return oracles_lib.Candidates(
      prompts=[p["prompt"] for p in prompts], prompt_ids=[p["ids"] for p in prompts],
      completions=completions,
      texts=[[decode(ids) for ids in responses] for responses in completions],
      answers=[p.get("answer") for p in prompts])


def _with_teachers(prompts: list[dict], completions):
  """Each prompt's teacher response (the data's chosen completion, as tokenized for
  training) as one more candidate."""
  return [responses + [list(p["teacher"])] for p, responses in zip(prompts, completions)]


def _judgement_record(judgement: oracles_lib.Judgement) -> dict:
  as_list = lambda x: None if x is None else np.asarray(x).tolist()  # noqa: E731
  return {"preferences": as_list(judgement.preferences), "scores": as_list(judgement.scores),
          "rewards": as_list(judgement.rewards), "correct": as_list(judgement.correct)}


def _judgement(record: dict) -> oracles_lib.Judgement:
  array = lambda x: None if x is None else np.asarray(x, np.float32)  # noqa: E731
  return oracles_lib.Judgement(**{k: array(v) for k, v in record.items()})


# ---------------------------------------------------------------------------------------
# Rows from a scored rollout.


def win_rates_of(preferences: np.ndarray) -> np.ndarray:
  """[N, K] r(y_k) = mean over the other K − 1 responses of P(y_k ≻ y_j) (DNO's r_t)."""
  k = preferences.shape[1]
  return (preferences.sum(-1) - 0.5) / max(k - 1, 1)  # minus the self-comparison's ½


def best_worst_pairs(prompts, completions, preferences: np.ndarray, *, min_margin: float,
                     soft_labels: bool) -> list[TokenizedPair]:
  """The best and the worst response of each prompt by win-rate (DNO-Prct, Alg. 2, lines
  4-6), kept when r(best) − r(worst) ≥ `min_margin` and > 0. `soft_labels`: the pair also
  carries `preference_prob` = σ(r(best) − r(worst)), DNO Alg. 1 (Eq. 8)'s label."""
  rates = win_rates_of(preferences)
  pairs = []
  for i, (prompt, responses) in enumerate(zip(prompts, completions)):
    best, worst = int(np.argmax(rates[i])), int(np.argmin(rates[i]))
    margin = float(rates[i, best] - rates[i, worst])
    if margin <= 0 or margin < min_margin:
      continue
    extras = {"preference_prob": float(1.0 / (1.0 + np.exp(-margin)))} if soft_labels else {}
    pairs.append(TokenizedPair(len(pairs), np.asarray(prompt["ids"], np.int32),
                               np.asarray(responses[best], np.int32),
                               np.asarray(responses[worst], np.int32), extras))
  return pairs


def gpo_pairs(prompts, completions, scores: np.ndarray, loss_cfg) -> list[TokenizedPair]:
  """GPO / SPPO's chosen, rejected and targets from the score table s(i ≻ j) [N, K, K]
  (already on the logit scale, so τ = 1 here; `algorithms.gpo.gpo_targets`)."""
  from algorithms import gpo

  targets = jax.device_get(gpo.gpo_targets(jnp.asarray(scores), 1.0))
  per_response = (targets.score_targets if loss_cfg.gpo_loss_type == "sppo_score"
                  else targets.prob_targets)
  pairs = []
  for i, (prompt, responses) in enumerate(zip(prompts, completions)):
    if not np.any(scores[i]):
      continue  # every response scores the same: the table is 0, nothing to learn
    w, l = int(targets.chosen_index[i]), int(targets.rejected_index[i])
    pairs.append(TokenizedPair(
        len(pairs), np.asarray(prompt["ids"], np.int32), np.asarray(responses[w], np.int32),
        np.asarray(responses[l], np.int32),
        {"chosen_score": float(per_response[i, w]),
         "rejected_score": float(per_response[i, l])}))
  return pairs


def prime_rows(exp: Experiment, prm_params, ref_params, prompts, completions,
               correct: np.ndarray) -> list[TokenizedPair]:
  """Every response of the prompts PRIME's accuracy filter keeps, in groups of K, with its
  outcome label and advantages (`algorithms.prime.prime_advantages`).

  The process rewards q_t = log π_φ(y_t) − log π_ref(y_t) come from the PRM before its
  update on this rollout (PRIME's `update=after`): the PRM carried over from the previous
  rollout, so they are 0 only in the very first rollout, where π_φ = π_ref = π_0.
  """
  from algorithms import prime

  config = exp.config
  low, high = config.online.accuracy_range
  k = correct.shape[1]
  keep = [i for i in range(len(prompts)) if low <= correct[i].mean() <= high]
  rows = [TokenizedPair(n, np.asarray(prompts[i]["ids"], np.int32),
                        np.asarray(completions[i][j], np.int32), None)
          for n, (i, j) in enumerate((i, j) for i in keep for j in range(k))]
  if not rows:
    return []
  prm_logps = logps_of_rows(exp, prm_params, rows)
  ref_logps = logps_of_rows(exp, ref_params, rows)
  length = max(len(r.prompt) + len(r.chosen) for r in rows)
  mask = jnp.asarray(collate(rows, length, exp.tokenizer.pad_id)["chosen_loss_mask"])
  pad = lambda values: jnp.asarray(_padded(rows, values, length))  # noqa: E731
  q = prime.implicit_process_rewards(pad(prm_logps), pad(ref_logps), mask)
  labels = jnp.asarray([correct[i, j] for i in keep for j in range(k)], jnp.float32)
  advantages = np.asarray(prime.prime_advantages(q, mask, labels, k,
                                                 config.loss.prime_rloo_form))
  q = np.asarray(q)
  out = []
  for n, row in enumerate(rows):
    start = len(row.prompt)
    span = slice(start, start + len(row.chosen))
    out.append(TokenizedPair(n, row.prompt, row.chosen, None, {
        "chosen_label": float(labels[n]),
        "chosen_advantages": advantages[n, span].tolist(),
        "process_rewards": q[n, span].tolist()}))
  return out


def _padded(rows, values: list[dict], length: int) -> np.ndarray:
  """[N, length] per-token values of each row's chosen side at its completion positions."""
  out = np.zeros((len(rows), length), np.float32)
  for n, (row, v) in enumerate(zip(rows, values)):
    out[n, len(row.prompt):len(row.prompt) + len(row.chosen)] = v["chosen"]
  return out


def logps_of_rows(exp: Experiment, params, rows: list[TokenizedPair]) -> list[dict]:
  """Per row {"chosen": [...], "rejected": [...] or None}: log π(y_t | x, y_<t) of each
  completion token under `params`, computed in batches of `eval_batch_size` rows of one
  padded length (one compilation per rollout length bucket)."""
  config = exp.config
  size = config.eval_batch_size
  longest = max(len(r.prompt) + max(len(r.chosen), 0 if r.rejected is None else len(r.rejected))
                for r in rows)
  length = bucket_length(longest, config.data.buckets)
  fn = _logps_fn(exp)
  out = []
  for start in range(0, len(rows), size):
    chunk = list(rows[start:start + size])
    real = len(chunk)
    chunk += [chunk[-1]] * (size - real)  # filler rows, dropped below
    batch = collate(chunk, length, exp.tokenizer.pad_id)
    batch.pop("example_id")
    # Every process holds the whole chunk; the log-probs come back replicated ([B, T] each).
    chosen, rejected = jax.device_get(fn(params, put_whole_batch(batch, exp.mesh)))
    for n, row in enumerate(chunk[:real]):
      span = slice(len(row.prompt), len(row.prompt) + len(row.chosen))
      entry = {"chosen": chosen[n, span].tolist(), "rejected": None}
      if row.rejected is not None:
        entry["rejected"] = rejected[n, len(row.prompt):len(row.prompt)
                                     + len(row.rejected)].tolist()
      out.append(entry)
  return out


_LOGPS_FNS: dict = {}


def _logps_fn(exp: Experiment):
  """The jitted (params, batch) -> (chosen, rejected) [B, T] log-probs, replicated on every
  device: each process reads the whole result (`np.asarray` of a replicated array)."""
  key = (id(exp.graphdef), logp_options(exp.config, online=True), exp.mesh)
  if key not in _LOGPS_FNS:
    options = key[1]
    _LOGPS_FNS[key] = jax.jit(lambda p, b: pair_logps(exp.graphdef, p, b, options),
                              out_shardings=replicated(exp.mesh))
  return _LOGPS_FNS[key]


def with_frozen_logps(exp: Experiment, rows: list[TokenizedPair],
                      models: dict[str, PyTree]) -> list[TokenizedPair]:
  """The rows with each frozen model's per-token log-probs as extras
  (`{slot}_chosen_logps`, `{slot}_rejected_logps`; data.readers.TOKEN_FIELDS)."""
  extras = [dict(r.extras) for r in rows]
  for slot, params in models.items():
    for e, logps in zip(extras, logps_of_rows(exp, params, rows)):
      e[f"{slot}_chosen_logps"] = logps["chosen"]
      if logps["rejected"] is not None:
        e[f"{slot}_rejected_logps"] = logps["rejected"]
  return [dataclasses.replace(r, extras=e) for r, e in zip(rows, extras)]


def _row_record(p: TokenizedPair) -> dict:
  as_list = lambda x: None if x is None else np.asarray(x).tolist()  # noqa: E731
  return {"id": p.example_id, "prompt": as_list(p.prompt), "chosen": as_list(p.chosen),
          "rejected": as_list(p.rejected),
          "extras": {k: as_list(v) if isinstance(v, (list, np.ndarray)) else v
                     for k, v in p.extras.items()}}


def _rows(record: list[dict]) -> list[TokenizedPair]:
  array = lambda x: None if x is None else np.asarray(x, np.int32)  # noqa: E731
  return [TokenizedPair(p["id"], array(p["prompt"]), array(p["chosen"]), array(p["rejected"]),
                        p["extras"]) for p in record]


# ---------------------------------------------------------------------------------------
# One rollout.


def _rollout_key(seed: int, index: int):
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROLLOUT_STREAM), index)


def rollout_rows(exp: Experiment, oracle, anchors: Anchors, directory: str,
                 index: int) -> tuple[list[TokenizedPair], dict]:
  """Stages 1-3 of a rollout (sample, score, rows with frozen log-probs), each read back
  from `directory` when a run already finished it. Returns (rows, round statistics)."""
  config, needs = exp.config, exp.algorithm.requirements
  recipe = needs.online
  online = config.online

  def sample():
    prompts = rollout_prompts(exp, index)
    completions = sample_responses(exp, anchors.previous, [p["ids"] for p in prompts],
                                   online.num_samples, temperature=online.temperature,
                                   key=_rollout_key(config.seed, index))
    if online.teacher:
      completions = _with_teachers(prompts, completions)
    return {"prompts": prompts, "completions": completions}

  samples = _stage(os.path.join(directory, "samples.json"), sample)
  prompts, completions = samples["prompts"], samples["completions"]
  judgement = _judgement(_stage(
      os.path.join(directory, "scores.json"),
      lambda: _judgement_record(oracle.judge(candidates(exp, prompts, completions)))))

  def build_rows():
    if recipe.rows == "best_worst":
      rows = best_worst_pairs(prompts, completions, judgement.preferences,
                              min_margin=online.min_margin, soft_labels=online.soft_labels)
    elif recipe.rows == "gpo_targets":
      rows = gpo_pairs(prompts, completions, judgement.scores, config.loss)
    else:
      rows = prime_rows(exp, anchors.prm, anchors.reference, prompts, completions,
                        judgement.correct)
    rows = with_frozen_logps(exp, rows, frozen_models(needs, anchors))
    return [_row_record(r) for r in rows]

  rows = _rows(_stage(os.path.join(directory, "rows.json"), build_rows))
  stats = {"rows": len(rows)}
  if judgement.rewards is not None:
    stats["reward"] = float(np.mean(judgement.rewards))
  if judgement.correct is not None:
    stats["accuracy"] = float(np.mean(judgement.correct))
  if len(rows) < config.batch_size:
    raise DataError(
        f"{directory}: the rollout produced {len(rows)} training rows, fewer than "
        f"config.batch_size={config.batch_size} ({stats}); raise config.online.num_prompts, "
        "lower config.online.min_margin or widen config.online.accuracy_range")
  return rows, stats


def update_prm(exp: Experiment, anchors: Anchors, rows: list[TokenizedPair],
               directory: str) -> PyTree:
  """PRIME's online PRM update (Cui et al. 2025, Alg. 1; the official code's
  `compute_ce_dpo_loss_rm`): one epoch of the implicit PRM's CE objective (`implicit_prm`,
  β = config.loss.prm_beta) on the rollout's responses and outcome labels, from the PRM
  carried over, against the fixed π_ref. Saved to `directory/prm` (read back when there)."""
  import orbax.checkpoint as ocp  # local: only PRIME runs keep a PRM

  path = os.path.join(os.path.abspath(directory), "prm")
  checkpointer = ocp.StandardCheckpointer()
  if multihost.process_0_says(os.path.exists(path)):  # the same choice on every process
    return checkpointer.restore(path, anchors.prm)
  note_progress(directory, "prm")
  config = exp.config
  prm_cfg = algorithms.loss_config("implicit_prm", beta=config.loss.prm_beta,
                                   prm_objective="ce")
  plain = [dataclasses.replace(r, extras={"chosen_label": r.extras["chosen_label"]})
           for r in rows]
  batches = make_batcher(config, TokenizedPairs(plain, exp.tokenizer.pad_id))
  steps = batches.num_batches_per_epoch
  params, losses = train_side_model(exp, "implicit_prm", prm_cfg, config.optimizer, steps,
                                    anchors.prm, anchors.reference, batches)
  checkpointer.save(path, params)  # collective: every process writes its shards
  checkpointer.wait_until_finished()
  if multihost.is_main():
    _save_json(path + ".json", {"steps": steps, "beta": config.loss.prm_beta, "losses": losses})
  logging.info("PRIME: PRM updated for %d steps (CE loss %.4f -> %.4f)", steps, losses[0],
               losses[-1])
  return params


def train_rollout(exp: Experiment, params, rows: list[TokenizedPair], directory: str,
                  stop_at: Optional[int] = None) -> tuple[PyTree, dict]:
  """`config.total_steps` updates of the shared loop on the rows, from `params` with a fresh
  optimizer (resumed from `directory/checkpoints`). Returns (trained params, fit summary)."""
  batches = make_batcher(exp.config,
                         TokenizedPairs(rows, exp.tokenizer.pad_id, source_name=directory))
  note_progress(directory, "training")
  state, summary = fit(exp, fresh_state(exp, params), batches, directory, stop_at=stop_at)
  return state.params, summary


# ---------------------------------------------------------------------------------------
# Evaluation of a round.


def eval_prompts(exp: Experiment) -> list[dict]:
  """The held-out prompts every round is evaluated on (the first seeded choice of the eval
  split, the same for every round)."""
  config = exp.config
  return round_prompts(exp.eval_batches.pairs, exp.eval_source, config.online.eval_prompts,
                       seed=0)


def eval_responses(exp: Experiment, params, prompts: list[dict]) -> list[list[int]]:
  """One response per held-out prompt at `online.eval_temperature` (0: greedy)."""
  key = jax.random.fold_in(jax.random.key(exp.config.seed), _EVAL_STREAM)
  return [r[0] for r in sample_responses(exp, params, [p["ids"] for p in prompts], 1,
                                         temperature=exp.config.online.eval_temperature,
                                         key=key)]


def eval_samples_of_pi_0(exp: Experiment, workdir: str, pi_0) -> list[list[int]]:
  """π_0's held-out responses, the baseline of every round: WORKDIR/round_0/eval_samples.json,
  made once."""
  return _stage(os.path.join(workdir, "round_0", "eval_samples.json"),
                lambda: eval_responses(exp, pi_0, eval_prompts(exp)))


def evaluate_policy(exp: Experiment, oracle, prompts: list[dict],
                    responses: list[list[int]], baseline: list[list[int]]) -> dict:
  """`eval/win_rate`, `eval/lc_win_rate`, `eval/length` (and `eval/accuracy` where the
  verifier has a rule for every prompt: the built-in task, or records with reference
  answers) of `responses` against the `baseline` responses (π_0's) under the oracle.

  The oracle sees each prompt's two responses as K = 2 candidates; P(response ≻ baseline)
  is its [0, 1] entry. Lengths are completion tokens without the eos.
  """
  eos = int(exp.tokenizer.eos_id)
  both = [[r, b] for r, b in zip(responses, baseline)]
  cands = candidates(exp, prompts, both)
  judgement = oracle.judge(cands)
  prefs = judgement.preferences[:, 0, 1]
  length = lambda ids: len(ids) - (ids[-1:] == [eos])  # noqa: E731
  accuracy, correct = None, judgement.correct  # the oracle's own verdict when it verifies
  if correct is None:
    verifier = oracles_lib.verifier_for(exp.config, exp.tokenizer, cands)
    correct = None if verifier is None else verifier.judge(cands).correct
  if correct is not None:
    accuracy = float(np.mean(correct[:, 0]))
  return win_rates.round_summary(prefs, np.asarray([length(r) for r in responses], np.float64),
                                 np.asarray([length(b) for b in baseline], np.float64),
                                 accuracy=accuracy)


def load_policy(exp: Experiment, path: str) -> PyTree:
  """The params of a policy checkpoint: a run's or a round's directory (the newest step of
  its checkpoints/) or an orbax params checkpoint (WORKDIR/round_0/policy)."""
  import orbax.checkpoint as ocp

  from training.checkpoint import Checkpointer
  from training.loop import fresh_state

  path = os.path.abspath(path)
  if multihost.process_0_says(os.path.isdir(os.path.join(path, "checkpoints"))):
    checkpointer = Checkpointer(os.path.join(path, "checkpoints"))
    try:
      if checkpointer.latest_step() is None:
        raise DataError(f"{path}/checkpoints: no checkpoint there")
      return checkpointer.restore(fresh_state(exp, exp.state.params)).params
    finally:
      checkpointer.close()
  if not os.path.isdir(path):
    raise DataError(f"{path}: no such checkpoint (expected a run or round directory with "
                    "checkpoints/, or an orbax params directory such as round_0/policy)")
  return jax.device_put(ocp.StandardCheckpointer().restore(path, exp.state.params),
                        exp.state_sharding.params)


def evaluate_checkpoint(config, workdir: str, path: str) -> dict:
  """`evaluate_policy` of the checkpoint at `path` against π_0 of the online run in
  `workdir` (its held-out prompts and π_0's responses, made once by that run), under the
  oracle of `config` (experiments/evaluate.py)."""
  exp = build(config, workdir)
  oracle = oracles_lib.make_oracle(config, exp.tokenizer, exp.mesh)
  prompts = eval_prompts(exp)
  baseline = eval_samples_of_pi_0(exp, workdir, start_policy(exp, workdir))
  responses = eval_responses(exp, load_policy(exp, path), prompts)
  return evaluate_policy(exp, oracle, prompts, responses, baseline)


# ---------------------------------------------------------------------------------------
# π_0.


def start_policy(exp: Experiment, workdir: str) -> PyTree:
  """π_0: the policy as built, after `online.sft_steps` of SFT on the train split's chosen
  responses when asked; saved once to WORKDIR/round_0/policy and read back afterwards."""
  import orbax.checkpoint as ocp

  path = os.path.join(os.path.abspath(workdir), "round_0", "policy")
  checkpointer = ocp.StandardCheckpointer()
  params = exp.state.params
  if multihost.process_0_says(os.path.exists(path)):  # the same choice on every process
    return jax.device_put(checkpointer.restore(path, params),
                          exp.state_sharding.params)
  if exp.config.online.sft_steps:
    params = jax.device_put(sft_warm_up(exp, params, exp.config.online.sft_steps),
                            exp.state_sharding.params)
  checkpointer.save(path, params)
  checkpointer.wait_until_finished()
  return params


def sft_warm_up(exp: Experiment, params, steps: int) -> PyTree:
  """`params` after `steps` of SFT on the train split's chosen responses, with AdamW at
  `online.sft_learning_rate` (the run's schedule, warm-up at most `steps`)."""
  opt_cfg = exp.config.optimizer.copy_and_resolve_references()
  opt_cfg.learning_rate = exp.config.online.sft_learning_rate
  opt_cfg.warmup_steps = min(opt_cfg.warmup_steps, steps)
  params, losses = train_side_model(exp, "sft", exp.config.loss, opt_cfg, steps, params, None,
                                    exp.train_batches)
  logging.info("SFT warm-up: %d steps, loss %.4f -> %.4f", steps, losses[0], losses[-1])
  return params


# ---------------------------------------------------------------------------------------
# The driver.


def _metrics_rows(workdir: str, rounds: int) -> list[dict]:
  rows = []
  for t in range(rounds + 1):
    path = os.path.join(workdir, f"round_{t}", "eval.json")
    if os.path.exists(path):
      rows.append(_load_json(path))
  return rows


def _write_round_metrics(workdir: str, rounds: int) -> list[dict]:
  """WORKDIR/metrics.jsonl (one row per evaluated round, rewritten from each round's
  eval.json, so a resumed run neither loses nor repeats a round) and WORKDIR/rounds.png."""
  rows = _metrics_rows(workdir, rounds)
  if multihost.is_main() and rows:
    tmp = os.path.join(workdir, "metrics.jsonl.tmp")
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, os.path.join(workdir, "metrics.jsonl"))
    win_rates.plot_rounds(rows, os.path.join(workdir, "rounds.png"))
  return rows


def iterate(config, workdir: str, *, stop_at: Optional[tuple[int, int]] = None) -> dict:
  """Runs (or resumes) `config.online.rounds` online rounds; returns a summary with one
  evaluation row per round (`rounds`), the final params (`params`) and PRIME's PRM (`prm`).

  `stop_at=(t, step)` stops inside round t's training after that step (with a checkpoint),
  as a preemption would; a later call with the same workdir continues.
  """
  if algorithms.get_algorithm(config.loss.name).requirements.online is None:
    raise config_check.ConfigError(
        f"loss {config.loss.name!r} trains on a fixed dataset; run it with "
        "`python -m experiments.train` (online algorithms: "
        f"{', '.join(online_algorithms())})")
  with workdir_lib.claim(workdir, writer=multihost.is_main()):
    changes = workdir_lib.check_resume(config, workdir)
    return _iterate(config, workdir, changes, stop_at)


def _iterate(config, workdir: str, changes: dict, stop_at) -> dict:
  exp = build(config, workdir)
  needs = exp.algorithm.requirements
  if multihost.is_main():
    workdir_lib.record_config(config, workdir, changes, step=None)
  oracle = oracles_lib.make_oracle(config, exp.tokenizer, exp.mesh)
  online = config.online
  check_online_data(exp, verifier=oracle.name == "verifier")

  pi_0 = start_policy(exp, workdir)
  prompts = eval_prompts(exp)
  baseline = eval_samples_of_pi_0(exp, workdir, pi_0)
  _stage(os.path.join(workdir, "round_0", "eval.json"),
         lambda: {"round": 0, **evaluate_policy(exp, oracle, prompts, baseline, baseline)})
  _write_round_metrics(workdir, online.rounds)

  anchors = Anchors(reference=pi_0, previous=pi_0, prm=pi_0 if needs.online.prm else None)
  summary = {"stopped_early": False}
  for t in range(1, online.rounds + 1):
    for u in range(online.rollouts_per_round):
      directory = round_dir(workdir, t, u, online.rollouts_per_round)
      index = (t - 1) * online.rollouts_per_round + u
      rows, stats = rollout_rows(exp, oracle, anchors, directory, index)
      prm = update_prm(exp, anchors, rows, directory) if needs.online.prm else None
      at = stop_at[1] if stop_at is not None and stop_at[0] == t else None
      params, fitted = train_rollout(exp, anchors.previous, rows, directory, stop_at=at)
      logging.info("round %d rollout %d: %s, trained to step %d", t, u, stats,
                   fitted["final_step"])
      if fitted["stopped_early"]:
        summary.update(stopped_early=True, stopped_in_round=t, params=params)
        return summary
      anchors = advance(anchors, params, prm)
    evaluated = _stage(
        os.path.join(workdir, f"round_{t}", "eval.json"),
        lambda: {"round": t, **evaluate_policy(
            exp, oracle, prompts,
            _stage(os.path.join(workdir, f"round_{t}", "eval_samples.json"),
                   lambda: eval_responses(exp, anchors.previous, prompts)), baseline)})
    logging.info("round %d: %s", t, evaluated)
    _write_round_metrics(workdir, online.rounds)
  summary.update(rounds=_metrics_rows(workdir, online.rounds), params=anchors.previous,
                 prm=anchors.prm)
  if multihost.is_main():
    summary["export"] = maybe_export(config, workdir)
  return summary


def online_algorithms() -> list[str]:
  """The registered losses whose Requirements declare an online round."""
  return [n for n in algorithms.registered_names()
          if algorithms.get_algorithm(n).requirements.online is not None]
