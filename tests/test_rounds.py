"""Online rounds (training/rounds.py): anchors that move as the papers say, round state on
disk that resumes exactly, PRIME's PRM carried from round to round, and the evaluation rows."""

import json
import math
import os

import jax
import numpy as np
import pytest

import algorithms
from verification import game_worlds
from tests.conftest import micro_online, micro_online_flags, seed_round_0
from data.tokenizer import ByteTokenizer
from training import config_check, rounds

TOKENIZER = ByteTokenizer()

ONLINE = ("online_dpo", "dno", "inpo", "gpo", "prime")


def _read(path):
  with open(path) as f:
    return json.load(f)


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------
# The declaration.


def test_online_algorithms_declare_their_round():
  assert rounds.online_algorithms() == sorted(ONLINE)
  req = {n: algorithms.get_algorithm(n).requirements for n in ONLINE}
  assert [req[n].online.rows for n in ONLINE] == ["best_worst"] * 3 + ["gpo_targets", "groups"]
  # Which frozen models each step reads: π_ref = π_0 fixed, π_t moving.
  slots = lambda n: sorted(rounds.frozen_models(req[n], rounds.Anchors("π_0", "π_t")))  # noqa
  assert [slots(n) for n in ONLINE] == [["ref"], ["prev"], ["prev", "ref"], ["prev"], ["prev"]]
  assert req["prime"].online.prm and not any(req[n].online.prm for n in ONLINE[:-1])
  anchors = rounds.advance(rounds.Anchors("π_0", "π_0", "prm_0"), "π_1", "prm_1")
  assert anchors == rounds.Anchors("π_0", "π_1", "prm_1")
  assert rounds.advance(anchors, "π_2") == rounds.Anchors("π_0", "π_2", "prm_1")


def _driver_iterates(needs, objective, theta0, num_rounds: int) -> np.ndarray:
  """The driver's anchor logic (frozen_models, advance) on a tabular world: each round
  minimises the world's exact expected loss given the frozen slots the algorithm asks for."""
  from verification.common import adam

  minimise = jax.jit(lambda theta, frozen: adam(objective, theta, frozen,
                                                steps=game_worlds.ROUND_STEPS,
                                                learning_rate=0.1)[0])
  anchors = rounds.Anchors(reference=theta0, previous=theta0)
  thetas = [theta0]
  for _ in range(num_rounds):
    theta = minimise(anchors.previous, rounds.frozen_models(needs, anchors))
    anchors = rounds.advance(anchors, theta)
    thetas.append(theta)
  return np.stack([np.asarray(t, np.float64) for t in thetas])


@pytest.mark.parametrize("name", ["dno", "inpo"])
def test_driver_reproduces_the_tabular_worlds(name):
  """The round logic (which model fills which frozen slot, what moves after a round) run on
  the cyclic-preference world with exact expectations gives the world's own iterates."""
  from verification import tabular

  pref = game_worlds.cyclic_preferences()
  needs = algorithms.get_algorithm(name).requirements
  if name == "dno":
    space, objective = game_worlds.dno_round_objective(pref, game_worlds.DNO_ETA)
    expected = game_worlds.dno_iterates(pref, game_worlds.DNO_ETA, rounds=6)
    theta0 = np.zeros(space.num_edges, np.float32)
  else:
    space, objective = game_worlds.inpo_round_objective(pref, game_worlds.INPO_ETA,
                                                        game_worlds.INPO_RATIO)
    expected = game_worlds.inpo_iterates(pref, game_worlds.INPO_REF, game_worlds.INPO_ETA,
                                         game_worlds.INPO_RATIO, rounds=6)
    theta0 = np.asarray(tabular.logits_for(space, game_worlds.INPO_REF), np.float32)
  thetas = _driver_iterates(needs, objective, jax.numpy.asarray(theta0), 6)
  policies = np.stack([tabular.probs_np(space, t) for t in thetas])
  np.testing.assert_allclose(policies, expected, atol=1e-5)
  assert np.abs(policies[-1] - policies[0]).max() > 0.05  # the rounds did move the policy


# ---------------------------------------------------------------------------------------
# Rows from scored samples.


