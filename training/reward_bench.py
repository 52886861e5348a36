"""Pairwise accuracy of a trained preference model, RewardBench's way.

    result = evaluate(gpm_or_bt_workdir, data="/data/reward-bench", split="filtered")
    python -m experiments.reward_bench --workdir=RUN --data=/data/reward-bench --split=filtered

A `gpm` or `bt_reward` run (its config.json and newest checkpoint) scores each held-out
(prompt, chosen, rejected) record as the online rounds' oracle does
(`training.oracles.PreferenceModelOracle`: the same tokenization, chat template and
last-token head); a record counts as right when s(chosen ≻ rejected) > 0, a tie as wrong, as
RewardBench counts `score_chosen > score_rejected` (Lambert et al. 2024, arXiv 2403.13787;
allenai/reward-bench). Reported:

  accuracy      over all scored records;
  subsets       accuracy and count per record's `subset` field (RewardBench's column);
  sections      where the subsets are RewardBench's: Chat, Chat Hard, Safety, Reasoning, each
                the example-count-weighted mean of its subsets' accuracies (RewardBench's
                `EXAMPLE_COUNTS`, math-prm counted as 984 to weigh as much as the code
                subsets), and `score`, the mean of the sections present: the "RewardBench
                average" papers quote (the GPM paper's Table: 91.90 for GPM d=8 on
                Llama-3.1-8B-Instruct, BT 90.56);
  dropped       records the pipeline did not keep (a prompt longer than data.max_prompt_len
                with on_long_prompt='drop', identical responses), never scored silently.

Without `data`, the run's own eval split is scored (the built-in task's held-out pairs).
"""

from __future__ import annotations

import os

import numpy as np

# RewardBench's sections and the example counts that weight their subsets
# (allenai/reward-bench, rewardbench/constants.py: SUBSET_MAPPING, EXAMPLE_COUNTS).
SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
             "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                  "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python",
                  "hep-rust"),
}
EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "math-prm": 984,  # 447 records, weighted up to the code subsets' 6 x 164
    "refusals-dangerous": 100, "refusals-offensive": 100, "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46, "xstest-should-refuse": 250, "xstest-should-respond": 154,
    "donotanswer": 136, "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164,
    "hep-python": 164, "hep-rust": 164,
}
_NO_SUBSET = "all"


def section_scores(subset_accuracy: dict[str, float]) -> dict[str, float]:
  """{section: weighted accuracy} over the RewardBench subsets present, plus "score", the
  mean of those sections; {} when no subset is RewardBench's."""
  sections = {}
  for section, subsets in SECTIONS.items():
    present = [s for s in subsets if s in subset_accuracy]
    if present:
      weight = sum(EXAMPLE_COUNTS[s] for s in present)
      sections[section] = sum(subset_accuracy[s] * EXAMPLE_COUNTS[s] for s in present) / weight
  if sections:
    sections["score"] = float(np.mean(list(sections.values())))
  return sections


def summarize(correct: np.ndarray, subsets: list[str], dropped: int = 0) -> dict:
  """The report of module docstring from per-record 0/1 `correct` and their subsets."""
  correct = np.asarray(correct, np.float64)
  per_subset = {}
  for name in sorted(set(subsets)):
    picked = correct[[s == name for s in subsets]]
    per_subset[name] = {"accuracy": float(picked.mean()), "pairs": int(picked.size)}
  return {"accuracy": float(correct.mean()) if correct.size else float("nan"),
          "pairs": int(correct.size), "dropped": int(dropped), "subsets": per_subset,
          "sections": section_scores({k: v["accuracy"] for k, v in per_subset.items()})}


def chosen_wins(oracle, pairs, prompts: list[str]) -> np.ndarray:
  """[N] 1.0 where the oracle's s(chosen ≻ rejected) > 0, else 0.0 (ties lose)."""
  from training.oracles import Candidates

  candidates = Candidates(
      prompts=prompts, prompt_ids=[list(p.prompt) for p in pairs],
      completions=[[list(p.chosen), list(p.rejected)] for p in pairs],
      texts=[["", ""] for _ in pairs], answers=[None] * len(pairs))
  scores = oracle.judge(candidates).scores  # [N, 2, 2] on the logit scale
  return (scores[:, 0, 1] > 0).astype(np.float64)


