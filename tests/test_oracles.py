"""Preference oracles (training/oracles.py): the built-in verifier, a trained GPM / BT reward
model and a user-supplied pairwise judge behind one `judge(Candidates) -> Judgement`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: the sharded worker below
  sys.path.insert(0, ROOT)

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from algorithms.preference import gpm_score_table
from data import synthetic
from data.pipeline import TokenizedPair, collate
from data.tokenizer import load_tokenizer
from training import oracles
from training.mesh import make_mesh
from training.oracles import Candidates, OracleError
from tests.conftest import SUITE_XLA_FLAGS

TOKENIZER = load_tokenizer("")  # the byte-level tokenizer of the built-in task
EOS = int(TOKENIZER.eos_id)


def candidates(rows: list[tuple[list[int], list[str | tuple[str, bool]]]]) -> Candidates:
  """Candidates of (digits, responses); a response is its text (eos appended) or
  (text, False) for one cut off without eos."""
  bos = [int(TOKENIZER.bos_id)]
  prompts, prompt_ids, completions, texts = [], [], [], []
  for digits, responses in rows:
    prompt = synthetic.format_prompt(digits)
    prompts.append(prompt)
    prompt_ids.append(bos + list(TOKENIZER.encode(prompt)))
    completions.append([])
    texts.append([])
    for response in responses:
      text, eos = response if isinstance(response, tuple) else (response, True)
      completions[-1].append(list(TOKENIZER.encode(text)) + ([EOS] if eos else []))
      texts[-1].append(text)
  return Candidates(prompts, prompt_ids, completions, texts)


def check_table(judgement, n: int, k: int):
  """The invariants of every oracle's tables."""
  p, s = judgement.preferences, judgement.scores
  assert p.shape == s.shape == (n, k, k) and p.dtype == s.dtype == np.float32
  np.testing.assert_allclose(p + np.swapaxes(p, 1, 2), 1.0, atol=1e-6)
  np.testing.assert_array_equal(np.diagonal(p, axis1=1, axis2=2), 0.5)
  np.testing.assert_array_equal(s, -np.swapaxes(s, 1, 2))
  np.testing.assert_array_equal(np.diagonal(s, axis1=1, axis2=2), 0.0)
  assert np.all((p >= 0) & (p <= 1)) and np.all(np.isfinite(s))


# ---------------------------------------------------------------------------------------
# The verifier.


def test_verifier_tables():
  right, wrong = " 1 2 3", " 1 3 2"
  c = candidates([([3, 1, 2], [right, wrong, (right, False), right]),
                  ([5, 4], [" 4 5", " 5 4", "nonsense", " 4 5"])])
  j = oracles.VerifierOracle(TOKENIZER, tau=0.5).judge(c)
  check_table(j, 2, 4)
  want_rewards = [[1.0, synthetic.score(c.prompts[0], wrong), 0.0, 1.0],
                  [1.0, 0.0, 0.0, 1.0]]
  np.testing.assert_allclose(j.rewards, want_rewards)
  assert 0 < j.rewards[0, 1] < 0.5  # graded partial credit below any right answer
  np.testing.assert_array_equal(j.correct, [[1, 0, 0, 1], [1, 0, 0, 1]])
  assert j.rewards.dtype == j.correct.dtype == np.float32
  p, s = j.preferences, j.scores
  assert p[0, 0, 1] == 1.0 and p[0, 1, 0] == 0.0  # a correct sorting beats a wrong one
  assert p[0, 0, 3] == 0.5 and p[1, 1, 2] == 0.5  # ties
  assert p[0, 1, 2] == 1.0 and p[0, 2, 0] == 0.0  # the response without eos scores 0
  np.testing.assert_allclose(s[0, 0, 1], (1.0 - j.rewards[0, 1]) / 0.5, rtol=1e-6)
  np.testing.assert_allclose(s, (j.rewards[:, :, None] - j.rewards[:, None, :]) / 0.5,
                             rtol=1e-6)


