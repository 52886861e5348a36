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
import jax  # noqa: E402  (reads the variables above)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")))


def micro_config(**overrides):
  """configs/dpo.py:tiny shrunk further: 2 layers, 256 training pairs, batch 8."""
  from configs import dpo

  config = dpo.get_config("tiny")
  config.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2)
  config.data.update(synthetic_train_size=256, synthetic_test_size=24)
  config.update(total_steps=6, batch_size=8, eval_batch_size=8, log_every=1, eval_every=3,
                checkpoint_every=3, progress_bar=False)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=1)
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS cache for the whole session, so the synthetic task is prepared once."""
  return str(tmp_path_factory.mktemp("tfds"))
