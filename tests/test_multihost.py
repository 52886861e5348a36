"""Two local processes with jax.distributed train exactly like one process with 2 devices."""

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from training.metrics import read_metrics

OVERRIDES = ["--config=configs/dpo.py:tiny", "--config.total_steps=4",
             "--config.optimizer.warmup_steps=1", "--config.batch_size=8",
             "--config.eval_batch_size=8", "--config.eval_every=2", "--config.log_every=1",
             "--config.checkpoint_every=2", "--config.progress_bar=False",
             "--config.model.num_layers=1", "--config.model.hidden_size=64",
             "--config.model.intermediate_size=128", "--config.data.synthetic_train_size=128",
             "--config.data.synthetic_test_size=24"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


# Variants under -m slow (suite time), each against the same plain single process:
# * packed: one 64-token bucket, so two of the 19-31-token sequences share a row; each
#   process packs its slice into 6 of the 12 rows (the layout is also checked in one process,
#   tests/test_packing.py);
# * precomputed: each process computes its slices of the reference log-probs, and every
#   process keeps all of them (its training batches hold the other slices' examples).
VARIANTS = {"plain": ([], []),
            "packed": (["--config.data.buckets=(64,)"],
                       ["--config.data.pack_rows=12", "--config.data.buckets=(64,)"]),
            "precomputed": ([], ["--config.reference.mode=precomputed"])}


@pytest.mark.parametrize("variant", ["plain", pytest.param("packed", marks=pytest.mark.slow),
                                     pytest.param("precomputed", marks=pytest.mark.slow)])
def test_two_processes_match_one_process_with_two_devices(tmp_path, variant):
  single_args, multi_args = VARIANTS[variant]
  tfds_dir = str(tmp_path / "tfds")
  common = [sys.executable, "-m", "experiments.train", *OVERRIDES,
            f"--config.data.data_dir={tfds_dir}"]
  single = subprocess.run(common + [f"--workdir={tmp_path / 'single'}"] + single_args,
                          cwd=ROOT, env=_env(2), capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  multi_dir = tmp_path / "multi"
  procs = [subprocess.Popen(
      common + [f"--workdir={multi_dir}", "--distributed", f"--coordinator_address=localhost:{port}",
                "--num_processes=2", f"--process_id={i}"] + multi_args,
      cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]

  expected, got = read_metrics(str(tmp_path / "single")), read_metrics(str(multi_dir))
  assert [r["step"] for r in got] == [r["step"] for r in expected]
  for want, have in zip(expected, got):
    for key, value in want.items():
      if key.startswith("perf/") or not isinstance(value, float):
        continue
      assert have[key] == pytest.approx(value, abs=1e-5), (want["step"], key)
  assert os.path.isdir(multi_dir / "checkpoints" / "4")
  if variant == "precomputed":  # a train and an eval cache per process
    assert len(os.listdir(multi_dir / "reference_cache")) == 4