def _subsets(source, path: str, split: str) -> list[str]:
  """Each example's `subset` field ('all' where its record has none), by its record's
  position in the split's files (`PreferenceSource.position`)."""
  from data import readers

  column = readers.read_column(readers.split_files(path, split), "subset")
  return [str(column[source.position(i)] or _NO_SUBSET) for i in range(len(source))]


def evaluate(workdir: str, data: str | None = None, split: str | None = None, *,
             data_dir: str | None = None, batch_size: int = 32) -> dict:
  """The pairwise accuracy report of the `gpm` / `bt_reward` run in `workdir` on `data`'s
  `split` (default: the run's own data and eval split). `data_dir` caches the prepared data
  (default WORKDIR/tfds)."""
  from data import pipeline, tfds_builders
  from data.tokenizer import load_tokenizer
  from training.experiment import tokenize_limits
  from training.mesh import make_mesh
  from training.oracles import PreferenceModelOracle, read_run_config

  run = read_run_config(workdir, "reward_bench.evaluate")
  mesh = make_mesh(run_mesh(run))
  oracle = PreferenceModelOracle.from_workdir(workdir, mesh, batch_size=batch_size)
  config = oracle.config
  if data is None:  # the run's own eval split, held out of its data as training held it out
    from training.experiment import load_sources

    if split:
      config.data.eval_split = split
    path, split = config.data.path, config.data.eval_split
    if data_dir:
      config.data.data_dir = data_dir
    source = load_sources(config, workdir)[1]
    read_split = _source_split(path, split)
  else:
    path, split = data, split or "test"
    source = tfds_builders.load_preference_source(
        path, split, data_dir or os.path.join(workdir, "tfds"))
    read_split = split
  tokenizer = load_tokenizer(config.data.tokenizer)
  pairs = [p for p in pipeline.tokenize(source, tokenizer, tokenize_limits(config))
           if p.rejected is not None]
  subsets = _subsets(source, path, read_split) if path else [_NO_SUBSET] * len(source)
  ids = [int(p.example_id) for p in pairs]
  correct = chosen_wins(oracle, pairs, [source[i]["prompt"] for i in ids])
  result = summarize(correct, [subsets[i] for i in ids], dropped=len(source) - len(pairs))
  return {"workdir": workdir, "loss": config.loss.name, "data": path or "the built-in sorting "
          "task", "split": split, **result}


def _source_split(path: str, split: str) -> str:
  """The split of `path`'s files that holds `split`'s records: itself, or the one split an
  absent eval split is held out of (`data.readers.held_out_of`)."""
  from data import readers

  return (readers.held_out_of(path, split) or split) if path else split


def run_mesh(run: dict, num_devices: int | None = None):
  """The scorer's mesh: the run's fsdp x tensor with `data` taking the other devices, or all
  devices data-parallel where the run's layout does not divide this host's devices (a model
  trained on 8 chips scored on one)."""
  import jax
  import ml_collections

  num_devices = jax.device_count() if num_devices is None else num_devices
  mesh = run.get("mesh", {})
  fsdp, tensor = int(mesh.get("fsdp", 1)), int(mesh.get("tensor", 1))
  if num_devices % (fsdp * tensor):
    fsdp = tensor = 1
  return ml_collections.ConfigDict({"data": -1, "fsdp": fsdp, "tensor": tensor})


def train_and_score(configs: dict, workdir: str) -> dict:
  """Trains each reward model of `configs` ({name: config of a gpm / bt_reward run}) in
  WORKDIR/reward_model_<name> (a finished run resumes as a no-op) and scores it on its own
  eval split; {name: report}, also written to WORKDIR/reward_models.json (process 0)."""
  import json

  import jax

  from training import loop

  reports = {}
  for name, config in configs.items():
    run_dir = os.path.join(workdir, f"reward_model_{name}")
    loop.train(config, run_dir)
    reports[name] = evaluate(run_dir)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "reward_models.json")
    with open(path + ".tmp", "w") as f:
      json.dump(reports, f, indent=2)
    os.replace(path + ".tmp", path)
  return reports
