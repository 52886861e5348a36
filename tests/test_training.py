"""The shared train step and loop: equivalences, resume, layouts, validation."""

import math
import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import ROOT, SUITE_XLA_FLAGS, micro_config
from training import config_check, loop
from training import experiment
from training.mesh import put_batch
from training.metrics import read_metrics


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _run_steps(exp, num_steps, ref_params="same", batches=None):
  step = jax.jit(experiment.make_train_step_for(exp))
  state, history = exp.state, []
  ref_params = exp.ref_params if ref_params == "same" else ref_params
  for s in range(num_steps):
    batch = exp.train_batches.batch(s) if batches is None else batches[s]
    state, metrics = step(state, ref_params, put_batch(batch, exp.mesh))
    history.append(jax.device_get(metrics))
  return state, history


def test_first_step_loss_is_log2_and_metrics_have_trl_names(tmp_path, tfds_dir):
  exp = experiment.build(micro_config(**{"data.data_dir": tfds_dir}), str(tmp_path))
  _, (metrics,) = _run_steps(exp, 1)
  assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
  for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected", "grad_norm", "learning_rate"):
    assert name in metrics
  # Policy == reference: every implicit reward is 0 up to float rounding between the two
  # forward passes (which XLA fuses differently), so accuracy is a coin flip around 0.5.
  assert abs(metrics["rewards/margins"]) < 1e-5 and abs(metrics["rewards/chosen"]) < 1e-5
  assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0


@pytest.mark.parametrize("loss", [{"loss.name": "dpo"},
                                  {"loss.name": "simpo", "loss.beta": 2.0, "loss.sft_weight": 1.0},
                                  {"loss.name": "sft"}],
                         ids=["dpo", "simpo_sft_term", "sft"])
