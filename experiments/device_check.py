r"""One prepared device call: GPU tests, then bench_1b variants and the TRL anchor; one JSON file.

    python -m experiments.device_check                 # on one H100 / H200, <= 8 minutes
    python -m experiments.device_check --dry_run       # anywhere (CPU): micro shapes, ~1 min

On the lent GPU machines (no network; their image lacks ml-collections, tensorflow-datasets,
tensorboardX and TRL), run `experiments/device_wheels.sh` here first: its header gives the
call's command, which installs what it fetched and copies the report where the call returns it.

What it runs, in order, each step a subprocess under its own timeout and all of them inside
`--budget_s` (default 450 s, so one 8-minute device call keeps a margin for start-up and the
file transfer; a step that would overrun is recorded as skipped with the reason):

  1. `gpu_tests`: pytest on the GPU, HF parity (tests/test_hf_parity.py, skipped by pytest
     itself where torch / transformers are missing), the mesh / sharding tests
     (tests/test_model_partitioning.py) and the attention paths (tests/test_attention_paths.py).
  2. `cudnn_attention`: kernels.dot_product_attention against the einsum formula in bf16 on
     this card (causal, GQA, packed segments, sliding window; values and gradients), with
     the implementation it picked ('cudnn' on an NVIDIA GPU).
  3. `memory_plan`: `experiments/benchmark.py --memory_only` of bench_1b as it stands (remat
     none): XLA:GPU's own plan (arguments, temporaries, `argument_copy_bytes`: whether the
     donated state is updated in place on the card as on CPU), compile only.
  4. bench_1b train-step benchmarks (experiments/benchmark.py with --bench_steps /
     --bench_warmup as its --steps / --warmup), one process each, ours and the TRL anchor
     alternated: ours (shared prompt, in-step reference, remat none, custom attention), trl,
     then the variants: remat nothing, attention_impl=dot_product, precomputed reference,
     plain [2B, T] forward, remat dots / offload; and again ours and trl while the budget
     lasts (the alternation). A variant that runs out of device
     memory is a result too (its error tail is kept).
  5. The TRL anchor (`trl_dpo_bench.py --gradient_checkpointing=off --size=1b`, the shapes of
     bench_1b) from the first bench folder found (--anchor_dir, .bench/, ../shared/bench/,
     shared/bench/) with the first python that imports torch (with CUDA) and trl
     (--anchor_python, .venv-trl/bin/python, this python); skipped with the reason otherwise.

Each benchmark process may take 95% of the GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION;
JAX's default 75% would fail bench_1b without remat on an 80 GB card for JAX's own reason).

The card is named from `nvidia-smi` and `jax.devices()` (asked in a subprocess, so this
process never takes GPU memory that the steps need). Without a GPU the script stops at once
with exit status 2 unless `--dry_run` is given; `--dry_run` runs the same steps at a micro
shape (1 step of `ours` only, the TRL anchor looked up but not run) to check the wiring on a
CPU.

The JSON (`--report`, default docs/benchmarks/device_check_<card>.json) holds the card, the
versions, every step's command, exit status, seconds and parsed result (or output tail), and
a summary: tokens/s and MFU per variant (median over its runs) and ours / TRL.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Micro shapes, 1 step of ours only, no "
                             "TRL run: checks the script on a machine without a GPU.")
_BUDGET = flags.DEFINE_float("budget_s", 450.0, "Wall-clock seconds for all steps together.")
_STEP_TIMEOUT = flags.DEFINE_float("step_timeout_s", 150.0, "Most seconds one step may run.")
_STEPS = flags.DEFINE_integer("bench_steps", 8, "Timed steps per benchmark run.")
_WARMUP = flags.DEFINE_integer("bench_warmup", 2, "Untimed steps per benchmark run.")
_OUT = flags.DEFINE_string("report", "", "JSON path; default docs/benchmarks/device_check_"
                           "<card>.json (dry run: device_check_dry_run_<platform>.json).")
_BENCH_DIR = flags.DEFINE_string("anchor_dir", "", "Folder with trl_dpo_bench.py.")
_TRL_PY = flags.DEFINE_string("anchor_python", "", "Python with torch + trl for the anchor.")
_STEP = flags.DEFINE_string("internal_step", "",
                            "Internal: run one in-process step ('cudnn_attention').")

CONFIG = "configs/dpo.py:bench_1b"
# Shape overrides of the dry run (a micro bench_tiny, as tests/test_benchmark.py uses).
_MICRO = ["--config=configs/dpo.py:bench_tiny", "--config.batch_size=2",
          "--config.data.max_prompt_len=4", "--config.data.max_completion_len=6",
          "--config.data.buckets=(10,)", "--config.model.vocab_size=64",
          "--config.model.hidden_size=32", "--config.model.intermediate_size=48",
          "--config.model.num_layers=1", "--config.model.num_heads=2",
          "--config.model.num_kv_heads=1"]
# name -> extra benchmark flags. 'ours' is the preset as it stands.
VARIANTS = {
    "ours": [],
    "dot_product_attention": ["--config.model.attention_impl=dot_product"],
    "remat_nothing": ["--config.model.remat=nothing"],
    "remat_dots": ["--config.model.remat=dots"],
    "remat_offload": ["--config.model.remat=offload"],
    "precomputed_reference": ["--config.reference.mode=precomputed"],
    "plain_forward": ["--config.model.share_prompt=False"],
}
# Run order: ours and TRL first and last (alternated), the variants between.
# The remat and attention rows first: they are what the accelerator decides.
ORDER = ["ours", "trl", "remat_nothing", "dot_product_attention", "precomputed_reference",
         "plain_forward", "remat_dots", "remat_offload", "ours", "trl"]
DRY_ORDER = ["ours", "trl"]
# JAX preallocates 75% of the GPU by default: bench_1b without remat needs more than that on
# an 80 GB card, so the benchmark processes may take 95% (they run one at a time).
_BENCH_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}


def _tail(text: str, chars: int = 3000) -> str:
  return text[-chars:] if text else ""


def _last_json(stdout: str):
  """The last line of `stdout` that parses as a JSON object, or None."""
  for line in reversed(stdout.splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  return None


def card_info() -> dict:
  """nvidia-smi's name and memory of GPU 0 and jax's devices (asked in a subprocess)."""
  info = {"nvidia_smi": None}
  if shutil.which("nvidia-smi"):
    proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True,
                          timeout=30)
    if proc.returncode == 0 and proc.stdout.strip():
      info["nvidia_smi"] = proc.stdout.strip().splitlines()[0]
  probe = ("import json, jax, jaxlib; d = jax.devices(); print(json.dumps({'platform': "
           "d[0].platform, 'device_kind': d[0].device_kind, 'count': len(d), 'jax': "
           "jax.__version__, 'jaxlib': jaxlib.__version__}))")
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                        timeout=120, cwd=ROOT, env=env)
  info["jax"] = _last_json(proc.stdout) or {"error": _tail(proc.stderr, 1000)}
  return info


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


class Runner:
  """Runs steps as subprocesses inside one wall-clock budget; records each one."""

  def __init__(self, budget_s: float, step_timeout_s: float):
    self.deadline = time.monotonic() + budget_s
    self.step_timeout_s = step_timeout_s
    self.records: list[dict] = []

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def skip(self, name: str, reason: str, command=None) -> dict:
    record = {"name": name, "skipped": reason, "command": command}
    self.records.append(record)
    print(f"[device_check] {name}: skipped ({reason})", flush=True)
    return record

  def run(self, name: str, command: list[str], *, min_s: float = 20.0, env=None) -> dict:
    """Runs `command` from the repo root with timeout min(step timeout, budget left)."""
    timeout = min(self.step_timeout_s, self.left())
    if timeout < min_s:
      return self.skip(name, f"budget: {self.left():.0f} s left, the step needs >= {min_s:.0f}",
                       command)
    start = time.monotonic()
    print(f"[device_check] {name}: {' '.join(command)} (timeout {timeout:.0f} s)", flush=True)
    try:
      proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, **(env or {})))
      rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
      rc = "timeout"
      stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
      stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.monotonic() - start
    record = {"name": name, "command": command, "rc": rc, "seconds": round(seconds, 1),
              "result": _last_json(stdout)}
    if rc != 0:
      record["output_tail"] = _tail(stdout + "\n" + stderr)
    elif record["result"] is None:
      record["output_tail"] = _tail(stdout, 1500)
    self.records.append(record)
    print(f"[device_check] {name}: rc={rc} in {seconds:.0f} s", flush=True)
    return record


def _bench_dir() -> str | None:
  candidates = [_BENCH_DIR.value, os.path.join(ROOT, ".bench"),
                os.path.join(ROOT, "..", "shared", "bench"), os.path.join(ROOT, "shared", "bench")]
  for candidate in candidates:
    if candidate and os.path.isfile(os.path.join(candidate, "trl_dpo_bench.py")):
      return os.path.abspath(candidate)
  return None


def trl_command(dry_run: bool) -> tuple[list[str] | None, str]:
  """(the TRL anchor's command line, '') or (None, why it cannot run here)."""
  bench = _bench_dir()
  if bench is None:
    return None, "no trl_dpo_bench.py in --anchor_dir, .bench/, ../shared/bench/, shared/bench/"
  pythons = [p for p in (_TRL_PY.value, os.path.join(ROOT, ".venv-trl", "bin", "python"),
                         sys.executable) if p and os.path.exists(p)]
  probe = "import torch, trl; print(torch.cuda.is_available())"
  reasons = []
  for python in pythons:
    try:
      proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
      reasons.append(f"{python}: import timed out")
      continue
    if proc.returncode != 0:
      reasons.append(f"{python}: {_tail(proc.stderr, 200).strip().splitlines()[-1:]}")
      continue
    if proc.stdout.strip() != "True" and not dry_run:
      reasons.append(f"{python}: torch sees no CUDA device")
      continue
    shape = (["--size=tiny", "--prompt_len=4", "--completion_len=6", "--max_steps=2",
              "--warmup_steps=1"] if dry_run else
             ["--size=1b", "--prompt_len=256", "--completion_len=768",
              f"--max_steps={_WARMUP.value + _STEPS.value}", f"--warmup_steps={_WARMUP.value}"])
    return [python, os.path.join(bench, "trl_dpo_bench.py"), "--gradient_checkpointing=off",
            "--quiet"] + shape, ""
  return None, "no python with torch and trl: " + "; ".join(reasons or ["none found"])


def cudnn_attention_check(small: bool = False) -> dict:
  """Max abs errors of kernels.dot_product_attention vs the einsum formula, in bf16 here.

  Causal, packed segments (two per row) and a 32-token sliding window inside them, GQA with
  2 kv heads of 4 queries, head_dim 64 (`small`: 16 tokens, head_dim 8, window 4).
  """
  import jax
  import jax.numpy as jnp

  from models import kernels
  from models.llama import make_attention_mask, sliding_window_mask

  b, t, kv, g, h = (2, 16, 2, 2, 8) if small else (2, 128, 2, 4, 64)
  first = t * 5 // 8  # the first segment's length
  window = 4 if small else 32
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (b, t, kv, g, h), jnp.bfloat16)
  k = jax.random.normal(keys[1], (b, t, kv, h), jnp.bfloat16)
  v = jax.random.normal(keys[2], (b, t, kv, h), jnp.bfloat16)
  dout = jax.random.normal(keys[3], (b, t, kv, g, h), jnp.bfloat16)
  segments = jnp.concatenate([jnp.ones((b, first), jnp.int32),
                              2 * jnp.ones((b, t - first), jnp.int32)], 1)  # [B, T]
  positions = jnp.concatenate([jnp.arange(first), jnp.arange(t - first)])[None].repeat(b, 0)
  packed = make_attention_mask(t, None, segments)
  cases = {"causal": make_attention_mask(t), "packed": packed,
           "packed_sliding_window": packed & sliding_window_mask(positions, positions, window)}
  implementation = kernels.dot_product_implementation(q.reshape(b, t, kv * g, h), k)

  def value_and_grads(fn, mask):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
    return (out,) + vjp(dout)

  errors = {}
  for name, mask in cases.items():
    ours = jax.jit(lambda m: value_and_grads(kernels.dot_product_attention, m))(mask)
    ref = jax.jit(lambda m: value_and_grads(kernels.attention_reference, m))(mask)
    errors[name] = {part: float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32))))
                    for part, a, r in zip(("out", "dq", "dk", "dv"), ours, ref)}
  return {"implementation": implementation, "dtype": "bfloat16", "shape_bt_kgh": [b, t, kv, g, h],
          "max_abs_error": errors, "device_kind": jax.devices()[0].device_kind}