def test_best_worst_pairs_margin_filter_and_soft_labels():
  prompts = [{"ids": [1, 2]}, {"ids": [1, 3]}, {"ids": [1, 4]}]
  completions = [[[5], [6], [7]], [[5], [6], [7]], [[5], [6], [7]]]
  rewards = np.array([[1.0, 0.2, 0.1], [0.5, 0.5, 0.5], [0.3, 0.2, 0.25]])
  prefs = ((rewards[:, :, None] > rewards[:, None, :])
           + 0.5 * (rewards[:, :, None] == rewards[:, None, :]))
  pairs = rounds.best_worst_pairs(prompts, completions, prefs, min_margin=0.0,
                                  soft_labels=True)
  assert [(p.chosen.tolist(), p.rejected.tolist()) for p in pairs] == [([5], [7]), ([5], [6])]
  assert pairs[0].extras["preference_prob"] == pytest.approx(1 / (1 + math.exp(-1.0)))
  # Tied prompts never make a pair; the margin filter keeps only clear winners.
  strict = rounds.best_worst_pairs(prompts, completions, prefs, min_margin=0.75,
                                   soft_labels=False)
  assert len(strict) == 2 and not strict[0].extras
  assert len(rounds.best_worst_pairs(prompts, completions, prefs, min_margin=0.9,
                                     soft_labels=False)) == 2
  rates = rounds.win_rates_of(prefs)
  np.testing.assert_allclose(rates[0], [1.0, 0.5, 0.0])


def test_step_reads_the_rounds_frozen_log_probs_from_the_batch():
  """An online batch carries π_ref's and π_t's log-probs: the step puts each in its own slot
  and runs no frozen forward (no frozen params are given)."""
  from data.pipeline import TokenizedPair, collate
  from tests.conftest import micro_config
  from training import experiment
  from training.mesh import make_mesh
  from training.step import loss_inputs

  config = micro_config()
  mesh = make_mesh(config.mesh)
  graphdef, params = experiment.init_params(config, mesh)
  extras = {f"{slot}_{side}_logps": [float(v) for v in (np.arange(3) + offset)]
            for slot, offset in (("ref", 0.5), ("prev", -1.5)) for side in ("chosen", "rejected")}
  pair = TokenizedPair(0, np.array([1, 40, 41], np.int32), np.array([50, 51, 2], np.int32),
                       np.array([52, 53, 2], np.int32), extras)
  batch = {k: jax.numpy.asarray(v) for k, v in collate([pair, pair], 8, 0).items()}
  inputs = loss_inputs(graphdef, params, None, batch, algorithms.get_algorithm("inpo"))
  np.testing.assert_allclose(np.asarray(inputs.ref_chosen_logps)[0, 3:6], [0.5, 1.5, 2.5])
  np.testing.assert_allclose(np.asarray(inputs.prev_rejected_logps)[0, 3:6], [-1.5, -.5, .5])
  assert float(np.abs(np.asarray(inputs.prev_chosen_logps)[:, :3]).max()) == 0.0


# ---------------------------------------------------------------------------------------
# Whole runs at micro size.


def _params_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _check_round_files(workdir, num_rounds: int, total_steps: int):
  """Every round's stages are complete and its training log has each step exactly once."""
  for t in range(1, num_rounds + 1):
    d = os.path.join(workdir, f"round_{t}")
    for name in ("samples.json", "scores.json", "rows.json", "eval.json",
                 "eval_samples.json"):
      assert os.path.exists(os.path.join(d, name)), (t, name)
    steps = [r["step"] for r in _lines(os.path.join(d, "metrics.jsonl")) if "loss" in r]
    assert steps == list(range(1, total_steps + 1)), (t, steps)
  rows = _lines(os.path.join(workdir, "metrics.jsonl"))
  assert [r["round"] for r in rows] == list(range(num_rounds + 1))
  for row in rows:
    assert set(row) >= {"round", "eval/win_rate", "eval/lc_win_rate", "eval/length",
                        "eval/accuracy"}
  assert rows[0]["eval/win_rate"] == 0.5
  assert os.path.getsize(os.path.join(workdir, "rounds.png")) > 0


class _Killed(Exception):
  pass


