r"""Training-step throughput of a preset on random weights and synthetic pairs; one JSON line.

    python -m experiments.benchmark --config=configs/dpo.py:bench_tiny --steps=10 --warmup=2

The step is the production one (`training.step.make_train_step`, jitted with the train state
donated), on parameters from `training.experiment.init_params` and the optimizer of
`training.optim`. Every batch is the same synthetic one: `batch_size` pairs of
`data.max_prompt_len` prompt + `data.max_completion_len` completion tokens, no padding, loss
masks on the completion tokens only (the TRL anchor's layout). The first `--warmup` steps
(compilation included) are not timed; then each of `--steps` steps is timed to
`jax.block_until_ready`, and the median is reported.

What the step reads (`batch_layout`), from the loss's `Requirements` alone, so that every
registered loss runs and plans: the pairs (one response per row for PRIME's "groups" rows,
or with `--unpaired` for a loss that trains on unpaired records), the frozen models' stored
log-probs (`ref_*_logps` for a precomputed reference or an online round's π_ref,
`prev_*_logps` for its π_t), else a frozen copy of the policy in the step, and every
declared target (T-REG's [B, T] token rewards, PRIME's advantages and labels, DNO's
preference probability, GPO's scores, the implicit PRM's labels). Online losses plan the
step of a round's training: rows of prompt + max(max_completion_len, online.max_new_tokens)
tokens, the completion window as wide. Their oracle (a judge callable, a preference model's
run) scores the rows before the step and is no part of it: the config check skips it
(`validate`) and the result line says so under "oracle". The stored log-probs of the timed
run are one forward of the initial parameters (π_ref = π_t = π_0, as in a first round).

Model FLOPs per optimizer step ("model FLOPs": recomputation and attention scores not
counted, the same formula as the TRL anchor so that MFU and tokens/s compare directly):

    T = sides * batch_size * (prompt_len + completion_len)   tokens of every row (sides: 2
                    for pairs, 1 for single responses)
    N = models.num_non_embedding_params(model)          (no input embedding, no lm_head)
    F = 6 * N * T   policy forward + backward
      + 2 * N * T   frozen model's forward, only when it runs inside the step (reference.mode
                    "in_step" for a loss that reads one); 0 when the batch carries the
                    log-probs (a precomputed reference, an online round's rows)

`work_flops_per_step` adds what F leaves out, the lm_head and attention (T·(8·N + 8·D·V +
16·L·A·S) with an in-step reference; experiments/benchmark_work.py), for comparisons across
sequence lengths. `mfu = F / step_time_s / peak`, with `peak` the device's dense bf16 rate
(table below; null where unknown, e.g. CPU). `--cpu_ynn_fusion_type` sets XLA:CPU's YNNPACK fusion list before
JAX initialises (see docs/performance.md for why the default turns it off).

Optimization barriers (`--cpu_keep_barriers`, on by default with `--memory_only`): XLA:CPU
drops them before it schedules, XLA:GPU after. jax.checkpoint fences each layer's
recomputation with a barrier; without it XLA:CPU ran every layer's recomputation during the
forward pass and its plan held all of them (Llama-3-8B at one pair per device: 6 GiB per
layer, 255 GiB for SimPO's preset; 34 GiB with the barriers kept: docs/recipes.md, "Memory
of the paper presets"). Kept through scheduling, the plan honours remat as a GPU's would.
The timed run leaves XLA's default.

`--remat_policies=none,block,dots,nothing` runs the step (or `--memory_only`'s plan) once per
`config.model.remat` value in one process, one JSON line each:

    python -m experiments.benchmark --config=configs/dpo.py:bench_tiny --memory_only \
        --remat_policies=none,block,dots,nothing

`--mode=sample` times the KV-cache sampler instead (`models.sampling.sample`, what every online
round runs), on the same random-weight model:

    python -m experiments.benchmark --mode=sample --config=configs/dpo.py:bench_tiny \
        --sampling=greedy --sample_batch=16 --prompt_len=64 --new_tokens=128

`--sample_batch` prompts of `--prompt_len` random tokens (no padding; ids avoid 0..2), and
`--new_tokens` completion tokens per row. eos is the id `vocab_size`, which the model cannot
emit, so every row runs all `--new_tokens` steps (the HF anchor, experiments/
hf_generate_bench.py, forces the same with `min_new_tokens`): both sides do equal work.
`--sampling=greedy` is temperature 0; `top_p` is temperature 1.0, top_p 0.9. Each timed call
runs to `jax.block_until_ready`; reported (medians over `--steps` calls after `--warmup`):

  total_s     one `sample` call: prefill + every decode step
  prefill_s   one `sample` call with max_new_tokens=1 (the prompt forward into the cache and
              the first token's choice), compiled and timed separately
  decode_s    total_s - prefill_s: the remaining new_tokens - 1 one-token steps
  tokens_per_s  sample_batch * new_tokens / total_s (generated tokens only)
  compile_s   the first call's time minus total_s (tracing + XLA compilation)
"""

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import platform
import re
import resource
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