def summarize(records: list[dict]) -> dict:
  """Median tokens/s and MFU per variant, and ours / TRL (ratio of medians)."""
  rates: dict[str, list[float]] = {}
  mfu: dict[str, list[float]] = {}
  for record in records:
    result = record.get("result") or {}
    if record.get("rc") == 0 and "tokens_per_s" in result:
      rates.setdefault(record["name"], []).append(result["tokens_per_s"])
      if result.get("mfu") is not None:
        mfu.setdefault(record["name"], []).append(result["mfu"])
  summary = {"tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
             "runs": {k: v for k, v in rates.items()},
             "mfu": {k: statistics.median(v) for k, v in mfu.items()}}
  if "ours" in rates and "trl" in rates:
    summary["ours_over_trl"] = statistics.median(rates["ours"]) / statistics.median(rates["trl"])
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _STEP.value == "cudnn_attention":
    print(json.dumps(cudnn_attention_check(small=_DRY_RUN.value)), flush=True)
    return
  dry = _DRY_RUN.value
  started = datetime.datetime.now(datetime.timezone.utc)
  card = card_info()
  platform = (card["jax"] or {}).get("platform")
  if platform != "gpu" and not dry:
    sys.exit(f"device_check: no GPU here (jax platform {platform!r}, nvidia-smi: "
             f"{card['nvidia_smi']!r}); run it on an H100 / H200, or pass --dry_run to check "
             "the script on this machine.")
  runner = Runner(_BUDGET.value, _STEP_TIMEOUT.value)
  py = sys.executable

  tests = (["tests/test_attention_paths.py::test_implementation_choice_on_cpu"] if dry else
           ["tests/test_hf_parity.py", "tests/test_model_partitioning.py",
            "tests/test_attention_paths.py"])
  runner.run("gpu_tests", [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"] + tests,
             min_s=10 if dry else 60)
  runner.run("cudnn_attention", [py, "-m", "experiments.device_check", "--internal_step=cudnn_attention"]
             + (["--dry_run"] if dry else []), min_s=10 if dry else 30)

  shape = _MICRO if dry else [f"--config={CONFIG}"]
  runner.run("memory_plan", [py, "-m", "experiments.benchmark", *shape, "--memory_only"],
             min_s=10 if dry else 30, env=_BENCH_ENV)
  steps = ["--steps=1", "--warmup=1"] if dry else [f"--steps={_STEPS.value}",
                                                   f"--warmup={_WARMUP.value}"]
  trl, trl_reason = trl_command(dry)
  for name in (DRY_ORDER if dry else ORDER):
    if name == "trl":
      if dry:
        runner.skip("trl", "dry run (anchor found)" if trl else trl_reason, trl)
      elif trl is None:
        runner.skip("trl", trl_reason)
      else:
        runner.run("trl", trl, min_s=90)
      continue
    command = [py, "-m", "experiments.benchmark"] + shape + steps + VARIANTS[name]
    runner.run(name, command, min_s=10 if dry else 60, env=_BENCH_ENV)

  finished = datetime.datetime.now(datetime.timezone.utc)
  kind = card["nvidia_smi"] or (card["jax"] or {}).get("device_kind") or "unknown"
  report = {
      "what": "experiments/device_check.py" + (" --dry_run" if dry else ""),
      "card": kind, "card_info": card,
      "config": "micro bench_tiny (dry run)" if dry else CONFIG,
      "started_utc": started.isoformat(timespec="seconds"),
      "finished_utc": finished.isoformat(timespec="seconds"),
      "budget_s": _BUDGET.value, "python": sys.version.split()[0],
      "steps": runner.records, "summary": summarize(runner.records),
  }
  out = _OUT.value or os.path.join(
      ROOT, "docs", "benchmarks",
      f"device_check_dry_run_{platform}.json" if dry else
      f"device_check_{_slug(kind.split(',')[0])}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps({"out": out, "card": kind, "summary": report["summary"]}), flush=True)


if __name__ == "__main__":
  app.run(main)