@pytest.mark.long
def test_killed_run_resumes_in_the_right_stage_and_ends_equal(tmp_path, tfds_dir,
                                                              monkeypatch, online_start):
  """Stopped during round 2's sampling (a crash) and again inside round 2's training (a
  preemption at step 2), resumed each time: the parameters of an uninterrupted run, every
  round's files complete, no training step missing or repeated."""
  make = lambda: micro_online("dno", tfds_dir, rounds=3)  # noqa: E731
  for name in ("whole", "split"):
    seed_round_0(online_start, str(tmp_path / name))
  whole = rounds.iterate(make(), str(tmp_path / "whole"))
  _check_round_files(str(tmp_path / "whole"), 3, 4)

  split = str(tmp_path / "split")
  real_sample = rounds.sample_responses
  calls = []

  def dies_in_round_2(exp, params, prompt_ids, k, **kwargs):
    if k > 1:  # a rollout (the evaluations draw one response per prompt)
      calls.append(k)
    if len(calls) == 2:  # round 2's rollout
      raise _Killed
    return real_sample(exp, params, prompt_ids, k, **kwargs)

  monkeypatch.setattr(rounds, "sample_responses", dies_in_round_2)
  with pytest.raises(_Killed):
    rounds.iterate(make(), split)
  assert not os.path.exists(os.path.join(split, "round_2", "samples.json"))
  monkeypatch.setattr(rounds, "sample_responses", real_sample)
  stopped = rounds.iterate(make(), split, stop_at=(2, 2))
  assert stopped["stopped_early"] and stopped["stopped_in_round"] == 2
  resumed = rounds.iterate(make(), split)
  _params_equal(whole["params"], resumed["params"])
  _check_round_files(split, 3, 4)
  for t in (1, 2, 3):
    for name in ("rows.json", "eval.json"):
      assert _read(os.path.join(split, f"round_{t}", name)) == _read(
          os.path.join(tmp_path, "whole", f"round_{t}", name)), (t, name)


def test_inpo_feeds_two_distinct_frozen_models_after_round_1(tmp_path, tfds_dir, online_start):
  """Round 1: π_t = π_0 = π_ref, both slots equal. Round 2: the reference slot holds π_0's
  log-probs and the previous-iterate slot round 1's policy's, which differ."""
  from data.pipeline import TokenizedPair
  from training import experiment

  config = micro_online("inpo", tfds_dir)
  workdir = str(tmp_path)
  seed_round_0(online_start, workdir)
  rounds.iterate(config, workdir)
  round_1 = _read(os.path.join(workdir, "round_1", "rows.json"))
  round_2 = _read(os.path.join(workdir, "round_2", "rows.json"))
  for row in round_1:
    assert row["extras"]["ref_chosen_logps"] == row["extras"]["prev_chosen_logps"]
  gaps = [np.abs(np.subtract(r["extras"]["ref_chosen_logps"],
                             r["extras"]["prev_chosen_logps"])).max() for r in round_2]
  assert max(gaps) > 1e-3
  # Each slot holds what it should: π_0 (round_0/policy) and π_1 (round 1's checkpoint).
  exp = experiment.build(config, workdir)
  rows = [TokenizedPair(r["id"], np.asarray(r["prompt"]), np.asarray(r["chosen"]),
                        np.asarray(r["rejected"]), {}) for r in round_2[:8]]
  for slot, path in (("ref", "round_0/policy"), ("prev", "round_1")):
    logps = rounds.logps_of_rows(exp, rounds.load_policy(exp, os.path.join(workdir, path)),
                                  rows)
    for row, want in zip(round_2[:8], logps):
      np.testing.assert_allclose(row["extras"][f"{slot}_chosen_logps"], want["chosen"],
                                 atol=1e-5)
      np.testing.assert_allclose(row["extras"][f"{slot}_rejected_logps"], want["rejected"],
                                 atol=1e-5)