from experiments.benchmark_work import work_per_step
from experiments.common import reuse_host_buffers, set_cpu_xla_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/dpo.py:bench_tiny",
                                          "Path to a config file[:preset].", lock_config=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"],
                          "What to time: the train step, or the KV-cache sampler.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compiled ahead of time).")
_MEMORY_ONLY = flags.DEFINE_bool(
    "memory_only", False, "Compile the step from abstract shapes and print XLA's memory "
    "accounting instead of timing it (compiled_memory); needs no memory for the model.")
_REMAT_POLICIES = flags.DEFINE_list(
    "remat_policies", [], "Comma list of config.model.remat values (models/config.py "
    "REMAT_MODES): run the train benchmark (or --memory_only) once per value, in this "
    "process, one JSON line each; a value the platform refuses (offload on CPU) prints a "
    "line with its reason under 'skipped'. Empty: config.model.remat as given.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 16, "--mode=sample: prompts per call.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "--mode=sample: prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "--mode=sample: generated tokens per row.")
_SAMPLING = flags.DEFINE_enum("sampling", "greedy", ["greedy", "top_p"],
                              "--mode=sample: greedy (temperature 0) or top_p (0.9, "
                              "temperature 1.0).")
_YNN = flags.DEFINE_string(
    "cpu_ynn_fusion_type", "",
    "Value of --xla_cpu_experimental_ynn_fusion_type, which only XLA:CPU reads. '' (the "
    "default) turns YNNPACK fusions off, 'reduce' keeps them for reductions only, 'default' "
    "leaves XLA's own choice (dots + reductions). Ignored when XLA_FLAGS already sets it.")
_REUSE_HOST_BUFFERS = flags.DEFINE_bool(
    "cpu_reuse_host_buffers", False,
    "glibc only, before JAX starts its threads: serve every thread's malloc from one heap that "
    "is never handed back to the OS (mallopt M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD "
    "2^31-1). XLA:CPU allocates each execution's temporaries as one buffer (506 MiB at "
    "bench_tiny) from a pool thread; glibc maps that afresh every step, and the page faults "
    "and zeroing cost ~0.2 CPU-s per step (docs/performance.md). Host memory only. Off by "
    "default: PyTorch gains about as much from the same settings, so a comparison with the "
    "TRL anchor gives both or neither.")

_UNPAIRED = flags.DEFINE_bool(
    "unpaired", False, "Plan / time a batch of unpaired records (one response per row, with "
    "its label) for a loss that trains on them (Requirements.unpaired: implicit_prm's "
    "prompt/completion/label data); default: pairs.")
_KEEP_BARRIERS = flags.DEFINE_bool(
    "cpu_keep_barriers", None,
    "XLA:CPU only: keep optimization barriers through scheduling "
    "(--xla_disable_hlo_passes=cse_barrier_expander), as XLA:GPU does, so that remat and "
    "the model's weight-gather ordering constrain the schedule (module doc, \"Optimization "
    "barriers\"). Default: on for --memory_only, off for timed runs.")

# Dense bf16 peak FLOP/s per chip, matched as a substring of `device.device_kind` (lower case,
# first match wins, so the more specific names come first).
PEAK_BF16_FLOPS = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
)

# Whether main() applied --cpu_reuse_host_buffers (recorded in the result line).
_host_buffers_reused = False


_BARRIER_PASS = "cse_barrier_expander"


def keep_cpu_barriers() -> str:
  """Adds `--xla_disable_hlo_passes=cse_barrier_expander` to XLA_FLAGS (before JAX starts).

  XLA:CPU removes optimization barriers right after its first CSE pass, before layout
  assignment and scheduling (cpu_compiler.cc); XLA:GPU removes them only after scheduling
  (gpu_compiler.cc, "post-scheduling-passes"). Without barriers, XLA:CPU's scheduler ran each
  layer's rematerialised forward (jax.checkpoint's recomputation, fenced by a barrier)
  during the forward pass and kept its outputs until the backward: with remat the plan held
  every layer's activations, worse than no remat. Only XLA:CPU reads the pass name; a
  flag list that already disables passes is left alone. Returns the resulting XLA_FLAGS.
  """
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "--xla_disable_hlo_passes" not in flags_now:
    flags_now = f"{flags_now} --xla_disable_hlo_passes={_BARRIER_PASS}".strip()
    os.environ["XLA_FLAGS"] = flags_now
  return flags_now


