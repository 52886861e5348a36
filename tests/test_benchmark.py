"""experiments/benchmark.py on a very small shape: one JSON line with the documented keys."""

import json
import math
import os
import subprocess
import sys

import jax
import pytest

from experiments import benchmark
from tests.conftest import SUITE_XLA_FLAGS

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


def test_the_donated_state_is_updated_in_place():
  """The compiled step copies none of its arguments: the non-finite guard is a `lax.cond`
  (training/step.py), where a `where(finite, new, old)` over the updated state made XLA copy
  every Adam moment at the step's start (94,980 bytes here: mu and nu and the step counter;
  7.48 GiB per device in SimPO's 8B plan). `argument_copy_bytes` itself sees a copy of an
  argument and not a copy inside a fusion."""
  result = benchmark.compiled_memory(_small_config())
  assert result["argument_copy_bytes"] == 0 and result["alias_bytes"] > 0, result
  x = jax.numpy.ones((3, 5))
  both = jax.jit(lambda x: (x, x), donate_argnums=0).lower(x).compile().as_text()
  transposed = jax.jit(lambda x: (x.T, x), donate_argnums=0).lower(x).compile().as_text()
  assert benchmark.argument_copy_bytes(both) == 60  # one f32[3, 5] copy
  assert benchmark.argument_copy_bytes(transposed) == 0


@pytest.mark.long
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
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {SUITE_XLA_FLAGS}")
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


# ---------------------------------------------------------------------------------------
# What the step reads (benchmark.batch_layout): every registered loss plans and runs.

ONLINE_AND_TOKEN_REWARD = ("t_reg", "dno", "inpo", "gpo", "prime")


def _tiny_recipe(recipe: str):
  """configs/reproduce/<recipe>.py:tiny at SMALL's shape: batch 2 of 4 + 6 tokens."""
  import importlib

  config = importlib.import_module(f"configs.reproduce.{recipe}").get_config("tiny")
  config.model.update(**SMALL)
  config.batch_size = 2
  config.eval_batch_size = 2
  config.data.update(max_prompt_len=4, max_completion_len=6, buckets=(10,))
  config.online.max_new_tokens = 6
  return config


def test_every_registered_loss_has_a_layout():
  """batch_layout reads Requirements alone: it covers every loss of the registry."""
  import algorithms

  for name in algorithms.registered_names():
    config = _small_config()
    config.loss = algorithms.loss_config(name)
    arrays = benchmark.batch_layout(config).arrays()
    assert {"chosen_ids", "chosen_attention_mask", "chosen_loss_mask"} <= set(arrays), name
    needs = algorithms.get_algorithm(name).requirements
    for target in needs.targets:
      if not target.startswith("rejected_") or "rejected_ids" in arrays:
        assert target in arrays, (name, target)


def test_layouts_of_online_and_token_reward_losses():
  """What each step reads: stored π_ref / π_t log-probs for online rounds, T-REG's token
  rewards, PRIME's single responses with advantages and labels; online rows are prompt +
  max(max_completion_len, max_new_tokens) long."""
  expect = {
      "t_reg": {"chosen_token_rewards", "rejected_token_rewards"},
      "dno": {"prev_chosen_logps", "prev_rejected_logps", "preference_prob"},
      "inpo": {"ref_chosen_logps", "ref_rejected_logps", "prev_chosen_logps",
               "prev_rejected_logps"},
      "gpo": {"prev_chosen_logps", "prev_rejected_logps", "chosen_score", "rejected_score"},
      "prime": {"prev_chosen_logps", "chosen_advantages", "chosen_label"},
  }
  for recipe, fields in expect.items():
    config = _tiny_recipe(recipe)
    layout = benchmark.batch_layout(config)
    arrays = layout.arrays()
    assert fields <= set(arrays), (recipe, sorted(arrays))
    assert ("rejected_ids" in arrays) == (recipe != "prime"), recipe
    assert layout.in_step_frozen == (recipe == "t_reg"), recipe  # online rows store theirs
    assert layout.online == (recipe != "t_reg")
    assert arrays["chosen_ids"] == ((2, 10), "int32")
  config = _tiny_recipe("dno")
  config.online.max_new_tokens = 9  # longer than max_completion_len: the rows follow it
  assert benchmark.batch_layout(config).length == 4 + 9
  assert benchmark.batch_layout(config).logp_options(config).max_completion_len == 9


def test_unpaired_layout():
  """--unpaired: one response per row with its label, for a loss that trains on them."""
  from configs.reproduce import implicit_prm

  config = implicit_prm.get_config("paper")  # reference.mode "precomputed"
  arrays = benchmark.batch_layout(config, unpaired=True).arrays()
  assert "rejected_ids" not in arrays and "rejected_label" not in arrays
  assert {"chosen_label", "ref_chosen_logps"} <= set(arrays)
  with pytest.raises(ValueError, match="unpaired"):
    benchmark.batch_layout(_small_config(), unpaired=True)  # DPO needs pairs


@pytest.mark.parametrize("recipe", ONLINE_AND_TOKEN_REWARD)
def test_memory_only_plans_online_and_token_reward_losses(recipe):
  """--memory_only compiles these steps (1 CPU device, a few seconds each)."""
  config = _tiny_recipe(recipe)
  benchmark.validate(config)
  result = benchmark.compiled_memory(config)
  assert result["peak_memory_bound_bytes"] > 0 and result["temp_bytes"] > 0
  assert set(benchmark.batch_layout(config).arrays()) == set(result["batch_arrays"])
  assert result["sides"] == (["chosen"] if recipe == "prime" else ["chosen", "rejected"])
  assert result["tokens_per_step"] == len(result["sides"]) * 2 * 10


