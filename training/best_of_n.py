"""Best-of-N with an implicit PRM on a verifiable task: the evaluation of Yuan et al. 2024
("Free Process Rewards without Process Labels", arXiv 2412.01981, §4.1, Table 1).

    summary = evaluate(config, workdir, BestOfN(n=8, prompts=128))

A generator samples N responses to each of `prompts` held-out prompts (the run's eval split,
a seeded choice, prompt ids as training tokenizes them: `training.rounds.round_prompts`);
the trained PRM of `workdir` scores each response with its outcome reward

    r_θ(y) = β Σ_t log π_θ(y_t | x, y_<t) / π_ref(y_t | x, y_<t)

(`algorithms.implicit_prm.response_rewards`; the last of its partial sums, the process
rewards q_t), and the response with the highest r is picked. The verifier says which
responses are right (the built-in task's rule, or a math answer against the record's
reference: `training.oracles.VerifierOracle`). Reported:

  bon/accuracy         the PRM's pick is right (what the paper's Table 1 reports, on MATH500);
  bon/random_accuracy  the mean correctness of the N responses: a pick at random (the floor);
  bon/oracle_accuracy  at least one of the N is right (pass@N: the ceiling);
  bon/n, bon/prompts.

The prompts come from the run's eval split, or from `BestOfN.data` (the paper's MATH500:
`prompt` / `answer` records, the prompt-only layout), tokenized as training tokenizes.

The step-level aggregations of the paper's BoN (min / mean over step rewards,
`algorithms.implicit_prm.score_responses`) need step boundaries; the outcome reward is their
"accumulative, last step" form and the one a response-level verifier can check.

The generator: π_ref itself (the PRM's initial model; Table 1's Llama-3.1-8B-Instruct
generator row for a PRM initialised from it), a policy checkpoint (`generator`: a run or
round directory), or π_ref after `generator_sft_steps` of SFT on the train split's chosen
responses (the tiny preset: its random-init π_ref answers nothing right, an SFT warm-up
leaves a mix of right and wrong answers for the PRM to choose among).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from absl import logging

from algorithms import implicit_prm
from data.pipeline import TokenizedPair
from training import oracles as oracles_lib
from training import rounds
from training.config_check import ConfigError
from training.experiment import Experiment, build

_BON_STREAM = 0x424F  # "BO": the sampling key's stream


@dataclasses.dataclass(frozen=True)
class BestOfN:
  """What the evaluation samples and from which generator."""
  n: int = 8                     # responses per prompt
  prompts: int = 64              # held-out prompts
  temperature: float = 1.0
  max_new_tokens: int | None = None  # default: config.online.max_new_tokens
  generator: str = ""            # "" = π_ref; else a run or round directory of a policy
  generator_sft_steps: int = 0   # SFT warm-up of π_ref first (with generator "")
  # Where the prompts and their reference answers are: "" = the run's eval split; else a
  # path (the README's layouts, e.g. MATH500 as prompt / answer records) and its split
  data: str = ""
  split: str = "test"
  seed: int = 0

  def __post_init__(self):
    for field in ("n", "prompts"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"BestOfN.{field} must be an int >= 1, got {value!r}")
    if not self.temperature >= 0:
      raise ValueError(f"BestOfN.temperature must be >= 0, got {self.temperature!r}")
    if self.generator and self.generator_sft_steps:
      raise ValueError("BestOfN: generator_sft_steps warms up π_ref; it does not apply to "
                       f"the generator checkpoint {self.generator!r}")


def picked_accuracy(rewards: np.ndarray, correct: np.ndarray) -> dict:
  """[P, N] PRM rewards and 0/1 correctness -> the summary's accuracies (module docstring).
  Ties go to the first response (argmax, `implicit_prm.best_of_n`)."""
  pick = np.asarray(implicit_prm.best_of_n(rewards))
  return {"bon/accuracy": float(np.mean(correct[np.arange(len(pick)), pick])),
          "bon/random_accuracy": float(np.mean(correct)),
          "bon/oracle_accuracy": float(np.mean(correct.max(axis=1)))}


def generator_params(exp: Experiment, ref_params, spec: BestOfN):
  """The params that sample the candidates (see the module docstring)."""
  if spec.generator:
    return rounds.load_policy(exp, spec.generator)
  if not spec.generator_sft_steps:
    return ref_params
  return rounds.sft_warm_up(exp, ref_params, spec.generator_sft_steps)


def prompt_source(exp: Experiment, spec: BestOfN):
  """(tokenized pairs, records) the prompts are drawn from: the run's eval split, or the
  records of `spec.data` (any layout, prompts alone included) tokenized as training would."""
  if not spec.data:
    return exp.eval_batches.pairs, exp.eval_source
  from data import pipeline, readers
  from training.experiment import tokenize_limits

  records = readers.read_files(readers.split_files(spec.data, spec.split))
  limits = dataclasses.replace(tokenize_limits(exp.config), prompts_only=True, unpaired="all")
  return pipeline.tokenize(records, exp.tokenizer, limits, source_name=spec.data), records


def response_rewards(exp: Experiment, prm_params, ref_params,
                     rows: list[TokenizedPair]) -> np.ndarray:
  """[len(rows)] outcome rewards r = β Σ_t (log π_θ − log π_ref) over each row's completion,
  β = `config.loss.beta` (the PRM's own)."""
  beta = float(exp.config.loss.beta)
  policy = rounds.logps_of_rows(exp, prm_params, rows)
  ref = rounds.logps_of_rows(exp, ref_params, rows)
  return np.asarray([beta * (np.sum(p["chosen"], dtype=np.float64)
                             - np.sum(r["chosen"], dtype=np.float64))
                     for p, r in zip(policy, ref)])


def evaluate(config, workdir: str, spec: BestOfN, out: str | None = None) -> dict:
  """Best-of-N accuracy of the implicit PRM trained in `workdir` (its newest checkpoint);
  written to `out` (default WORKDIR/best_of_n.json) and returned."""
  if config.loss.name != "implicit_prm":
    raise ConfigError(f"best-of-N scores responses with an implicit PRM; {workdir!r} trains "
                     f"loss {config.loss.name!r} (config.loss.name)")
  if spec.max_new_tokens is not None:
    config = config.copy_and_resolve_references()
    config.online.max_new_tokens = spec.max_new_tokens
  exp = build(config, workdir)
  ref_params = exp.ref_params if exp.ref_params is not None else exp.state.params
  prm_params = rounds.load_policy(exp, workdir)
  prompts = rounds.round_prompts(*prompt_source(exp, spec), spec.prompts, seed=spec.seed)
  key = jax.random.fold_in(jax.random.key(spec.seed), _BON_STREAM)
  completions = rounds.sample_responses(
      exp, generator_params(exp, ref_params, spec), [p["ids"] for p in prompts], spec.n,
      temperature=spec.temperature, key=key)
  candidates = rounds.candidates(exp, prompts, completions)
  verifier = oracles_lib.VerifierOracle(exp.tokenizer)
  correct = verifier.judge(candidates).correct  # [P, N]
  flat = [(p["ids"], ids) for p, responses in zip(prompts, completions) for ids in responses]
  rows = [TokenizedPair(n, np.asarray(prompt, np.int32), np.asarray(ids, np.int32), None)
          for n, (prompt, ids) in enumerate(flat)]  # prompt i's responses: rows i*N .. i*N+N-1
  rewards = response_rewards(exp, prm_params, ref_params, rows).reshape(len(prompts), spec.n)
  summary = {**picked_accuracy(rewards, correct), "bon/n": spec.n,
             "bon/prompts": len(prompts), "bon/temperature": spec.temperature,
             "bon/generator": spec.generator or (
                 f"π_ref + {spec.generator_sft_steps} SFT steps" if spec.generator_sft_steps
                 else "π_ref")}
  if jax.process_index() == 0:
    path = out or os.path.join(workdir, "best_of_n.json")
    with open(path + ".tmp", "w") as f:
      json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)
  return summary