def test_verifier_refuses_a_foreign_prompt():
  c = Candidates(["Write a haiku about the sea, please, in five seven five " * 3],
                 [[1, 2]], [[[3, EOS], [4, EOS]]], [["a", "b"]])
  with pytest.raises(OracleError, match=r"prompt 0 'Write a haiku.*\.\.\.' has no rule: it "
                     r"is not a digit-sorting prompt .* has no 'answer' field"):
    oracles.VerifierOracle(TOKENIZER).judge(c)


def test_verifier_checks_math_answers_against_the_records_reference():
  """A prompt whose record carries `answer` is judged by its final answer (data.math_answers):
  reward = correct = 1 for an equivalent answer that ends with eos, else 0; a prompt of the
  built-in task beside it keeps its own rule."""
  math_texts = ["so \\boxed{\\frac{1}{2}}", "it is 0.5", "\\boxed{1/3}", "\\boxed{0.5}"]
  sort_texts = [" 1 2 3", " 1 3 2", "x", " 1 2 3"]
  ids = lambda t, eos=True: list(TOKENIZER.encode(t)) + ([EOS] if eos else [])  # noqa: E731
  c = Candidates(
      ["What is 1/2 as a decimal or fraction?", synthetic.format_prompt([3, 1, 2])], [[1], [1]],
      [[ids(t) for t in math_texts[:3]] + [ids(math_texts[3], eos=False)],
       [ids(t) for t in sort_texts]],
      [math_texts, sort_texts], answers=["\\frac12", None])
  j = oracles.VerifierOracle(TOKENIZER, tau=0.5).judge(c)
  check_table(j, 2, 4)
  np.testing.assert_array_equal(j.correct, [[1, 1, 0, 0], [1, 0, 0, 1]])
  np.testing.assert_array_equal(j.rewards[0], [1, 1, 0, 0])  # no partial credit on math
  assert j.preferences[0, 0, 2] == 1.0 and j.preferences[0, 0, 1] == 0.5


def test_ragged_candidates_are_refused():
  c = candidates([([3, 1], [" 1 3", " 3 1"]), ([2, 1], [" 1 2"])])
  with pytest.raises(OracleError, match=r"completions\[1\] has 1 responses, expected K=2"):
    oracles.VerifierOracle(TOKENIZER).judge(c)


# ---------------------------------------------------------------------------------------
# A user-supplied judge. The judges live in this module so that "module:function" imports.

CALLS = []


def shorter(prompts, first, second):
  """Prefers the shorter response, ½ on equal lengths."""
  CALLS.append(len(prompts))
  return [0.5 if len(a) == len(b) else 0.9 if len(a) < len(b) else 0.1
          for a, b in zip(first, second)]


def certain(prompts, first, second):
  return np.asarray([1.0 if len(a) < len(b) else 0.0 for a, b in zip(first, second)])


def raises(prompts, first, second):
  raise ValueError("the judge's API key expired")


def returns_nan(prompts, first, second):
  return [float("nan") if i == 2 else 0.5 for i in range(len(prompts))]


def returns_too_few(prompts, first, second):
  return [0.5] * (len(prompts) - 1)


def returns_out_of_range(prompts, first, second):
  return [0.5] * (len(prompts) - 1) + [1.5]


def returns_text(prompts, first, second):
  return ["first"] * len(prompts)


NOT_CALLABLE = 3


def spec(name: str) -> str:
  return f"{__name__}:{name}"


def test_callable_judge_table():
  c = candidates([([3, 1, 2], [" 1 2 3 4", " 1", " 1 2 3"]), ([5, 4], [" 4 5", " 5 4", " 4 5"])])
  CALLS.clear()
  j = oracles.CallableOracle(spec("shorter")).judge(c)
  assert CALLS == [3 + 3]  # one call with every unordered pair of every prompt
  check_table(j, 2, 3)
  assert j.rewards is None and j.correct is None
  np.testing.assert_allclose(j.preferences[0], [[0.5, 0.1, 0.1], [0.9, 0.5, 0.9],
                                                [0.9, 0.1, 0.5]], atol=1e-7)
  np.testing.assert_allclose(j.scores[0, 1, 0], math.log(0.9 / 0.1), rtol=1e-6)
  np.testing.assert_array_equal(j.preferences[1], 0.5)  # equal lengths
  assert oracles.CallableOracle(shorter).spec.endswith(":shorter")  # a function works too