def peak_flops(device_kind: str):
  kind = device_kind.lower()
  for name, peak in PEAK_BF16_FLOPS:
    if name in kind:
      return peak
  return None


def model_flops_per_step(num_non_embedding: int, tokens: int, reference_in_step: bool) -> int:
  """F = 6·N·T (policy fwd+bwd) + 2·N·T (in-step reference forward, else 0)."""
  return (6 + (2 if reference_in_step else 0)) * num_non_embedding * tokens


def synthetic_batch(batch_size: int, prompt_len: int, completion_len: int, vocab_size: int,
                    seed: int) -> dict:
  """Fixed-length pairs without padding, in the layout of `data.pipeline`.

  ids avoid 0..2 (pad/bos/eos in the tokenizers); the loss mask is 1 on the completion
  positions [prompt_len, prompt_len + completion_len) of both sides.
  """
  import numpy as np

  rng = np.random.default_rng(seed)
  length = prompt_len + completion_len
  prompt = rng.integers(3, vocab_size, (batch_size, prompt_len), dtype=np.int32)
  loss_mask = np.zeros((batch_size, length), np.float32)
  loss_mask[:, prompt_len:] = 1.0
  batch = {}
  for side in ("chosen", "rejected"):
    completion = rng.integers(3, vocab_size, (batch_size, completion_len), dtype=np.int32)
    batch[f"{side}_ids"] = np.concatenate([prompt, completion], axis=1)
    batch[f"{side}_attention_mask"] = np.ones((batch_size, length), np.int32)
    batch[f"{side}_loss_mask"] = loss_mask.copy()
  return batch


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """The arrays one train step of a loss reads (`batch_layout`), in data.pipeline's layout.

  rows x length per side; `stored`: the frozen models whose per-token log-probs the batch
  carries (`{slot}_{side}_logps`: a precomputed reference, an online round's π_ref and π_t);
  `in_step_frozen`: a frozen model runs inside the step (the step gets `ref_params`);
  `pair_targets` [rows] and `token_targets` [rows, length]: the loss's declared targets
  (algorithms/base.py TARGETS) on the sides the batch has.
  """

  rows: int
  length: int
  sides: tuple[str, ...]
  stored: tuple[str, ...]
  in_step_frozen: bool
  pair_targets: tuple[str, ...]
  token_targets: tuple[str, ...]
  online: bool

  def arrays(self) -> dict:
    """{name: (shape, dtype name)} of every array of the batch."""
    rows, length = (self.rows,), (self.rows, self.length)
    out = {}
    for side in self.sides:
      out.update({f"{side}_ids": (length, "int32"), f"{side}_attention_mask": (length, "int32"),
                  f"{side}_loss_mask": (length, "float32")})
      out.update({f"{slot}_{side}_logps": (length, "float32") for slot in self.stored})
    out.update({name: (rows, "float32") for name in self.pair_targets})
    out.update({name: (length, "float32") for name in self.token_targets})
    return out

  def logp_options(self, config):
    """The step's `LogpOptions`: an online round's completion window is max_new_tokens wide."""
    from training import experiment

    return experiment.logp_options(config, online=self.online)

  def summary(self) -> dict:
    """What the result line records of the layout."""
    return {"rows": self.rows, "length": self.length, "sides": list(self.sides),
            "batch_arrays": sorted(self.arrays()), "in_step_frozen": self.in_step_frozen}


def _target_side(name: str):
  """"chosen" / "rejected" for a per-response target, None for a per-pair one."""
  return next((side for side in ("chosen", "rejected") if name.startswith(side + "_")), None)


