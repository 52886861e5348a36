r"""A/B of config variants inside ONE process, timed in interleaved rounds.

    python -m experiments.ab_variants --config=configs/dpo.py:bench_tiny --rounds=6 \
        --variant=autodiff:model.mlp_impl=autodiff,model.attention_impl=autodiff \
        --variant=custom:

On a shared, noisy machine two processes of the same thing differ by ±10%, so comparing
model variants across processes needs many runs. Here every variant is compiled first, then
each round times `--steps_per_round` steps of every variant, in an order reversed every
round, so all of them see the same machine. XLA flags are process-wide: compare those with
experiments/compare_peers.py (separate processes) instead.

Prints one line per variant (median and fastest step time over all rounds, tokens/s, speed
relative to the first variant) and a JSON line.
"""

import ast
import json
import statistics
import time

from absl import app, flags
from experiments import benchmark
from experiments.common import set_cpu_xla_flags

# --config and --cpu_ynn_fusion_type are experiments/benchmark.py's flags.
_CONFIG = benchmark._CONFIG
_YNN = benchmark._YNN
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "NAME:key=value,key=value (config overrides; 'NAME:' = the config as is; "
    "tuples with ';', e.g. data.buckets=(512;)).")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Interleaved rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 2, "Timed steps per variant per round.")


def apply_overrides(config, spec: str):
  """`key=value,...` onto a copy of `config`; values take the type of the current field."""
  config = config.copy_and_resolve_references()
  for item in filter(None, spec.split(",")):
    key, _, text = item.partition("=")
    *parents, leaf = key.strip().split(".")
    target = config
    for p in parents:
      target = target[p]
    current = target[leaf]
    if isinstance(current, (tuple, list)):
      value = type(current)(ast.literal_eval(text.replace(";", ",")))
    elif isinstance(current, bool):
      value = text.strip().lower() in ("1", "true", "yes")
    elif current is None:
      value = text
    else:
      value = type(current)(text)
    target[leaf] = value
  return config


def time_interleaved(configs: dict, rounds: int, steps_per_round: int) -> dict:
  """Compiles every config's benchmark step, then times them in interleaved rounds.

  `configs` maps a name to a config. Returns, per name, a dict with the step `times` (s),
  `tokens` per step and `compile_s`. Every step is timed to `jax.block_until_ready`.
  """
  import jax

  variants = {}
  for name, config in configs.items():
    step_fn, compile_s, state, ref_params, batch, _, _ = benchmark.build_step(config)
    state, _ = jax.block_until_ready(step_fn(state, ref_params, batch))  # warm-up
    d = config.data
    tokens = 2 * config.batch_size * (d.max_prompt_len + d.max_completion_len)
    variants[name] = dict(step=step_fn, state=state, ref=ref_params, batch=batch, times=[],
                          compile_s=compile_s, tokens=tokens)

  names = list(variants)
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      v = variants[name]
      for _ in range(steps_per_round):
        start = time.perf_counter()
        v["state"], metrics = v["step"](v["state"], v["ref"], v["batch"])
        jax.block_until_ready((v["state"], metrics))
        v["times"].append(time.perf_counter() - start)
  return {n: dict(times=v["times"], tokens=v["tokens"], compile_s=v["compile_s"])
          for n, v in variants.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  set_cpu_xla_flags(_YNN.value)
  configs = {}
  for spec in _VARIANTS.value or ["base:"]:
    name, _, overrides = spec.partition(":")
    configs[name] = apply_overrides(_CONFIG.value, overrides)
  variants = time_interleaved(configs, _ROUNDS.value, _STEPS.value)
  names = list(variants)

  config = _CONFIG.value
  medians = {n: statistics.median(v["times"]) for n, v in variants.items()}
  # Other jobs on a shared machine only ever add time, so the fastest steps are the best
  # estimate of each variant's own cost; the median is printed next to it.
  fastest = {n: min(v["times"]) for n, v in variants.items()}
  # Paired estimate: the speed-up against the first variant within each round (neighbours in
  # time see nearly the same machine), then the median over rounds.
  paired = {n: statistics.median(b / t for b, t in zip(variants[names[0]]["times"],
                                                        variants[n]["times"]))
            for n in names}
  for n in names:
    tokens = variants[n]["tokens"]
    print(f"{n:>16}: median {medians[n]:.3f} s/step ({tokens / medians[n]:5.0f} tokens/s)  "
          f"min {fastest[n]:.3f}  paired speed-up vs {names[0]} x{paired[n]:.3f}  "
          f"compile {variants[n]['compile_s']:.1f} s")
  print(json.dumps({"config": config.name, "median_step_s": medians, "min_step_s": fastest,
                    "paired_speedup": paired,
                    "tokens_per_s": {n: variants[n]["tokens"] / m for n, m in medians.items()},
                    "step_times_s": {n: [round(t, 4) for t in v["times"]]
                                     for n, v in variants.items()},
                    "variants": _VARIANTS.value}))


if __name__ == "__main__":
  app.run(main)