def test_gradient_accumulation_equals_the_large_batch(tmp_path, tfds_dir, loss):
  """Pair means (dpo) and token means (SimPO's sft term, sft) alike."""
  one = experiment.build(micro_config(**{"data.data_dir": tfds_dir}, **loss), str(tmp_path / "a"))
  four = experiment.build(micro_config(**{"data.data_dir": tfds_dir, "grad_accum_steps": 4}, **loss),
                    str(tmp_path / "b"))
  state_one, hist_one = _run_steps(one, 2)
  state_four, hist_four = _run_steps(four, 2)
  for h1, h4 in zip(hist_one, hist_four):
    assert h4["loss"] == pytest.approx(h1["loss"], abs=1e-6)
    assert h4["grad_norm"] == pytest.approx(h1["grad_norm"], rel=1e-5)
  # Summation order differs, and Adam's g / sqrt(v) magnifies rounding in near-zero
  # gradients; 1e-5 is 1% of one update at this learning rate.
  for a, b in zip(_leaves(state_one.params), _leaves(state_four.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_precomputed_reference_equals_in_step(tmp_path, tfds_dir):
  config = micro_config(**{"data.data_dir": tfds_dir})
  exp = experiment.build(config, str(tmp_path))
  train_cache, _ = loop._reference_cache(exp, str(tmp_path))
  batches = [exp.train_batches.batch(s) for s in range(2)]
  with_ref = [train_cache.attach(b) for b in batches]
  for b in with_ref:
    assert b["ref_chosen_logps"].shape == b["chosen_ids"].shape
  state_a, hist_a = _run_steps(exp, 2, batches=batches)
  exp_b = experiment.build(config, str(tmp_path / "b"))
  state_b, hist_b = _run_steps(exp_b, 2, ref_params=None, batches=with_ref)
  for ha, hb in zip(hist_a, hist_b):
    assert hb["loss"] == pytest.approx(ha["loss"], abs=1e-6)
  for a, b in zip(_leaves(state_a.params), _leaves(state_b.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_resumed_run_equals_uninterrupted_run(tmp_path, tfds_dir):
  overrides = {"data.data_dir": tfds_dir, "total_steps": 6, "checkpoint_every": 3}
  full = loop.train(micro_config(**overrides), str(tmp_path / "full"))
  resumed_dir = str(tmp_path / "resumed")
  first = loop.train(micro_config(**overrides), resumed_dir, stop_at=4)
  assert first["final_step"] == 4
  second = loop.train(micro_config(**overrides), resumed_dir)
  assert second["start_step"] == 4 and second["final_step"] == 6
  for a, b in zip(_leaves(full["state"].params), _leaves(second["state"].params)):
    np.testing.assert_array_equal(a, b)
  full_log, resumed_log = read_metrics(str(tmp_path / "full")), read_metrics(resumed_dir)
  assert [r["step"] for r in resumed_log] == [r["step"] for r in full_log]
  strip = lambda r: {k: v for k, v in r.items() if not k.startswith("perf/")}
  assert [strip(r) for r in resumed_log] == [strip(r) for r in full_log]
  assert os.path.exists(os.path.join(resumed_dir, "curves.png"))


def test_nonfinite_step_is_skipped(tmp_path, tfds_dir):
  exp = experiment.build(micro_config(**{"data.data_dir": tfds_dir}), str(tmp_path))
  batch = exp.train_batches.batch(0)
  nan = np.full(batch["chosen_ids"].shape, np.nan, np.float32)
  bad = dict(batch, ref_chosen_logps=nan, ref_rejected_logps=nan)
  state, (metrics,) = _run_steps(exp, 1, ref_params=None, batches=[bad])
  assert not np.isfinite(metrics["loss"])
  assert metrics["nonfinite"] == 1.0 and int(state.skipped_steps) == 1
  before = _leaves(experiment.build(micro_config(**{"data.data_dir": tfds_dir}),
                              str(tmp_path / "fresh")).state.params)
  for a, b in zip(before, _leaves(state.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("override, message", [
    ({"loss.beta": -1.0}, "config.loss.beta"),
    ({"loss.name": "nope"}, "config.loss.name"),
    ({"batch_size": 6, "grad_accum_steps": 4}, "grad_accum_steps"),
    ({"total_steps": 0}, "config.total_steps"),
    ({"optimizer.decay": "step"}, "config.optimizer.decay"),
    ({"reference.mode": "lazy"}, "config.reference.mode"),
    ({"model.num_kv_heads": 3}, "config.model.num_heads"),
    ({"mesh.fsdp": 3}, "fsdp=3"),
    ({"data.buckets": (64, 32)}, "config.data.buckets"),
])
def test_bad_config_values_are_rejected_before_compute(override, message):
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    config_check.validate(micro_config(**override))


def _mesh_run(tmp_path, tfds_dir, devices, data, fsdp, tensor, accum=1, share_prompt=False,
              shard_activations=False):
  share, pin = str(int(share_prompt)), str(int(shard_activations))
  out = str(tmp_path / f"mesh_{data}{fsdp}{tensor}_{accum}_{share}{pin}.npz")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {SUITE_XLA_FLAGS}"
  subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mesh_worker.py"), out, str(data),
                  str(fsdp), str(tensor), str(accum), tfds_dir, share, pin], check=True,
                 env=env, cwd=ROOT)
  return dict(np.load(out))


@pytest.mark.slow  # ~40 s; test_model_partitioning's 2x2x2 forward stays in the default suite
def test_2x2x2_mesh_on_8_devices_matches_one_device(tmp_path, tfds_dir):
  """Also: the shared prompt forward on the sharded mesh equals the plain one on one device,
  and so does a run whose activations are pinned to the batch axes
  (`mesh.shard_activations`, with the shared prompt: both of the model's forwards)."""
  single = _mesh_run(tmp_path, tfds_dir, 1, 1, 1, 1)
  assert int(single["devices"]) == 1
  params = [k for k in single if k not in ("losses", "devices")]
  assert params
  for share_prompt, pinned in ((False, False), (True, True), (False, True)):
    sharded = _mesh_run(tmp_path, tfds_dir, 8, 2, 2, 2, share_prompt=share_prompt,
                        shard_activations=pinned)
    assert int(sharded["devices"]) == 8
    np.testing.assert_allclose(sharded["losses"], single["losses"], atol=1e-5)
    for key in params:
      np.testing.assert_allclose(sharded[key], single[key], atol=1e-5,
                                 err_msg=f"{key} (share_prompt={share_prompt}, "
                                         f"shard_activations={pinned})")


def test_cpu_settings_apply_before_jax_starts(monkeypatch):
  """experiments.common's XLA:CPU settings (train.py's --cpu_* flags): the YNN flag joins
  XLA_FLAGS unless it is there already or 'default' is asked; mallopt succeeds on glibc and
  JAX starts and computes after both (in a fresh process: mallopt changes that process)."""
  from experiments import common

  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  assert common.set_cpu_xla_flags("default") == "--xla_force_host_platform_device_count=1"
  assert common.set_cpu_xla_flags("") == ("--xla_force_host_platform_device_count=1 "
                                           "--xla_cpu_experimental_ynn_fusion_type=")
  assert common.set_cpu_xla_flags("reduce").endswith("ynn_fusion_type=")  # kept as it was
  code = ("from experiments import common; print(common.reuse_host_buffers()); "
          "import jax.numpy as jnp; print(float(jnp.arange(4.0).sum()))")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  glibc = platform.libc_ver()[0] == "glibc"
  assert done.stdout.split() == [str(glibc), "6.0"]


def test_cli_trains_and_rejects_bad_overrides(tmp_path, tfds_dir):
  workdir = str(tmp_path / "cli")
  base = [sys.executable, "-m", "experiments.train", "--config=configs/dpo.py:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}",
          "--config.total_steps=3", "--config.optimizer.warmup_steps=1", "--config.eval_every=0",
          "--config.progress_bar=False",
          "--config.model.num_layers=1", "--config.data.synthetic_train_size=128",
          "--config.data.synthetic_test_size=16", "--config.eval_batch_size=16",
          "--cpu_reuse_host_buffers", "--cpu_ynn_fusion_type="]  # the CPU settings, too
  done = subprocess.run(base, cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "eval at step 0" in done.stdout and "eval at step 3" in done.stdout
  records = read_metrics(workdir)
  assert records[0]["step"] == 0 and records[-1]["step"] == 3
  assert "eval/rewards/accuracies" in records[-1]
  assert os.path.exists(os.path.join(workdir, "tensorboard"))

  for flag, expected in (("--config.loss.beta=-0.5", "config.loss.beta"),
                         ("--config.loss.nonexistent=1", "nonexistent"),
                         ("--config.batch_size=abc", "batch_size")):
    bad = subprocess.run(base[:2] + base[2:] + [flag], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0
    assert expected in bad.stderr, bad.stderr[-2000:]
    assert not os.path.exists(os.path.join(str(tmp_path), "never"))