def batch_layout(config, unpaired: bool = False) -> BatchLayout:
  """What the train step of `config.loss.name` reads, from its `Requirements` alone.

  Pairs of data.max_prompt_len + data.max_completion_len tokens, as an offline run batches
  them; an online loss (`Requirements.online`) plans the step of a round's training, whose
  rows are prompt + max(max_completion_len, online.max_new_tokens) tokens and carry the
  stored log-probs of the frozen models the loss reads (`ref_*` for π_ref, `prev_*` for
  π_t; training/rounds.py), one response per row for "groups" rows (PRIME). Offline, the
  reference's log-probs are in the batch when `reference.mode` is "precomputed", else a
  frozen copy of the policy runs in the step (also for a previous policy). Every declared
  target is there ([B] per pair, [B, T] per token: T-REG's token rewards, PRIME's
  advantages), whichever form of the loss it selects (DNO's soft labels: same memory).
  `unpaired`: one response per row for a loss that trains on unpaired records
  (`Requirements.unpaired`, e.g. the implicit PRM's prompt / completion / label data).
  """
  import algorithms
  from data.readers import PAIR_FIELDS

  needs = algorithms.get_algorithm(config.loss.name).requirements
  if unpaired and needs.unpaired is None:
    raise ValueError(f"loss {config.loss.name!r} does not train on unpaired records "
                     "(Requirements.unpaired is None): plan it without --unpaired")
  online = needs.online is not None
  d = config.data
  completion = d.max_completion_len
  if online:
    completion = max(completion, config.online.max_new_tokens)
  single = unpaired or (online and needs.online.rows == "groups")
  sides = ("chosen",) if single else ("chosen", "rejected")
  slots = tuple(slot for slot, wanted in (("ref", needs.reference),
                                         ("prev", needs.previous_policy))
                if wanted and needs.head == "lm")
  if online:
    stored = slots
  elif config.reference.mode == "precomputed":
    stored = tuple(slot for slot in slots if slot == "ref")
  else:
    stored = ()
  targets = [t for t in needs.targets if _target_side(t) in (None,) + sides]
  return BatchLayout(
      rows=config.batch_size, length=d.max_prompt_len + completion, sides=sides,
      stored=stored, in_step_frozen=len(stored) < len(slots),
      pair_targets=tuple(t for t in targets if t in PAIR_FIELDS),
      token_targets=tuple(t for t in targets if t not in PAIR_FIELDS), online=online)


def peak_memory() -> tuple[int, str]:
  """(bytes, source): the device allocator's peak where it reports one, else peak RSS."""
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def compiled_memory(config, unpaired: bool = False) -> dict:
  """XLA's memory accounting of the compiled train step, from abstract shapes only.

  Nothing is allocated or run, so a preset can be measured on a machine that could not hold
  it (bench_1b on this CPU). The step, optimizer, batch layout (`batch_layout`: what the
  loss's step reads) and donation are those of `build_step`; parameters are
  `jax.ShapeDtypeStruct`s. XLA's buffer assignment reports
  (bytes): `argument` (state, reference params, batch), `output`, `alias` (outputs written
  into donated arguments), `temp` (every intermediate live at some point, e.g. the
  activations kept for the backward); the step's peak is at most
  argument + output − alias + temp. `argument_copy_bytes`: the part of temp that copies the
  step's own arguments (about 0 when the donated state is updated in place). On CPU this is
  XLA:CPU's plan (fusion and layouts differ on a GPU), so compare in-step against
  precomputed on the same backend, not across backends.

  The state, reference and batch carry the shardings of `build_step` on `config.mesh`
  (parameters and Adam moments by `models.param_partition_specs`, the batch over data x
  fsdp), so the step is compiled SPMD-partitioned and the byte counts are one device's
  (`saved_residual_bytes` stays the whole batch's, from unsharded tracing).
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx

  import algorithms
  import models
  from training import experiment
  from training.mesh import batch_sharding, make_mesh, replicated
  from training.optim import learning_rate_schedule, make_optimizer
  from training.step import TrainState, make_train_step

  algorithm = algorithms.get_algorithm(config.loss.name)
  layout = batch_layout(config, unpaired=unpaired)
  mesh = make_mesh(config.mesh)
  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: experiment._new_model(config, algorithm.requirements.head, 0)),
      nnx.Param)
  # Laid out as build_step lays out the real arrays: one device's share is what XLA plans.
  param_sharding = experiment._shardings(mesh, models.param_partition_specs(abstract, mesh))
  params = _with_shardings(nnx.to_pure_dict(abstract), param_sharding)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  opt_abstract = jax.eval_shape(optimizer.init, params)
  opt_state = _with_shardings(opt_abstract,
                              experiment._like_params(opt_abstract, param_sharding, mesh))
  scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))
  state = TrainState(step=scalar, params=params, opt_state=opt_state, skipped_steps=scalar)
  rows_sharding = batch_sharding(mesh)
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=rows_sharding)
           for name, (shape, dtype) in layout.arrays().items()}
  ref_params = params if layout.in_step_frozen else None
  train_step = make_train_step(graphdef, algorithm, config.loss, optimizer,
                               learning_rate_schedule(config.optimizer, config.total_steps),
                               grad_accum_steps=config.grad_accum_steps,
                               logps=layout.logp_options(config),
                               mesh=experiment.activation_mesh(config, mesh))
  start = time.perf_counter()
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  compiled = jax.jit(train_step, donate_argnums=(0,),
                     out_shardings=(state_sharding, replicated(mesh))).lower(
                         state, ref_params, batch).compile()
  compile_s = time.perf_counter() - start
  residual_bytes = saved_residual_bytes(graphdef, algorithm, config, params, ref_params, batch,
                                        layout.logp_options(config))
  stats = compiled.memory_analysis()
  sizes = {name: int(getattr(stats, f"{name}_size_in_bytes"))
           for name in ("argument", "output", "alias", "temp", "generated_code")}
  device = jax.devices()[0]
  return {
      "config": config.name,
      "reference_mode": config.reference.mode,
      "share_prompt": config.model.get("share_prompt", False),
      "logits_on": config.model.get("logits_on", "all"),
      "remat": config.model.remat,
      "attention_impl": config.model.get("attention_impl", "custom_vjp"),
      "memory_source": "XLA buffer assignment of the compiled step (no allocation)",
      # What autodiff keeps for the backward pass (jax's count, before XLA's plan).
      "saved_residual_bytes": residual_bytes,
      "peak_memory_bound_bytes": (sizes["argument"] + sizes["output"] - sizes["alias"]
                                  + sizes["temp"]),
      **{f"{name}_bytes": value for name, value in sizes.items()},
      # Part of temp_bytes: copies of the arguments, e.g. of the donated state.
      "argument_copy_bytes": argument_copy_bytes(compiled.as_text()),
      "params": int(sum(x.size for x in jax.tree.leaves(params))),
      "tokens_per_step": len(layout.sides) * layout.rows * layout.length,
      **layout.summary(),
      "grad_accum_steps": config.grad_accum_steps,
      "mesh": dict(mesh.shape),
      "num_devices": mesh.size,
      "bytes_are": "per device",
      "compile_s": compile_s,
      "platform": device.platform,
      "device_kind": device.device_kind,
      "jax_version": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _with_shardings(tree, shardings):
  """`tree`'s abstract leaves (`jax.ShapeDtypeStruct`) with the matching leaf of `shardings`."""
  import jax

  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def saved_residual_bytes(graphdef, algorithm, config, params, ref_params, batch,
                         logps=None) -> int:
  """Bytes of the residuals autodiff saves between the loss's forward and backward pass.

  `jax.ad_checkpoint.saved_residuals` of the policy's loss on the whole batch (one
  micro-batch when grad_accum_steps = 1), from abstract shapes; the parameters and the
  batch themselves are not counted. This is what the remat policy decides, independent of
  the backend: XLA:CPU's buffer plan (`temp_bytes`) reuses and schedules buffers its own
  way and moves less with the policy than a GPU's would.
  """
  import jax
  import jax.ad_checkpoint

  from training import experiment
  from training.step import loss_inputs

  logps = experiment.logp_options(config) if logps is None else logps

  def loss(params, ref_params, batch):
    inputs = loss_inputs(graphdef, params, ref_params, batch, algorithm, logps)
    return algorithm.loss_fn(inputs, config.loss)[0]

  # jax 0.10.2 only exports the printing form: read its lines back.
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(loss, params, ref_params, batch)
  return residual_bytes(out.getvalue().splitlines())