def test_callable_judge_certain_values_give_finite_scores():
  c = candidates([([3, 1, 2], [" 1 2 3 4", " 1"])])
  j = oracles.CallableOracle(spec("certain")).judge(c)
  check_table(j, 1, 2)
  assert j.preferences[0, 1, 0] == 1.0
  np.testing.assert_allclose(j.scores[0, 1, 0], math.log((1 - 1e-6) / 1e-6), rtol=1e-5)


@pytest.mark.parametrize("name, pattern", [
    ("raises", r"raised ValueError\(\"the judge's API key expired\"\) on a batch of 6 pairs "
               r"of 2 prompts \(prompt 0 'sort"),
    ("returns_nan", r"returned nan for pair 2 \(prompt 0 'sort.*responses 1 and 2\): not "
                    r"finite"),
    ("returns_too_few", r"returned 5 values for 6 pairs .*prompt 0 'sort"),
    ("returns_out_of_range",
     r"returned 1.5 for pair 5 \(prompt 1 'sort.*responses 1 and 2\): outside \[0, 1\]"),
    ("returns_text", r"returned 'first' for pair 0 \(prompt 0 'sort.*: not a number"),
])
def test_callable_judge_failures_name_the_judge_and_the_prompt(name, pattern):
  c = candidates([([3, 1, 2], [" 1 2 3", " 1", " 2"]), ([5, 4], [" 4 5", " 5", " 4"])])
  with pytest.raises(OracleError, match=pattern) as info:
    oracles.CallableOracle(spec(name)).judge(c)
  assert f"judge {spec(name)} " in str(info.value)
  assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad, pattern", [
    ("no_colon", r"expected 'package.module:function'"),
    ("no_such_module_xyz:f", r"cannot import module 'no_such_module_xyz'"),
    (spec("missing"), r"has no attribute 'missing'"),
    (spec("NOT_CALLABLE"), r"is a int, not a callable"),
])
def test_callable_judge_bad_spec(bad, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    oracles.CallableOracle(bad)
  assert repr(bad) in str(info.value)


# ---------------------------------------------------------------------------------------
# Trained preference models (a fake finished workdir: random init, one checkpoint).


def finished_run(workdir: str, name: str, **preference_model) -> str:
  """A workdir as a finished `name` run leaves it: config.json and a checkpoint."""
  from configs import bt_reward, gpm
  from training.checkpoint import Checkpointer
  from training.experiment import init_params
  from training.optim import make_optimizer
  from training.step import TrainState, initial_rng

  config = {"gpm": gpm, "bt_reward": bt_reward}[name].get_config("tiny")
  config.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                      num_kv_heads=1)
  config.preference_model.update(**preference_model)
  graphdef, params = init_params(config, make_mesh(config.mesh), name)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  state = TrainState(step=jnp.asarray(2, jnp.int32), params=params,
                     opt_state=optimizer.init(params), skipped_steps=jnp.zeros((), jnp.int32),
                     rng=initial_rng(config.seed))
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    checkpointer.maybe_save(2, state, force=True)
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("oracle_runs")
  return {"gpm": finished_run(str(root / "gpm"), "gpm", value_dim=4, prompt_head=True),
          "bt_reward": finished_run(str(root / "bt"), "bt_reward")}


MODEL_CANDIDATES = [([3, 1, 2], [" 1 2 3", " 1 3 2", (" 1 2 3 1 2 3", False)]),
                    ([9, 0, 4, 4], [" 0 4 4 9", " 9", " 0 4 9 4"]),
                    ([7, 1], [" 1 7", " 7 1", " 1"])]


