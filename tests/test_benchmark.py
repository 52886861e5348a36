"""experiments/benchmark.py on a very small shape: one JSON line with the documented keys."""

import json
import os
import subprocess
import sys

from experiments import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2,
             num_kv_heads=1)
KEYS = {"tokens_per_s", "pairs_per_s", "step_time_s", "model_flops_per_step", "mfu",
        "peak_memory_bytes", "mesh", "config", "jax_version", "device_kind", "xla_flags"}


def _small_config(**model):
  from configs import dpo

  config = dpo.get_config("bench_tiny")
  config.model.update(**dict(SMALL, **model))
  config.batch_size = 2
  config.data.update(max_prompt_len=4, max_completion_len=6, buckets=(10,))
  return config


def test_benchmark_prints_one_json_line():
  overrides = [f"--config.model.{k}={v}" for k, v in SMALL.items()]
  command = [sys.executable, "-m", "experiments.benchmark", "--config=configs/dpo.py:bench_tiny",
             "--steps=2", "--warmup=1", "--config.batch_size=2",
             "--config.data.max_prompt_len=4", "--config.data.max_completion_len=6",
             "--config.data.buckets=(10,)"] + overrides
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  assert KEYS <= set(result)
  assert result["config"] == "dpo:bench_tiny"
  assert result["tokens_per_step"] == 2 * 2 * (4 + 6)
  assert result["model_flops_per_step"] == 8 * result["non_embedding_params"] * 40
  assert result["work_flops_per_step"] > result["model_flops_per_step"]  # + head, attention
  assert result["mfu"] is None and result["device_kind"] == "cpu"  # no CPU peak rate
  assert result["tokens_per_s"] > 0 and result["peak_memory_bytes"] > 0
  assert "--xla_cpu_experimental_ynn_fusion_type=" in result["xla_flags"]
  assert abs(result["first_loss"] - 0.693147) < 1e-3  # policy = reference: ln 2


SAMPLE_KEYS = {"tokens_per_s", "total_s", "prefill_s", "decode_s", "compile_s", "cpu",
               "device_kind", "sampling", "batch", "prompt_len", "new_tokens",
               "generated_tokens"}


def test_sample_mode_prints_one_json_line():
  """--mode=sample at a tiny shape: one JSON line, every row generating all new tokens."""
  overrides = [f"--config.model.{k}={v}" for k, v in SMALL.items()]
  command = [sys.executable, "-m", "experiments.benchmark", "--mode=sample",
             "--config=configs/dpo.py:bench_tiny", "--sampling=top_p", "--sample_batch=2",
             "--prompt_len=3", "--new_tokens=4", "--steps=1", "--warmup=1"] + overrides
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, XLA_FLAGS=""), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  assert SAMPLE_KEYS <= set(result)
  assert (result["sampling"], result["batch"], result["new_tokens"]) == ("top_p", 2, 4)
  assert result["generated_tokens"] == 2 * 4  # eos unreachable: no row stops early
  assert result["tokens_per_s"] > 0 and result["prefill_s"] > 0
  assert abs(result["decode_s"] - (result["total_s"] - result["prefill_s"])) < 1e-9


def test_completion_head_and_precomputed_reference():
  config = _small_config()
  config.model.logits_on = "completion"
  config.reference.mode = "precomputed"
  result = benchmark.run(config, steps=1, warmup=1)
  assert result["model_flops_per_step"] == 6 * result["non_embedding_params"] * 40
  assert abs(result["first_loss"] - 0.693147) < 1e-3


def test_peak_table():
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert benchmark.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert benchmark.peak_flops("TPU v5 lite") == 197e12
  assert benchmark.peak_flops("TPU v5p") == 459e12
  assert benchmark.peak_flops("cpu") is None


def test_compiled_memory_precomputed_reference_needs_less():
  """--memory_only: XLA's accounting of the step; dropping the in-step reference drops its
  weights from the arguments, so the bound falls by at least their size."""
  results = {}
  for mode in ("in_step", "precomputed"):
    config = _small_config()
    config.reference.mode = mode
    results[mode] = benchmark.compiled_memory(config)
  in_step, precomputed = results["in_step"], results["precomputed"]
  param_bytes = 4 * in_step["params"]  # fp32 master weights
  assert in_step["argument_bytes"] - precomputed["argument_bytes"] >= param_bytes - 4 * 2 * 2 * 10
  assert precomputed["peak_memory_bound_bytes"] < in_step["peak_memory_bound_bytes"]
  assert in_step["alias_bytes"] > 0  # the donated state is updated in place
  assert in_step["share_prompt"] is True and in_step["platform"] == "cpu"


def test_compiled_memory_is_per_device_on_the_mesh():
  """--memory_only compiles on config.mesh: with fsdp=8 one device holds 1/8 of the
  parameters and Adam moments, with data=8 all of them, and `mesh.shard_activations` cuts
  the fsdp=8 temporaries (8 virtual CPU devices, a subprocess: the device count is fixed
  when jax starts)."""
  script = (
      "import json\n"
      "from tests.test_benchmark import _small_config\n"
      "from experiments import benchmark\n"
      "out = {}\n"
      "for fsdp, pinned in ((1, False), (8, False), (8, True)):\n"
      "  config = _small_config()\n"
      "  config.mesh.update(fsdp=fsdp, shard_activations=pinned)\n"
      "  config.batch_size = 8\n"
      "  out[f'{fsdp}{pinned}'] = benchmark.compiled_memory(config)\n"
      "print(json.dumps(out))\n")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  data8, fsdp8, pinned = result["1False"], result["8False"], result["8True"]
  assert data8["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and data8["num_devices"] == 8
  assert fsdp8["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  state_bytes = 16 * data8["params"]  # fp32 params, Adam mu and nu, in-step reference
  assert data8["argument_bytes"] >= state_bytes  # replicated: every device holds them all
  assert fsdp8["argument_bytes"] < data8["argument_bytes"] / 4  # sharded 8 ways (+ norms)
  assert fsdp8["output_bytes"] < data8["output_bytes"] / 4
  # config.mesh.shard_activations splits the activations over the batch on fsdp too
  # (models/partitioning.py constrain_batch); GSPMD alone keeps the whole micro-batch's.
  assert pinned["temp_bytes"] < 0.75 * fsdp8["temp_bytes"], (pinned, fsdp8)  # 0.59 measured
  assert pinned["argument_bytes"] == fsdp8["argument_bytes"]


def test_length_scaling_work_formula():
  """W(S) = T·(8N + 8DV + 16·L·A·S): the attention term is what makes W superlinear in S."""
  from experiments import benchmark_work
  from models import num_non_embedding_params
  from training import experiment

  config = _small_config()
  m = experiment.model_config(config)
  n = num_non_embedding_params(m)
  for s in (10, 40):
    expected = 2 * 2 * s * (8 * (n + 32 * 64) + 16 * 1 * 2 * 16 * s)
    assert benchmark_work.work_per_step(config, s) == expected
  assert benchmark_work.split_length(config, 40) == (16, 24)  # the preset's 4 : 6