# Bytes per element of the short dtype names jax prints ('f32[2,8,32]') and HLO's ('s32[]').
_DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "i64": 8, "i32": 4, "u32": 4,
                "i16": 2, "i8": 1, "u8": 1, "bool": 1, "s64": 8, "s32": 4, "s16": 2, "s8": 1,
                "u64": 8, "u16": 2, "pred": 1}


def argument_copy_bytes(hlo_text: str) -> int:
  """Bytes of the copies the compiled step makes of its own arguments: `copy(%p)` of an
  entry-computation parameter `p` in the optimized HLO (`compiled.as_text()`).

  A donated argument updated in place needs no copy; XLA inserts one when the argument's old
  value must outlive the write of its new one. The non-finite guard's `where` over the
  updated state did that for every Adam moment (training/step.py `_update_if_finite`), so a
  step that updates its state in place reports about nothing here.
  """
  entry = hlo_text[hlo_text.index("\nENTRY "):]
  params = set(re.findall(r"%([\w.\-]+) = \S+ parameter\(\d+\)", entry))
  total = 0
  for dtype, dims, operand in re.findall(
      r"= (\w+)\[([\d,]*)\](?:\{[\d,]*\})? copy\(%([\w.\-]+)\)", entry):
    if operand in params:
      total += math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype]
  return total


def residual_bytes(lines) -> int:
  """Total bytes of `print_saved_residuals` lines, leaving out the function's arguments."""
  total = 0
  for line in lines:
    match = re.match(r"\s*(\w+)\[([\d,]*)\]", line)
    if match is None or "from the argument" in line:
      continue
    dims = [int(d) for d in match.group(2).split(",") if d]
    total += math.prod(dims) * _DTYPE_BYTES.get(match.group(1), 4)
  return total


