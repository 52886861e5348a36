"""Best-of-N with an implicit PRM (training/best_of_n.py, experiments/best_of_n.py): the pick
and its accuracies, the generator's labelled rollouts as unpaired training records, the
evaluation of a trained micro PRM on its eval split and on a prompt file, and bad flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data import readers, synthetic
from tests.conftest import ROOT, micro_config
from training import best_of_n


def test_picked_accuracy_reads_the_argmax_and_breaks_ties_to_the_first():
  rewards = np.array([[0.1, 0.9, 0.3], [2.0, 2.0, -1.0], [0.0, 0.0, 5.0]])
  correct = np.array([[0, 1, 0], [0, 1, 1], [0, 0, 0]], np.float32)
  out = best_of_n.picked_accuracy(rewards, correct)
  assert out == {"bon/accuracy": pytest.approx(1 / 3),  # row 1 ties: the first (wrong) wins
                 "bon/random_accuracy": pytest.approx(3 / 9),
                 "bon/oracle_accuracy": pytest.approx(2 / 3)}


@pytest.mark.parametrize("kw, message", [
    (dict(n=0), "BestOfN.n must be an int >= 1"),
    (dict(prompts=True), "BestOfN.prompts must be an int >= 1"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(generator="/runs/policy", generator_sft_steps=5), "does not apply to the generator"),
])
def test_bad_settings_are_refused(kw, message):
  with pytest.raises(ValueError, match=message):
    best_of_n.BestOfN(**kw)


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory, tfds_dir):
  """A micro implicit-PRM run (CE objective) on the built-in task: (config, workdir)."""
  from training import loop

  config = micro_config(**{"loss.name": "implicit_prm", "loss.prm_objective": "ce",
                           "data.data_dir": tfds_dir})
  workdir = str(tmp_path_factory.mktemp("prm"))
  loop.train(config, workdir)
  return config, workdir


@pytest.mark.long
def test_a_trained_prm_is_evaluated_on_its_eval_split_and_on_a_prompt_file(prm_run, tmp_path):
  config, workdir = prm_run
  spec = best_of_n.BestOfN(n=4, prompts=8, generator_sft_steps=20, max_new_tokens=12)
  out = best_of_n.evaluate(config, workdir, spec)
  with open(os.path.join(workdir, "best_of_n.json")) as f:
    assert json.load(f) == out
  assert out["bon/n"] == 4 and out["bon/prompts"] == 8
  assert 0 <= out["bon/random_accuracy"] <= out["bon/oracle_accuracy"] <= 1
  assert out["bon/accuracy"] <= out["bon/oracle_accuracy"]
  assert out["bon/accuracy"] * 8 == round(out["bon/accuracy"] * 8)  # a pick per prompt
  # Prompts alone from a file (the paper's MATH500 role), read and tokenized as training does.
  prompts = [{"prompt": synthetic.format_prompt([i % 10, (3 * i) % 10, 7])} for i in range(12)]
  data = tmp_path / "prompts"
  data.mkdir()
  (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
  spec = best_of_n.BestOfN(n=2, prompts=5, max_new_tokens=12, data=str(data))
  out = best_of_n.evaluate(config, workdir, spec, out=str(tmp_path / "file.json"))
  assert out["bon/prompts"] == 5 and out["bon/generator"] == "π_ref"


def test_rollout_records_are_labelled_unpaired_records(prm_run):
  from training import experiment

  config, workdir = prm_run
  exp = experiment.build(config, workdir)
  records = best_of_n.rollout_records(exp, exp.state.params, exp.train_batches.pairs,
                                      exp.train_source, prompts=6, k=3, temperature=1.0, seed=0)
  assert 0 < len(records) <= 18
  for i, r in enumerate(records):
    assert r["label"] == synthetic.verify(r["prompt"], r["completion"])
    parsed = readers.normalize_record(r, file="rollouts.jsonl", index=i)  # the unpaired layout
    assert parsed["rejected"] is None and parsed["chosen_label"] == float(r["label"])


def test_cli_refuses_a_bad_flag_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.best_of_n", "--config=configs/implicit_prm.py:tiny",
       f"--workdir={tmp_path}", "--n=0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == "error: BestOfN.n must be an int >= 1, got 0"
