"""RewardBench-style pairwise accuracy (training/reward_bench.py) and the cyclic preference
set it is shown on (data/cyclic.py)."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from data import cyclic
from tests.conftest import ROOT, micro_config
from training import loop, reward_bench
from training.oracles import Judgement


def test_rpsls_is_a_regular_tournament_no_ranking_fits_beyond_seven_of_ten():
  for move in cyclic.MOVES:
    others = [m for m in cyclic.MOVES if m != move]
    assert sum(cyclic.beats(move, m) for m in others) == 2  # wins two, loses two
    assert all(cyclic.beats(move, m) != cyclic.beats(m, move) for m in others)
  assert cyclic.beats("paper", "rock") and cyclic.beats("Spock", "scissors")
  assert cyclic.beats("lizard", "Spock") and not cyclic.beats("rock", "paper")
  assert cyclic.best_order_accuracy() == 0.7
  for r in cyclic.make_records(50, seed=3):
    winner, loser = r["chosen"].split()[0], r["rejected"].split()[0]
    assert cyclic.beats(winner, loser) and r["prompt"] == cyclic.PROMPT


def test_section_scores_weigh_subsets_by_rewardbench_example_counts():
  accuracy = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5, "math-prm": 0.5,
              "hep-python": 1.0, "my-own-subset": 0.0}
  sections = reward_bench.section_scores(accuracy)
  chat = (100 * 1.0 + 28 * 0.5) / 128
  reasoning = (984 * 0.5 + 164 * 1.0) / (984 + 164)  # math-prm weighs as much as all code
  assert sections == pytest.approx({"Chat": chat, "Reasoning": reasoning,
                                    "score": (chat + reasoning) / 2})
  assert reward_bench.section_scores({"my-own-subset": 1.0}) == {}
  # Every subset of RewardBench's sections has its example count.
  assert set(itertools.chain(*reward_bench.SECTIONS.values())) == set(reward_bench.EXAMPLE_COUNTS)


class _FixedOracle:
  """An oracle with a given s(chosen ≻ rejected) per record (the interface rounds use)."""

  def __init__(self, s):
    self.s = np.asarray(s, np.float64)

  def judge(self, candidates):
    assert [len(c) for c in candidates.completions] == [2] * len(self.s)
    scores = np.zeros((len(self.s), 2, 2))
    scores[:, 0, 1], scores[:, 1, 0] = self.s, -self.s
    return Judgement(preferences=1 / (1 + np.exp(-scores)), scores=scores)


def test_a_tie_counts_as_wrong_as_in_rewardbench():
  from data.pipeline import TokenizedPair

  pairs = [TokenizedPair(i, np.array([1]), np.array([2]), np.array([3])) for i in range(4)]
  correct = reward_bench.chosen_wins(_FixedOracle([2.0, 0.0, -1.0, 1e-6]), pairs, ["p"] * 4)
  assert correct.tolist() == [1.0, 0.0, 0.0, 1.0]
  report = reward_bench.summarize(correct, ["a", "a", "b", "b"], dropped=3)
  assert report["accuracy"] == 0.5 and report["dropped"] == 3
  assert report["subsets"] == {"a": {"accuracy": 0.5, "pairs": 2},
                               "b": {"accuracy": 0.5, "pairs": 2}}


def test_evaluate_scores_a_trained_gpm_per_subset_and_section(tmp_path):
  """A micro GPM (6 steps) scored on its own held-out split, then on a RewardBench-layout
  file: the subsets, the sections from them, the dropped identical pair, and the accuracy
  equal to the oracle's own judgement of each pair."""
  def sorts(n, subsets):
    return [{"prompt": f"sort {i % 10} 3 1:", "chosen": f" 1 3 {i}", "rejected": f" 3 1 {i}",
             "subset": subsets[i % len(subsets)]} for i in range(n)]

  # Trained on one file: its eval split is held out of it, as training holds it out.
  train_file = tmp_path / "sorts.jsonl"
  train_file.write_text("".join(json.dumps(r) + "\n" for r in sorts(160, ["x", "y"])))
  run = str(tmp_path / "gpm")
  loop.train(micro_config(**{"loss.name": "gpm", "data.path": str(train_file)}), run)
  own = reward_bench.evaluate(run)
  # Whole prompts are held out: each of the 10 prompts has 16 records.
  assert 0 < own["pairs"] < 160 and own["pairs"] % 16 == 0 and own["split"] == "test"
  assert sum(v["pairs"] for v in own["subsets"].values()) == own["pairs"]
  assert set(own["subsets"]) <= {"x", "y"} and own["sections"] == {}

  subsets = ["alpacaeval-easy"] * 3 + ["math-prm"] * 2 + ["hep-python"] * 2 + ["mine"]
  records = sorts(8, subsets)
  records.insert(4, {"prompt": "sort 2 1:", "chosen": " 1 2", "rejected": " 1 2",
                     "subset": "math-prm"})  # identical: the pipeline drops it
  data = tmp_path / "bench"
  data.mkdir()
  (data / "filtered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

  result = reward_bench.evaluate(run, str(data), "filtered", data_dir=str(tmp_path / "cache"))
  assert result["pairs"] == 8 and result["dropped"] == 1 and result["loss"] == "gpm"
  assert {k: v["pairs"] for k, v in result["subsets"].items()} == {
      "alpacaeval-easy": 3, "math-prm": 2, "hep-python": 2, "mine": 1}
  per_subset = {k: v["accuracy"] for k, v in result["subsets"].items()}
  assert result["sections"] == pytest.approx(reward_bench.section_scores(per_subset))
  assert set(result["sections"]) == {"Chat", "Reasoning", "score"}
  weights = {k: v["pairs"] for k, v in result["subsets"].items()}
  assert result["accuracy"] == pytest.approx(
      sum(per_subset[k] * weights[k] for k in weights) / 8)

  # The gpo recipe's --reward_bench: the run's scorer GPM scored the same way, in its table.
  from configs.reproduce import gpo
  from experiments import reproduce

  config = gpo.get_config("tiny")
  config.online.update(scorer="gpm", scorer_path=run)
  bench = reproduce.scorer_on_reward_bench(config, str(data))
  assert bench["sections"] == pytest.approx(result["sections"])
  summary = {"rounds": [{"round": 0, "eval/win_rate": 0.5}], "reward_bench": bench}
  record = reproduce.results_record("gpo", "tiny", config, summary, 1.0)
  md = reproduce.results_markdown(record)
  assert f"RewardBench average (8 pairs, 1 dropped) | {100 * bench['sections']['score']:.4f}" in md
  config.online.scorer = "verifier"
  with pytest.raises(ValueError, match="scores the run's preference-model scorer"):
    reproduce.scorer_on_reward_bench(config, str(data))


def test_command_line_refuses_a_run_that_is_not_a_reward_model(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"loss": {"name": "dpo"}}))
  proc = subprocess.run([sys.executable, "-m", "experiments.reward_bench",
                         f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "'dpo' run" in proc.stderr and "gpm or bt_reward" in proc.stderr