def layout_batch(layout: BatchLayout, prompt_len: int, vocab_size: int, seed: int) -> dict:
  """`synthetic_batch` in `layout` (numpy), without the frozen log-probs (`build_step` adds
  them): its sides, and its targets: labels 1 (chosen) / 0 (rejected), DNO's preference
  probability 0.75, normal(0, 1) scores, normal(0, 0.1) token values on the loss mask."""
  import numpy as np

  pairs = synthetic_batch(layout.rows, prompt_len, layout.length - prompt_len, vocab_size, seed)
  batch = {k: v for k, v in pairs.items() if k.split("_")[0] in layout.sides}
  rng = np.random.default_rng(seed + 1)
  fixed = {"chosen_label": 1.0, "rejected_label": 0.0, "preference_prob": 0.75}
  for name in layout.pair_targets:
    value = fixed.get(name)
    batch[name] = (np.full(layout.rows, value, np.float32) if value is not None
                   else rng.normal(size=layout.rows).astype(np.float32))
  for name in layout.token_targets:
    mask = batch[f"{_target_side(name)}_loss_mask"]
    batch[name] = (0.1 * rng.normal(size=mask.shape)).astype(np.float32) * mask
  return batch


def build_step(config, unpaired: bool = False):
  """(compiled step, compile seconds, state, ref_params, batch, model config, mesh).

  The batch is `layout_batch` of `batch_layout(config, unpaired)`; every frozen model whose
  log-probs it carries is the initial policy (π_ref = π_t = π_0, as in a run's first round),
  so those log-probs are one forward of the parameters.
  """
  import jax
  import jax.numpy as jnp

  import algorithms
  from training import experiment
  from training.mesh import make_mesh, put_batch, replicated
  from training.optim import learning_rate_schedule, make_optimizer
  from training.step import TrainState, make_train_step, pair_logps

  mesh = make_mesh(config.mesh)
  algorithm = algorithms.get_algorithm(config.loss.name)
  layout = batch_layout(config, unpaired=unpaired)
  graphdef, params = experiment.init_params(config, mesh, algorithm.requirements.head)
  schedule = learning_rate_schedule(config.optimizer, config.total_steps)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  # The optimizer state sharded like the parameters, as training.experiment.build lays it out.
  param_sharding = jax.tree.map(lambda x: x.sharding, params)
  opt_sharding = experiment._like_params(jax.eval_shape(optimizer.init, params), param_sharding, mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_sharding)(params)
  scalar = replicated(mesh)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), scalar), params=params,
                     opt_state=opt_state,
                     skipped_steps=jax.device_put(jnp.zeros((), jnp.int32), scalar))

  mcfg = experiment.model_config(config)
  batch = put_batch(layout_batch(layout, config.data.max_prompt_len, mcfg.vocab_size,
                                 config.seed), mesh)
  # How log-probs are computed: the run's own options (training/step.py: LogpOptions).
  logps = layout.logp_options(config)
  if layout.stored:
    frozen = jax.jit(lambda p, b: pair_logps(graphdef, p, b, logps))(params, batch)
    for slot in layout.stored:
      batch.update({f"{slot}_{side}_logps": value
                    for side, value in zip(layout.sides, frozen)})
  # A copy, not an alias: the step donates the policy params.
  ref_params = jax.tree.map(jnp.copy, params) if layout.in_step_frozen else None
  train_step = make_train_step(graphdef, algorithm, config.loss, optimizer, schedule,
                               grad_accum_steps=config.grad_accum_steps, logps=logps,
                               mesh=experiment.activation_mesh(config, mesh))
  start = time.perf_counter()
  # The state keeps its shardings across steps (as in training.loop), so one executable
  # serves every step.
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  jitted = jax.jit(train_step, donate_argnums=(0,), out_shardings=(state_sharding, scalar))
  compiled = jitted.lower(state, ref_params, batch).compile()
  compile_s = time.perf_counter() - start
  return compiled, compile_s, state, ref_params, batch, mcfg, mesh