def direct_values(oracle, c: Candidates):
  """values [N, K, D] and gates [N, k] of every response, one unsharded forward."""
  from training.step import head_values

  rows = [TokenizedPair(0, np.asarray(p, np.int32), np.asarray(r, np.int32), None)
          for p, responses in zip(c.prompt_ids, c.completions) for r in responses]
  length = max(len(r.prompt) + len(r.chosen) for r in rows)
  batch = collate(rows, length, TOKENIZER.pad_id)
  del batch["example_id"]
  graphdef = oracle.graphdef
  values, _, gates = jax.jit(lambda p, b: head_values(graphdef, p, b))(
      jax.device_get(oracle.params), batch)
  n, k = len(c.prompts), len(c.completions[0])
  values = np.asarray(values).reshape(n, k, -1)
  return values, None if gates is None else np.asarray(gates).reshape(n, k, -1)[:, 0]


@pytest.mark.parametrize("name", ["gpm", "bt_reward"])
def test_model_oracle_scores_are_the_model_table(name, runs):
  mesh = make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  oracle = oracles.PreferenceModelOracle.from_workdir(runs[name], mesh, batch_size=4)
  assert oracle.name == name and oracle.batch_size % mesh.shape["data"] == 0
  c = candidates(MODEL_CANDIDATES)
  j = oracle.judge(c)
  check_table(j, 3, 3)
  values, gates = direct_values(oracle, c)
  tau = oracle.config.loss.preference_tau
  if name == "gpm":
    assert values.shape == (3, 3, 4) and gates.shape == (3, 2)  # the prompt head's λ(x)
    want = np.asarray(gpm_score_table(values, gates)) / tau
  else:
    assert values.shape == (3, 3, 1) and tau == 1.0
    want = values[:, :, None, 0] - values[:, None, :, 0]
  np.testing.assert_allclose(j.scores, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(j.preferences, jax.nn.sigmoid(want), rtol=1e-4, atol=1e-6)
  assert np.abs(j.scores).max() > 1e-4  # responses really differ

  # Chunking: 9 rows in chunks of 4 (the last one filled) or in one chunk of 64.
  whole = oracles.PreferenceModelOracle(name, oracle.config, oracle.graphdef, oracle.params,
                                        mesh, batch_size=64).judge(c)
  np.testing.assert_allclose(whole.scores, j.scores, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(whole.preferences, j.preferences, rtol=1e-6, atol=1e-7)


def sharded_worker(workdir: str, out: str, data: str, fsdp: str):
  """`python tests/test_oracles.py WORKDIR OUT DATA FSDP`: the oracle's judgement of
  MODEL_CANDIDATES on a data x fsdp mesh (run under several virtual CPU devices)."""
  mesh = make_mesh(ml_collections.ConfigDict(dict(data=int(data), fsdp=int(fsdp), tensor=1)))
  oracle = oracles.PreferenceModelOracle.from_workdir(workdir, mesh, batch_size=3)
  judgement = oracle.judge(candidates(MODEL_CANDIDATES))
  np.savez(out, scores=judgement.scores, preferences=judgement.preferences,
           batch_size=oracle.batch_size, devices=len(jax.devices()))


def test_model_oracle_on_a_sharded_mesh(runs, tmp_path):
  """4 virtual devices as data=2 x fsdp=2: batch_size 3 is rounded up to 4 rows per chunk
  (9 rows: 4 + 4 + 1 and 3 filler), params sharded by the model's rules; same table."""
  mesh = make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)))
  single = oracles.PreferenceModelOracle.from_workdir(runs["gpm"], mesh, batch_size=4).judge(
      candidates(MODEL_CANDIDATES))
  out = str(tmp_path / "sharded.npz")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {SUITE_XLA_FLAGS}")
  done = subprocess.run([sys.executable, os.path.abspath(__file__), runs["gpm"], out, "2", "2"],
                        cwd=ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  sharded = np.load(out)
  assert int(sharded["devices"]) == 4 and int(sharded["batch_size"]) == 4
  np.testing.assert_allclose(sharded["scores"], single.scores, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sharded["preferences"], single.preferences, rtol=1e-4, atol=1e-6)


def test_model_oracle_refusals(runs, tmp_path):
  mesh = make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere' does not exist"):
    oracles.PreferenceModelOracle.from_workdir(missing, mesh)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"no config.json in '.*empty'"):
    oracles.PreferenceModelOracle.from_workdir(str(tmp_path / "empty"), mesh)
  os.makedirs(tmp_path / "dpo")
  (tmp_path / "dpo" / "config.json").write_text(json.dumps({"loss": {"name": "dpo"}}))
  with pytest.raises(ValueError, match=r"'.*dpo' is a 'dpo' run"):
    oracles.PreferenceModelOracle.from_workdir(str(tmp_path / "dpo"), mesh)
  # Token ids the scorer's vocabulary does not have (another tokenizer's) are refused.
  oracle = oracles.PreferenceModelOracle.from_workdir(runs["bt_reward"], mesh)
  c = Candidates(["x"], [[1, 2]], [[[3, 100000], [4, 5]]], [["a", "b"]])
  with pytest.raises(OracleError, match=r"token id 100000 outside the scorer's vocabulary"):
    oracle.judge(c)