# ---------------------------------------------------------------------------------------
# The paper's training data: the generator's rollouts, labelled by the verifier.


def rollout_records(exp: Experiment, params, pairs, source, *, prompts: int, k: int,
                    temperature: float, seed: int) -> list[dict]:
  """Unpaired records (prompt / completion / label: the README's unpaired layout) of K
  responses of `params` to each of `prompts` prompts of a split, labelled right or wrong by
  the verifier: the implicit PRM's training data as the paper builds it (UltraInteract
  instructions, 8 rollouts of Llama-3.1-8B-Instruct each, labelled by their final answer;
  Yuan et al. 2024, §4.1). Responses cut off at max_new_tokens (no eos) and empty ones
  (the unpaired layout refuses an empty completion) are left out."""
  chosen = rounds.round_prompts(pairs, source, prompts, seed=seed)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _BON_STREAM), 1)
  completions = rounds.sample_responses(exp, params, [p["ids"] for p in chosen], k,
                                        temperature=temperature, key=key)
  candidates = rounds.candidates(exp, chosen, completions)
  correct = oracles_lib.VerifierOracle(exp.tokenizer).judge(candidates).correct
  eos = int(exp.tokenizer.eos_id)
  records = []
  for i, p in enumerate(chosen):
    for j, ids in enumerate(completions[i]):
      if ids[-1:] == [eos] and candidates.texts[i][j].strip():  # finished, not empty
        records.append({"prompt": p["prompt"], "completion": candidates.texts[i][j],
                        "label": bool(correct[i, j]),
                        **({"answer": p["answer"]} if p["answer"] is not None else {})})
  return records