@pytest.mark.long
def test_prime_uses_the_prm_of_the_previous_rollout(tmp_path, tfds_dir, online_start):
  """PRIME: the first rollout's process rewards are 0 (π_φ = π_ref = π_0); the PRM updated on
  it is saved, scores the next rollout (recomputed here from the saved PRM), and its rewards
  are non-zero. Each rollout trains on fresh samples."""
  from data.pipeline import TokenizedPair
  from training import experiment

  config = micro_online("prime", tfds_dir, rounds=1, rollouts_per_round=2)
  workdir = str(tmp_path)
  seed_round_0(online_start, workdir)
  summary = rounds.iterate(config, workdir)
  first = os.path.join(workdir, "round_1", "rollout_0")
  second = os.path.join(workdir, "round_1", "rollout_1")
  rows_1, rows_2 = (_read(os.path.join(d, "rows.json")) for d in (first, second))
  assert all(not any(r["extras"]["process_rewards"]) for r in rows_1)
  assert max(np.abs(r["extras"]["process_rewards"]).max() for r in rows_2) > 1e-4
  assert _read(os.path.join(first, "samples.json")) != _read(os.path.join(second,
                                                                          "samples.json"))
  losses = _read(os.path.join(first, "prm.json"))["losses"]
  assert losses and all(math.isfinite(x) for x in losses)
  exp = experiment.build(config, workdir)
  prm = rounds.load_policy(exp, os.path.join(first, "prm"))
  ref = rounds.load_policy(exp, os.path.join(workdir, "round_0", "policy"))
  rows = [TokenizedPair(r["id"], np.asarray(r["prompt"]), np.asarray(r["chosen"]), None, {})
          for r in rows_2[:8]]
  for row, p, q in zip(rows_2, rounds.logps_of_rows(exp, prm, rows),
                       rounds.logps_of_rows(exp, ref, rows)):
    np.testing.assert_allclose(row["extras"]["process_rewards"],
                               np.subtract(p["chosen"], q["chosen"]), atol=1e-5)
  _params_equal(summary["prm"], rounds.load_policy(exp, os.path.join(second, "prm")))


def test_evaluate_cli_reproduces_a_rounds_evaluation(tmp_path, tfds_dir, online_start):
  """experiments/evaluate.py on round 1's checkpoint gives round 1's eval row."""
  import subprocess
  import sys

  from tests.conftest import ROOT

  config = micro_online("online_dpo", tfds_dir, rounds=1)
  workdir = str(tmp_path)
  seed_round_0(online_start, workdir)
  rounds.iterate(config, workdir)
  flags = micro_online_flags(tfds_dir, rounds=1)
  out = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--config=configs/online_dpo.py:tiny",
       f"--workdir={workdir}", f"--checkpoint={workdir}/round_1", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  expected = _read(os.path.join(workdir, "round_1", "eval.json"))
  for key in ("eval/win_rate", "eval/lc_win_rate", "eval/length", "eval/accuracy"):
    assert result[key] == pytest.approx(expected[key], abs=1e-6), key


# ---------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("field, value, message", [
    ("online.scorer", "gpt5", "config.online.scorer must be one of"),
    ("online.rounds", 0, "config.online.rounds must be an integer >= 1"),
    ("online.rollouts_per_round", -1, "config.online.rollouts_per_round"),
    ("online.min_margin", 1.5, "config.online.min_margin"),
    ("online.prompt_order", "shuffle", r"config.online.prompt_order must be one of \['resample'"),
    ("online.scorer_path", "", None),
])
def test_bad_online_values_are_refused_before_compute(field, value, message, tfds_dir):
  config = micro_online("dno", tfds_dir)
  section, key = field.split(".")
  config[section][key] = value
  if message is None:  # the default scorer needs no path
    config_check.validate(config)
    return
  with pytest.raises(ValueError, match=message):
    config_check.validate(config)


def test_offline_and_online_entry_points_refuse_each_other(tmp_path, tfds_dir):
  from tests.conftest import micro_config
  from training import loop

  with pytest.raises(config_check.ConfigError, match="experiments.iterate"):
    loop.train(micro_online("dno", tfds_dir), str(tmp_path / "a"))
  with pytest.raises(config_check.ConfigError, match="experiments.train"):
    rounds.iterate(micro_config(**{"data.data_dir": tfds_dir}), str(tmp_path / "b"))


def judge_prefers_shorter(prompts, first, second):
  """A pairwise judge for the tests: the shorter response wins."""
  return [1.0 if len(a) < len(b) else 0.0 if len(a) > len(b) else 0.5
          for a, b in zip(first, second)]