def run(config, steps: int, warmup: int, unpaired: bool = False) -> dict:
  """Times `steps` train steps after `warmup` untimed ones; returns the result dict."""
  import jax

  import models

  step_fn, compile_s, state, ref_params, batch, mcfg, mesh = build_step(config, unpaired)
  layout = batch_layout(config, unpaired)
  times, losses = [], []
  first_step_s = None
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, ref_params, batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    losses.append(float(metrics["loss"]))
    if i == 0:
      first_step_s = elapsed
    if i >= warmup:
      times.append(elapsed)

  d = config.data
  tokens = len(layout.sides) * layout.rows * layout.length
  # A frozen model's forward in the step (an online round's are stored with its rows).
  reference_in_step = layout.in_step_frozen
  non_embedding = models.num_non_embedding_params(mcfg)
  flops = model_flops_per_step(non_embedding, tokens, reference_in_step)
  step_time = statistics.median(times)
  device = jax.devices()[0]
  peak = peak_flops(device.device_kind)
  memory, memory_source = peak_memory()
  return {
      "config": config.name,
      "tokens_per_s": tokens / step_time,
      "pairs_per_s": config.batch_size / step_time,
      "step_time_s": step_time,
      "step_times_s": [round(t, 4) for t in times],
      "compile_s": compile_s,
      "first_step_s": first_step_s,
      "model_flops_per_step": flops,
      "flops_formula": "(6 + 2*in_step_reference) * N_non_embedding * T",
      # Attention and lm_head included (experiments/benchmark_work.py): what the step costs.
      "work_flops_per_step": work_per_step(config, layout.length, sides=len(layout.sides),
                                           reference_in_step=reference_in_step),
      "achieved_tflops": flops / step_time / 1e12,
      "mfu": None if peak is None else flops / step_time / (peak * jax.device_count()),
      "peak_bf16_flops_per_device": peak,
      "peak_memory_bytes": memory,
      "peak_memory_source": memory_source,
      "tokens_per_step": tokens,
      "batch_size": config.batch_size,
      "prompt_len": d.max_prompt_len,
      "completion_len": layout.length - d.max_prompt_len,
      **layout.summary(),
      "non_embedding_params": non_embedding,
      "params": models.num_params(mcfg),
      "reference_mode": config.reference.mode,
      "dtype": mcfg.dtype,
      "param_dtype": mcfg.param_dtype,
      "model_impl": {k: config.model.get(k) for k in ("mlp_impl", "attention_impl",
                                                      "attention_query_blocks",
                                                      "logp_chunk_size", "logits_on",
                                                      "share_prompt", "remat")},
      "first_loss": losses[0],
      "last_loss": losses[-1],
      "mesh": dict(mesh.shape),
      "num_devices": jax.device_count(),
      "platform": device.platform,
      "device_kind": device.device_kind,
      "jax_version": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu_reuse_host_buffers": _host_buffers_reused,
      "steps": steps,
      "warmup": warmup,
  }


# --mode=sample: (temperature, top_p) of each --sampling choice; the HF anchor uses the same.
SAMPLING = {"greedy": (0.0, 1.0), "top_p": (1.0, 0.9)}


def synthetic_prompts(batch: int, prompt_len: int, vocab_size: int, seed: int):
  """(ids, mask) [batch, prompt_len] int32: random ids in [3, V), every token real."""
  import numpy as np

  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab_size, (batch, prompt_len), dtype=np.int32)
  return ids, np.ones_like(ids)


def sample_model(config):
  """The random-weight `models.Transformer` of the train benchmark (`experiment.init_params`)."""
  from flax import nnx

  from training import experiment
  from training.mesh import make_mesh

  graphdef, params = experiment.init_params(config, make_mesh(config.mesh))
  return nnx.merge(graphdef, params)