def prepare_rollout_data(config, workdir: str, *, sft_steps: int, prompts: int, k: int,
                         temperature: float = 1.0) -> tuple[str, str]:
  """The tiny implicit-PRM recipe's data, built as the paper's is: π_0 = the run's initial
  model after `sft_steps` of SFT on the train split's chosen responses (the generator, and
  the PRM's initial model and π_ref), exported to WORKDIR/generator (a Hugging Face
  checkpoint directory), and its rollouts on `prompts` train and `prompts` // 4 held-out
  prompts, K each, labelled by the verifier, in WORKDIR/rollouts/{train,test}.jsonl. Made
  once; returns (generator directory, rollouts directory)."""
  import models
  from flax import nnx

  generator_dir = os.path.join(workdir, "generator")
  data_dir = os.path.join(workdir, "rollouts")
  if os.path.exists(os.path.join(data_dir, "test.jsonl")):
    return generator_dir, data_dir
  exp = build(config, os.path.join(workdir, "prepare"))
  params = generator_params(exp, exp.state.params, BestOfN(generator_sft_steps=sft_steps))
  os.makedirs(data_dir, exist_ok=True)
  if jax.process_index() == 0:
    models.to_hf(nnx.merge(exp.graphdef, params), generator_dir)
  for split, pairs, source, n in (("train", exp.train_batches.pairs, exp.train_source, prompts),
                                  ("test", exp.eval_batches.pairs, exp.eval_source,
                                   max(1, prompts // 4))):
    records = rollout_records(exp, params, pairs, source, prompts=n, k=k,
                              temperature=temperature, seed=config.seed)
    logging.info("rollouts %s: %d responses, %.3f right", split, len(records),
                 np.mean([r["label"] for r in records]))
    if jax.process_index() == 0:
      path = os.path.join(data_dir, f"{split}.jsonl")
      with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
      os.replace(path + ".tmp", path)
  return generator_dir, data_dir
