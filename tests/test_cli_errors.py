"""`python -m experiments.train` refuses bad input with one line on stderr and no traceback.

Flag errors (unknown keys, wrong types, a config file that does not load) end during flag
parsing, before JAX is imported; bad values end in `config_check.validate`, before any data
is read; a malformed record ends when the data is loaded, before the model is built.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def run_cli(*args, workdir, entry="experiments.train"):
  done = subprocess.run(
      [sys.executable, "-m", entry, f"--workdir={workdir}", *args],
      cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=120)
  errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  return done, errors


def assert_refused(done, errors, *expected, exit_code=2):
  assert done.returncode == exit_code, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  assert len(errors) == 1, done.stderr[-3000:]
  for part in expected:
    assert part in errors[0], errors[0]


TINY = "--config=configs/dpo.py:tiny"


@pytest.mark.parametrize("flag, expected", [
    ("--config.loss.bogus=1",
     ["error: --config.loss.bogus: no such config field; fields of config.loss: ", "beta, ",
      "sft_weight"]),
    ("--config.bogus.x=1", ["--config.bogus.x: no such config field; fields of config: ",
                            "batch_size"]),
    ("--config.loss.beat=1", ["--config.loss.beat: no such config field (did you mean beta?)"]),
    ("--config.batch_size.x=1", ["--config.batch_size.x: config.batch_size is 32, not a section"]),
    ("--config.data.buckets[5]=1", ["--config.data.buckets[5]: config.data.buckets is "
                                    "(32, 48, 64), which has no item [5]"]),
    ("--config.batch_size=abc", ["--config.batch_size=abc: invalid literal for int()"]),
    ("--config.loss.beta=abc", ["--config.loss.beta=abc: could not convert string to float"]),
    ("--config.progress_bar=maybe", ["--config.progress_bar=maybe", "Non-boolean"]),
])
def test_flag_errors_name_the_override(flag, expected, tmp_path):
  workdir = tmp_path / "run"
  done, errors = run_cli(TINY, flag, workdir=workdir)
  assert_refused(done, errors, *expected)
  assert not workdir.exists()


def test_a_config_file_that_does_not_load(tmp_path):
  done, errors = run_cli("--config=configs/dpo.py:nope", workdir=tmp_path / "a")
  assert_refused(done, errors, "--config=configs/dpo.py:nope", "unknown preset 'nope'")
  done, errors = run_cli("--config=configs/missing.py", "--config.loss.beta=1",
                         workdir=tmp_path / "b")
  assert_refused(done, errors, "--config:", "configs/missing.py")


def test_bad_values_are_refused_by_the_config_check(tmp_path):
  workdir = tmp_path / "run"
  done, errors = run_cli(TINY, "--config.loss.beta=-1", "--config.grad_accum_steps=3",
                         workdir=workdir)
  assert_refused(done, errors, "error: config.loss.beta must be > 0.0")
  assert not workdir.exists()


def test_a_malformed_record_names_file_record_and_field(tmp_path):
  prefs = tmp_path / "prefs"
  prefs.mkdir()
  good = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(10)]
  train = good[:6] + [{"prompt": "p", "chosen": 7, "rejected": "x"}] + good[6:]
  for name, records in (("train.jsonl", train), ("test.jsonl", good[:4])):
    (prefs / name).write_text("".join(json.dumps(r) + "\n" for r in records))
  done, errors = run_cli(TINY, f"--config.data.path={prefs}",
                         f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.batch_size=4",
                         "--config.eval_batch_size=4", workdir=tmp_path / "run")
  assert_refused(done, errors,
                 f"error: {prefs}/train.jsonl:7: record 6: field 'chosen': must be a string")


# Errors raised inside loop.train: a real run reaches them only after validate has passed, so
# the CLI's main runs here with loop.train replaced by one that raises. In a subprocess (one
# for all three errors: each imports JAX), since experiments.benchmark, which other tests
# import, defines absl flags of the same names.

_RAISE_IN_TRAIN = """
import sys
from data.errors import DataError
from training import loop
from training.config_check import ConfigError
from experiments import train as cli

cli.parse_flags(["train", "--config=configs/dpo.py:tiny", "--workdir={workdir}"])
for error in [
    DataError("prefs/train.jsonl:3: record 2: field 'prompt': missing"),
    ConfigError("config.batch_size=6 must be divisible by the 4 processes"),
    loop.NonFiniteError(5, [3, 9], {{"loss": float("nan")}}),  # config.nonfinite="halt"
]:
  def raise_error(config, workdir, error=error):
    raise error
  loop.train = raise_error
  try:
    cli.main(["train"])
  except SystemExit as e:
    print(f"exit code {{e.code}}", file=sys.stderr)
"""


def test_errors_from_the_run_are_one_line(tmp_path):
  code = _RAISE_IN_TRAIN.format(workdir=tmp_path / "run")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        env=ENV, timeout=120)
  assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
  lines = [line for line in done.stderr.splitlines() if line.startswith(("error: ", "exit "))]
  assert lines == [
      "error: prefs/train.jsonl:3: record 2: field 'prompt': missing", "exit code 2",
      "error: config.batch_size=6 must be divisible by the 4 processes", "exit code 2",
      "error: non-finite loss at step 5 (batch 4, example ids [3, 9]): loss=nan; the update "
      "was not applied and the run stopped without checkpointing this step "
      "(config.nonfinite='halt')", "exit code 1"], done.stderr[-3000:]


@pytest.mark.parametrize("flags, expected", [
    (["--config.online.scorer=gpt5"], ["config.online.scorer must be one of", "'gpt5'"]),
    (["--config.online.rounds=0"], ["config.online.rounds must be an integer >= 1, got 0"]),
    (["--config.online.scorer=judge", "--config.online.judge=no_such_module:judge"],
     ["config.online.judge", "no_such_module"]),
    (["--config.online.scorer=gpm", "--config.online.scorer_path=/nonexistent/gpm_run"],
     ["config.online.scorer_path", "/nonexistent/gpm_run"]),
])
def test_iterate_refuses_bad_online_values_before_compute(flags, expected, tmp_path):
  """experiments/iterate.py: one line naming the field, exit 2, nothing written."""
  workdir = tmp_path / "run"
  done, errors = run_cli("--config=configs/dno.py:tiny", *flags, workdir=workdir,
                         entry="experiments.iterate")
  assert_refused(done, errors, *expected)
  assert not workdir.exists()


def test_train_points_online_losses_to_iterate(tmp_path):
  done, errors = run_cli("--config=configs/dno.py:tiny", workdir=tmp_path / "run")
  assert_refused(done, errors, "online algorithm", "experiments.iterate")