def time_calls(fn, steps: int, warmup: int) -> tuple[float, list[float]]:
  """(first call seconds, the timed calls' seconds): fn() runs warmup + steps times."""
  import jax

  times = []
  for _ in range(warmup + steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times[0], times[warmup:]


def run_sample(config, *, batch: int, prompt_len: int, new_tokens: int, sampling: str,
               steps: int, warmup: int) -> dict:
  """Times `models.sampling.sample` on `config`'s model (module doc, --mode=sample)."""
  import jax
  import numpy as np

  from models import sampling as sampler

  model = sample_model(config)
  vocab = model.config.vocab_size
  ids, mask = synthetic_prompts(batch, prompt_len, vocab, config.seed)
  temperature, top_p = SAMPLING[sampling]
  key = jax.random.key(config.seed)

  def call(max_new_tokens):
    # eos = vocab_size: an id the model cannot emit, so no row stops early.
    return lambda: sampler.sample(model, ids, mask, key=key, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_p=top_p, eos_id=vocab,
                                  pad_id=0)

  first_s, totals = time_calls(call(new_tokens), steps, max(warmup, 1))
  _, prefills = time_calls(call(1), steps, max(warmup, 1))
  total_s, prefill_s = statistics.median(totals), statistics.median(prefills)
  tokens, completion_mask, _ = call(new_tokens)()
  generated = int(completion_mask.sum())
  assert generated == batch * new_tokens, (generated, batch * new_tokens)  # equal work
  device = jax.devices()[0]
  return sample_result(
      config=config.name, impl="ours", sampling=sampling, batch=batch,
      prompt_len=prompt_len, new_tokens=new_tokens, total_s=total_s, prefill_s=prefill_s,
      compile_s=first_s - total_s, first_call_s=first_s, total_times_s=totals,
      device_kind=device.device_kind, platform=device.platform,
      versions={"jax": jax.__version__}, steps=steps, warmup=max(warmup, 1),
      first_tokens=np.asarray(tokens)[0, :8].tolist())


def sample_result(*, batch, new_tokens, total_s, prefill_s, total_times_s, **rest) -> dict:
  """The JSON line of a sampling benchmark (ours and the HF anchor print the same keys)."""
  generated = batch * new_tokens
  return {
      "tokens_per_s": generated / total_s,
      "total_s": total_s,
      "prefill_s": prefill_s,
      "decode_s": total_s - prefill_s,
      "decode_tokens_per_s": batch * (new_tokens - 1) / max(total_s - prefill_s, 1e-9),
      "generated_tokens": generated,
      "batch": batch,
      "new_tokens": new_tokens,
      "total_times_s": [round(t, 4) for t in total_times_s],
      "cpu": cpu_name(),
      **rest,
  }


def cpu_name() -> str:
  """The CPU's model name (/proc/cpuinfo) and core count, e.g. 'AMD EPYC (2 cores)'."""
  name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          name = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{name} ({os.cpu_count()} cores)"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _STEPS.value < 1 or _WARMUP.value < 0:
    raise app.UsageError("--steps must be >= 1 and --warmup >= 0")
  global _host_buffers_reused
  if _REUSE_HOST_BUFFERS.value:
    _host_buffers_reused = reuse_host_buffers()  # before JAX starts its threads
  set_cpu_xla_flags(_YNN.value)  # before anything imports jax's backends
  keep_barriers = _KEEP_BARRIERS.value
  if keep_barriers is None:
    keep_barriers = _MEMORY_ONLY.value and _MODE.value == "train"
  if keep_barriers:
    keep_cpu_barriers()
  try:
    validate(_CONFIG.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _MODE.value == "sample":
    print(json.dumps(run_sample(
        _CONFIG.value, batch=_SAMPLE_BATCH.value, prompt_len=_PROMPT_LEN.value,
        new_tokens=_NEW_TOKENS.value, sampling=_SAMPLING.value, steps=_STEPS.value,
        warmup=_WARMUP.value)), flush=True)
    return
  if _REMAT_POLICIES.value:
    for mode in _REMAT_POLICIES.value:
      config = copy.deepcopy(_CONFIG.value)
      config.model.remat = mode
      try:
        validate(config)
      except ValueError as e:
        print(json.dumps({"config": config.name, "remat": mode, "skipped": str(e)}), flush=True)
        continue
      print(json.dumps(_measure(config)), flush=True)
    return
  print(json.dumps(_measure(_CONFIG.value)), flush=True)


# The oracle `validate` checks an online loss's config with: the verifier, which needs nothing.
_STEP_ONLY_ORACLE = {"scorer": "verifier", "judge": "", "scorer_path": ""}


def validate(config):
  """`config_check.validate`, except an online loss's oracle (module doc: "What the step
  reads").

  The step trains on rows the round has already scored, so the oracle (a judge callable, a
  preference model's workdir: placeholders in the paper presets) is not part of what is
  measured; its fields are checked as if the verifier scored the round. Everything else is
  checked as a run would be.
  """
  import algorithms
  from training import config_check

  if algorithms.get_algorithm(config.loss.name).requirements.online is not None:
    config = copy.deepcopy(config)
    config.online.update(_STEP_ONLY_ORACLE)
  config_check.validate(config)


def oracle_note(config):
  """What the result line says of an online loss's oracle (None for an offline loss)."""
  import algorithms

  if algorithms.get_algorithm(config.loss.name).requirements.online is None:
    return None
  return (f"not validated (config.online.scorer={config.online.scorer!r}): the step trains "
          "on rows already scored")


def _measure(config) -> dict:
  """--memory_only's plan or the timed run of `config`, with its remat mode named."""
  if _MEMORY_ONLY.value:
    result = compiled_memory(config, unpaired=_UNPAIRED.value)
  else:
    result = dict(run(config, _STEPS.value, _WARMUP.value, unpaired=_UNPAIRED.value),
                  remat=config.model.remat)
  note = oracle_note(config)
  return result if note is None else dict(result, oracle=note)


if __name__ == "__main__":
  app.run(main)