def judge_returns_nan(prompts, first, second):
  return [float("nan")] * len(prompts)


def test_a_judge_callable_scores_the_rounds_and_its_failures_name_it(tmp_path, tfds_dir,
                                                                    online_start):
  from training import oracles

  config = micro_online("gpo", tfds_dir, rounds=1, scorer="judge",
                        judge="tests.test_rounds:judge_prefers_shorter")
  for name in ("ok", "nan"):
    seed_round_0(online_start, str(tmp_path / name))
  summary = rounds.iterate(config, str(tmp_path / "ok"))
  assert [r["round"] for r in summary["rounds"]] == [0, 1]
  scores = _read(os.path.join(tmp_path, "ok", "round_1", "scores.json"))
  prefs = np.asarray(scores["preferences"])
  np.testing.assert_allclose(prefs + np.swapaxes(prefs, 1, 2), 1.0)
  config.online.judge = "tests.test_rounds:judge_returns_nan"
  with pytest.raises(oracles.OracleError, match="judge_returns_nan"):
    rounds.iterate(config, str(tmp_path / "nan"))


def test_round_prompts_are_the_training_pairs_prompts():
  """A round samples after exactly the prompt ids training sees (the pipeline's: chat
  template, truncation), skips records the pipeline dropped and repeated prompts, and carries
  the record's chosen ids (DNO's teacher) and reference answer."""
  from data.pipeline import TokenizeLimits, tokenize
  from data.tokenizer import ByteTokenizer

  tokenizer = ByteTokenizer()
  records = [{"prompt": f"question {i % 6}", "chosen": f"yes {i}",
              "rejected": f"no {i}", "answer": str(i)} for i in range(12)]
  records[3]["rejected"] = records[3]["chosen"]  # dropped: no preference
  pairs = tokenize(records, tokenizer, TokenizeLimits(max_prompt_len=8, max_completion_len=16))
  by_id = {p.example_id: p for p in pairs}
  prompts = rounds.round_prompts(pairs, records, num_prompts=100, seed=3)
  texts = [p["prompt"] for p in prompts]
  assert len(texts) == len(set(texts)) == 6  # 12 records, 6 prompts
  for p in prompts:
    index = int(p["answer"])
    assert index != 3 and p["prompt"] == records[index]["prompt"]
    assert p["ids"] == by_id[index].prompt.tolist() and len(p["ids"]) <= 8  # cut on the left
    assert p["teacher"] == by_id[index].chosen.tolist()
    assert p["teacher"][-1] == tokenizer.eos_id
  assert rounds.round_prompts(pairs, records, 4, seed=3) == prompts[:4]
  assert rounds.round_prompts(pairs, records, 4, seed=4) != prompts[:4]


def _prompt_experiment(num_records: int, **online):
  """The parts of an Experiment that choosing prompts reads: the DNO tiny config (with
  `online` overrides) and a train split of `num_records` distinct text prompts."""
  import types

  from configs import dno
  from data.pipeline import TokenizeLimits, tokenize

  config = dno.get_config("tiny")
  config.online.update(online)
  records = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(num_records)]
  pairs = tokenize(records, TOKENIZER, TokenizeLimits(max_prompt_len=8, max_completion_len=4))
  split = types.SimpleNamespace(pairs=pairs)
  return types.SimpleNamespace(config=config, train_source=records, train_batches=split,
                               eval_source=records, eval_batches=split)


