"""Shared fixtures: a very small DPO config that trains in seconds on one CPU core."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# One persistent XLA compilation cache for the whole run, shared with the subprocesses the
# tests start (they inherit the environment): the suite builds the same micro model's steps
# in many tests, and a cache hit skips the compile. A fresh folder per run, so no result of an
# earlier run (or another jax version) is ever reused; a cache the caller set is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="jax-compilation-cache-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

# XLA:CPU flags for the suite, which compiles hundreds of small steps and runs each a few
# times: LLVM at -O0 compiles them faster than it slows them down (test_training.py 91 -> 56-61
# s; the one compute-bound test, the LD-DPO world, 38 -> 41-46 s; the README gives the whole
# suite's time). Same maths: only the machine code and float rounding differ. Subprocesses
# inherit the flags; the paper recipes' runs get the caller's back (`caller_environment`):
# they run hundreds of steps and report what a user's command gives.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"
# pytest imports this file as `conftest` and the tests as `tests.conftest`: set things once.
_CALLER = "PREFOPT_CALLER_XLA_FLAGS"
if _CALLER not in os.environ:
  os.environ[_CALLER] = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{os.environ[_CALLER]} {SUITE_XLA_FLAGS}".strip()


def caller_environment() -> dict:
  """os.environ with XLA_FLAGS as the caller set them (without SUITE_XLA_FLAGS)."""
  env = dict(os.environ)
  caller = env.pop(_CALLER)
  if caller:
    env["XLA_FLAGS"] = caller
  else:
    env.pop("XLA_FLAGS", None)
  return env


import jax  # noqa: E402  (reads the variables above)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")))


def loss_hyperparameters(name, preferred=None, **overrides):
  """`config.loss` of the registered loss `name`: its defaults, then the values in `preferred`
  for those of its keys that `preferred` names (a test file's own defaults, which may cover
  several losses), then `overrides` as they are (a key of another loss included, so that a
  test can show it refused)."""
  import ml_collections

  import algorithms

  defaults = algorithms.get_algorithm(name).defaults
  preferred = {k: v for k, v in (preferred or {}).items() if k in defaults}
  return ml_collections.ConfigDict({"name": name, **defaults, **preferred, **overrides})


def micro_config(**overrides):
  """configs/dpo.py:tiny shrunk further: 2 layers, 256 training pairs, batch 8.

  A "loss.name" override of a registered loss switches the loss first (`configs.base.override`).
  """
  from configs import base, dpo

  config = dpo.get_config("tiny")
  config.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2)
  config.data.update(synthetic_train_size=256, synthetic_test_size=24)
  config.update(total_steps=6, batch_size=8, eval_batch_size=8, log_every=1, eval_every=3,
                checkpoint_every=3, progress_bar=False)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=1)
  return base.override(config, overrides)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS cache for the whole session, so the synthetic task is prepared once."""
  return str(tmp_path_factory.mktemp("tfds"))


# What `micro_online` changes in an online preset, as --config.<key>=<value> overrides.
MICRO_ONLINE = {
    "model.hidden_size": 64, "model.intermediate_size": 128, "model.num_layers": 2,
    "model.num_heads": 4, "model.num_kv_heads": 2, "data.synthetic_train_size": 256,
    "data.synthetic_test_size": 24, "total_steps": 4, "batch_size": 8, "eval_batch_size": 8,
    "log_every": 1, "checkpoint_every": 2, "progress_bar": False,
    "optimizer.learning_rate": 1e-4, "optimizer.warmup_steps": 1, "online.rounds": 2,
    "online.num_prompts": 32, "online.sft_steps": 150, "online.eval_prompts": 8,
    "online.max_new_tokens": 12}


def micro_online(name: str, tfds_dir: str, **online):
  """configs/<name>.py:tiny (an online loss) at test size: a 2-layer model, 150 SFT steps,
  rounds of 32 prompts x 4 samples, 4 updates a round; `online` overrides config.online."""
  import importlib

  config = importlib.import_module(f"configs.{name}").get_config("tiny")
  for key, value in dict(MICRO_ONLINE, **{"data.data_dir": tfds_dir}).items():
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
      target = target[p]
    target[leaf] = value
  if name == "prime":  # a micro model rarely sorts right: keep every prompt
    config.online.accuracy_range = (0.0, 1.0)
  config.online.update(online)
  return config


def micro_online_flags(tfds_dir: str, **online) -> list[str]:
  """`micro_online`'s changes as command-line flags (for experiments/iterate.py, evaluate.py)."""
  values = dict(MICRO_ONLINE, **{"data.data_dir": tfds_dir},
                **{f"online.{k}": v for k, v in online.items()})
  return [f"--config.{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def online_start(tmp_path_factory, tfds_dir):
  """A workdir whose round_0 holds π_0 of every `micro_online` config (the SFT warm-up and
  its held-out responses depend on none of the fields the online tests vary): tests copy it
  with `seed_round_0` instead of repeating the warm-up."""
  from training import experiment, rounds

  workdir = str(tmp_path_factory.mktemp("online_start"))
  exp = experiment.build(micro_online("dno", tfds_dir), workdir)
  pi_0 = rounds.start_policy(exp, workdir)
  rounds.eval_samples_of_pi_0(exp, workdir, pi_0)
  return workdir


def seed_round_0(start: str, workdir: str):
  """Copies π_0 and its held-out responses from the `online_start` workdir."""
  os.makedirs(os.path.join(workdir, "round_0"), exist_ok=True)
  shutil.copytree(os.path.join(start, "round_0", "policy"),
                  os.path.join(workdir, "round_0", "policy"))
  shutil.copy(os.path.join(start, "round_0", "eval_samples.json"),
              os.path.join(workdir, "round_0", "eval_samples.json"))