# ---------------------------------------------------------------------------------------
# From the config.


def online_config(**fields):
  online = ml_collections.ConfigDict(dict(scorer="verifier", scorer_path=""))
  online.update(fields)
  return online


def test_check_oracle_config(runs, tmp_path):
  check = oracles.check_oracle_config
  check(online_config())
  check(online_config(scorer="gpm", scorer_path=runs["gpm"]))
  check(online_config(scorer="bt_reward", scorer_path=runs["bt_reward"]))
  check(online_config(scorer="judge", judge=spec("shorter")))
  bad = [
      (online_config(scorer="llm"),
       r"config.online.scorer must be one of \['verifier', 'gpm', 'bt_reward', 'judge'\], "
       r"got 'llm'"),
      (online_config(scorer="gpm"), r"scorer='gpm' needs config.online.scorer_path"),
      (online_config(scorer="gpm", scorer_path=str(tmp_path / "gone")),
       r"'.*gone' does not exist"),
      (online_config(scorer="bt_reward", scorer_path=str(tmp_path)), r"no config.json in"),
      (online_config(scorer="gpm", scorer_path=runs["bt_reward"]),
       r"is a 'bt_reward' run .*not a `gpm` run"),
      (online_config(scorer="judge"), r"scorer='judge' needs config.online.judge"),
      (online_config(scorer="judge", judge="no_such_module_xyz:f"),
       r"config.online.judge: judge 'no_such_module_xyz:f': cannot import"),
      (online_config(scorer="judge", judge=spec("NOT_CALLABLE")), r"not a callable"),
  ]
  for online, pattern in bad:
    with pytest.raises(ValueError, match=pattern):
      check(online)


def test_make_oracle_and_verifier_for(runs):
  from configs import dno

  config = dno.get_config("tiny")
  mesh = make_mesh(config.mesh)
  verifier = oracles.make_oracle(config, TOKENIZER, mesh)
  assert isinstance(verifier, oracles.VerifierOracle)
  assert verifier.tau == config.online.verifier_tau and verifier.name == "verifier"
  config.online.scorer_path = runs["bt_reward"]
  config.online.scorer = "bt_reward"
  model = oracles.make_oracle(config, TOKENIZER, mesh)
  assert isinstance(model, oracles.PreferenceModelOracle) and model.name == "bt_reward"
  config.online.scorer = "judge"
  with config.unlocked():
    config.online.judge = spec("shorter")
  judge = oracles.make_oracle(config, TOKENIZER, mesh)
  assert isinstance(judge, oracles.CallableOracle) and judge.fn is shorter
  task = Candidates([synthetic.format_prompt([3, 1, 2])], [[1]], [[[2]]], [["1 2 3"]])
  assert isinstance(oracles.verifier_for(config, TOKENIZER, task), oracles.VerifierOracle)
  chat = dataclasses.replace(task, prompts=["What is 2 + 2?"])
  assert oracles.verifier_for(config, TOKENIZER, chat) is None  # no rule: no accuracy
  math = dataclasses.replace(chat, answers=["4"])
  assert isinstance(oracles.verifier_for(config, TOKENIZER, math), oracles.VerifierOracle)


if __name__ == "__main__":
  sharded_worker(*sys.argv[1:])