def test_partitioned_prompts_are_disjoint_slices_of_one_order():
  """prompt_order='partition' (DNO's and SPPO's per-iteration prompt sets): rollout r takes
  the r-th slice of one seeded order, so no prompt repeats across the run; 'resample' draws
  each rollout afresh; a split too small for every slice is refused before any compute."""
  from data.errors import DataError

  exp = _prompt_experiment(30, prompt_order="partition", num_prompts=10, rounds=3)
  slices = [[p["prompt"] for p in rounds.rollout_prompts(exp, r)] for r in range(3)]
  assert all(len(s) == 10 for s in slices) and len(set(sum(slices, []))) == 30
  assert slices[0] == [p["prompt"] for p in rounds.round_prompts(
      exp.train_batches.pairs, exp.train_source, 10, seed=exp.config.seed)]
  rounds.check_online_data(exp, verifier=False)
  resampled = _prompt_experiment(30, num_prompts=10, rounds=3)
  draws = [{p["prompt"] for p in rounds.rollout_prompts(resampled, r)} for r in range(3)]
  assert len(set.union(*draws)) < 30  # fresh draws overlap
  small = _prompt_experiment(29, prompt_order="partition", num_prompts=10, rounds=3)
  with pytest.raises(DataError, match=r"needs 30 distinct prompts .* 3 x 1 x 10\), split "
                                      r"'train' has 29"):
    rounds.check_online_data(small, verifier=False)
  with pytest.raises(DataError, match="rollout 2 found 9 left"):
    rounds.rollout_prompts(small, 2)


def _wait_for(predicate, process, timeout: float = 600.0):
  import time

  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, process.stderr.read()[-3000:]
    assert time.time() < deadline, "timed out"
    time.sleep(0.005)


@pytest.mark.slow
def test_kill_9_during_sampling_and_training_resumes_to_the_same_end(tmp_path, tfds_dir,
                                                                      online_start):
  """The CLI killed with SIGKILL while round 2 samples, and again while round 2 trains, then
  run to the end: round 3's policy equals an uninterrupted run's, bit for bit."""
  import signal
  import subprocess
  import sys

  from tests.conftest import ROOT
  from training import experiment

  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  for workdir in (whole, split):
    seed_round_0(online_start, workdir)
  rounds.iterate(micro_online("dno", tfds_dir, rounds=3), whole)
  command = [sys.executable, "-m", "experiments.iterate", "--config=configs/dno.py:tiny",
             f"--workdir={split}", *micro_online_flags(tfds_dir, rounds=3)]
  progress = os.path.join(split, "round_2", "progress.json")
  stage = lambda: os.path.exists(progress) and _read(progress)["stage"]  # noqa: E731
  for until in (lambda: stage() == "sampling",
                lambda: os.path.exists(os.path.join(split, "round_2", "checkpoints", "2"))):
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(until, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if stage() == "sampling":  # killed before the stage's file was written
      assert not os.path.exists(os.path.join(split, "round_2", "samples.json"))
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  _check_round_files(split, 3, 4)
  config = micro_online("dno", tfds_dir, rounds=3)
  exp = experiment.build(config, whole)
  _params_equal(rounds.load_policy(exp, os.path.join(whole, "round_3")),
                rounds.load_policy(exp, os.path.join(split, "round_3")))


def test_dno_round_with_teacher_candidates_and_soft_labels(tmp_path, tfds_dir, online_start):
  """DNO's options: the data's chosen response joins the K samples as a candidate (DNO-Prct's
  teacher), and each pair carries Alg. 1's soft label, which the loss then trains on."""
  from data import synthetic

  config = micro_online("dno", tfds_dir, rounds=1, teacher=True, soft_labels=True)
  workdir = str(tmp_path)
  seed_round_0(online_start, workdir)
  rounds.iterate(config, workdir)
  samples = _read(os.path.join(workdir, "round_1", "samples.json"))
  assert all(len(c) == config.online.num_samples + 1 for c in samples["completions"])
  scores = _read(os.path.join(workdir, "round_1", "scores.json"))
  assert all(row[-1] == 1.0 for row in scores["correct"])  # the teacher sorts right
  eos = [TOKENIZER.eos_id]
  for prompt in samples["prompts"][:4]:
    assert prompt["teacher"][-1:] == eos
    assert synthetic.verify(prompt["prompt"], TOKENIZER.decode(prompt["teacher"][:-1]))
  rows = _read(os.path.join(workdir, "round_1", "rows.json"))
  probs = [r["extras"]["preference_prob"] for r in rows]
  assert all(0.5 < p <= 1 / (1 + math.exp(-1.0)) + 1e-6 for p in probs)
  trained = [r for r in _lines(os.path.join(workdir, "round_1", "metrics.jsonl"))
             if "loss" in r]
  assert all(0.5 < r["dno/target"] < 1.0 for r in trained)  # the soft form ran