@pytest.mark.parametrize("recipe", ("t_reg", "inpo", "prime"))
def test_timed_run_of_online_and_token_reward_losses(recipe):
  """The timed benchmark builds the same batches with values: one finite step."""
  result = benchmark.run(_tiny_recipe(recipe), steps=1, warmup=0)
  assert math.isfinite(result["first_loss"]), result
  rows = 1 if recipe == "prime" else 2
  assert result["tokens_per_step"] == rows * 2 * 10
  # Online rows store their frozen log-probs: no frozen forward in the step.
  in_step = recipe == "t_reg"
  assert result["model_flops_per_step"] == ((8 if in_step else 6)
                                            * result["non_embedding_params"]
                                            * result["tokens_per_step"])


def test_online_oracle_is_not_part_of_the_plan():
  """A placeholder oracle stops the config check but not the benchmark, which says so."""
  from training import config_check

  config = _tiny_recipe("dno")
  config.online.update(scorer="judge", judge="my_pkg.gpt4_turbo:judge")
  with pytest.raises(ValueError, match="judge"):
    config_check.validate(config)
  benchmark.validate(config)
  assert "not validated" in benchmark.oracle_note(config)
  assert benchmark.oracle_note(_small_config()) is None
  assert config.online.judge == "my_pkg.gpt4_turbo:judge"  # the caller's config unchanged


def test_keep_cpu_barriers_flag(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert benchmark.keep_cpu_barriers() == ("--xla_force_host_platform_device_count=8 "
                                           "--xla_disable_hlo_passes=cse_barrier_expander")
  monkeypatch.setenv("XLA_FLAGS", "--xla_disable_hlo_passes=fusion")
  assert benchmark.keep_cpu_barriers() == "--xla_disable_hlo_passes=fusion"  # left alone


_REMAT_PLAN = """
import json
import jax, jax.numpy as jnp
from flax import nnx
from models import ModelConfig, Transformer
out = {}
for mode in ("none", "block"):
  cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=4,
                    num_heads=4, num_kv_heads=2, remat=mode)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  loss = lambda p, ids: jnp.mean(jax.nn.logsumexp(nnx.merge(graphdef, p)(ids), -1))
  compiled = jax.jit(jax.grad(loss)).lower(params, jnp.zeros((4, 128), jnp.int32)).compile()
  out[mode] = compiled.memory_analysis().temp_size_in_bytes
print(json.dumps(out))
"""


def test_kept_barriers_let_remat_cut_the_cpu_plan():
  """With the barriers kept through scheduling (--memory_only's default), XLA:CPU's plan of a
  4-layer gradient with remat="block" holds about a quarter of remat="none"'s temporaries
  (0.28x measured; 0.94x with XLA's default pipeline, which schedules every layer's
  recomputation into the forward pass)."""
  env = dict(os.environ,
             XLA_FLAGS=f"--xla_disable_hlo_passes=cse_barrier_expander {SUITE_XLA_FLAGS}")
  proc = subprocess.run([sys.executable, "-c", _REMAT_PLAN], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  temp = json.loads(proc.stdout.strip().splitlines()[-1])
  assert temp["block"] < 0.5 * temp["none"], temp


_GATHER_ORDER = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from models import ModelConfig, Transformer
from models.partitioning import batch_sharded_activations
mesh = jax.make_mesh((1, 2, 1), ("data", "fsdp", "tensor"),
                     axis_types=(jax.sharding.AxisType.Auto,) * 3)
cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3,
                  num_heads=4, num_kv_heads=2, remat="block")
graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
ids = jnp.asarray(np.random.RandomState(0).randint(3, 64, (2, 8)), jnp.int32)
loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(ids) ** 2)
def traced(mesh):
  with batch_sharded_activations(mesh):
    return str(jax.make_jaxpr(jax.grad(loss))(params)), jax.jit(jax.value_and_grad(loss))(params)
(pinned, (value, grads)), (plain, (ref_value, ref_grads)) = traced(mesh), traced(None)
# The forward's barriers (one per layer, in both passes) on top of remat's own.
assert pinned.count("optimization_barrier") - plain.count("optimization_barrier") == 2 * 3
np.testing.assert_allclose(value, ref_value, rtol=1e-6)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, ref_grads)
print("OK")
"""


def test_block_weights_are_gathered_in_turn():
  """models.partitioning.gather_after: with batch-sharded activations every layer's weights
  pass through a barrier with the activations before it (a scheduler cannot gather every
  layer's weights at the start of the step: XLA:CPU did, 0.77 GiB a Llama-3-8B layer on
  fsdp=8, docs/recipes.md), and loss and gradients are unchanged (2 virtual devices)."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {SUITE_XLA_FLAGS}")
  proc = subprocess.run([sys.executable, "-c", _GATHER_ORDER], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_recorded_commands_name_no_machine_folder():
  """The peers' and scaling runs' JSON records their commands: this interpreter as `python`,
  paths in or beside the checkout relative to it, any other absolute path by its last part."""
  from experiments.processes import ROOT, portable
  command = [sys.executable, "/opt/somewhere/bin/python3",
             os.path.join(ROOT, ".venv-trl", "bin", "python"),
             os.path.join(os.path.dirname(ROOT), "shared", "bench", "trl_dpo_bench.py"),
             "--size=tiny", "configs/dpo.py"]
  assert portable(command) == ("python python3 .venv-trl/bin/python "
                               "../shared/bench/trl_dpo_bench.py --size=tiny configs/dpo.py")
