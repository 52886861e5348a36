r"""Our benchmark against the peer trainers, alternating processes; prints tokens/s ratios.

    python -m experiments.compare_peers --rounds=3
    python -m experiments.compare_peers --rounds=4 --peers=none \
        --variant=autodiff="--config.model.mlp_impl=autodiff --config.model.attention_impl=autodiff"

Each round runs every contestant once, as its own process, in an order that is reversed every
other round (so neither side always runs first on a machine whose speed drifts). Contestants:

  ours       python -m experiments.benchmark --config=configs/dpo.py:bench_tiny (+ flags)
  <name>     each --variant=NAME="FLAGS": our benchmark with extra flags (A/B of our options)
  trl        the TRL DPOTrainer anchor (bench/trl_dpo_bench.py, --gradient_checkpointing off)
             with the python of --trl_python (default .venv-trl/bin/python), if it exists
  tunix      the Tunix DPOTrainer anchor (bench/tunix_dpo_bench.py) with --tunix_python
             (default .venv-tunix/bin/python), if it exists

Every script prints one JSON line with `tokens_per_s`; the summary gives each contestant's
median over the rounds, the ratio of medians `ours / peer` (and `variant / ours`) and the
median of the per-round ratios (steadier when the machine's load drifts). Not part
of the test suite: one round at the tiny shape takes about a minute on 2 CPU cores.
"""

import json
import os
import shlex
import statistics
import sys

from absl import app, flags

from experiments.processes import portable, run_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternations (each contestant runs once per round).")
_CONFIG = flags.DEFINE_string("config", "configs/dpo.py:bench_tiny", "Our config[:preset].")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per run (all contestants).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per run (all contestants).")
_SIZE = flags.DEFINE_string("size", "tiny", "Anchor --size matching --config.")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "Anchor prompt length (match the config).")
_COMPLETION = flags.DEFINE_integer("completion_len", 192, "Anchor completion length.")
_OURS_FLAGS = flags.DEFINE_string("ours_flags", "", "Extra flags for our benchmark.")
_VARIANTS = flags.DEFINE_multi_string("variant", [], "NAME=FLAGS: more runs of our benchmark.")
_PEERS = flags.DEFINE_string("peers", "trl,tunix", "Comma list of peers to run, or 'none'.")
_BENCH_DIR = flags.DEFINE_string(
    "bench_dir", None, "Folder with trl_dpo_bench.py / tunix_dpo_bench.py; default: the first "
    "of .bench/, ../shared/bench/ that exists.")
_TRL_PY = flags.DEFINE_string("trl_python", os.path.join(ROOT, ".venv-trl/bin/python"),
                              "Python of the TRL venv.")
_TUNIX_PY = flags.DEFINE_string("tunix_python", os.path.join(ROOT, ".venv-tunix/bin/python"),
                                "Python of the Tunix venv.")


def _bench_dir():
  if _BENCH_DIR.value:
    return _BENCH_DIR.value
  for candidate in (os.path.join(ROOT, ".bench"), os.path.join(ROOT, "..", "shared", "bench")):
    if os.path.exists(os.path.join(candidate, "trl_dpo_bench.py")):
      return candidate
  return None


def contestants() -> dict[str, list[str]]:
  """name -> command line, ours first."""
  ours = [sys.executable, "-m", "experiments.benchmark", f"--config={_CONFIG.value}",
          f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}"]
  ours += shlex.split(_OURS_FLAGS.value)
  runs = {"ours": ours}
  for spec in _VARIANTS.value:
    name, _, extra = spec.partition("=")
    runs[name] = ours + shlex.split(extra)
  peers = [] if _PEERS.value == "none" else _PEERS.value.split(",")
  bench = _bench_dir()
  shape = [f"--size={_SIZE.value}", f"--prompt_len={_PROMPT.value}",
           f"--completion_len={_COMPLETION.value}", f"--max_steps={_WARMUP.value + _STEPS.value}",
           f"--warmup_steps={_WARMUP.value}", "--quiet"]
  if "trl" in peers and bench and os.path.exists(_TRL_PY.value):
    runs["trl"] = [_TRL_PY.value, os.path.join(bench, "trl_dpo_bench.py"),
                   "--gradient_checkpointing=off"] + shape
  if "tunix" in peers and bench and os.path.exists(_TUNIX_PY.value):
    runs["tunix"] = [_TUNIX_PY.value, os.path.join(bench, "tunix_dpo_bench.py")] + shape
  return runs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runs = contestants()
  names = list(runs)
  rates = {name: [] for name in names}
  for round_index in range(_ROUNDS.value):
    order = names if round_index % 2 == 0 else names[::-1]
    for name in order:
      result = run_json(runs[name])
      rates[name].append(result["tokens_per_s"])
      print(f"round {round_index + 1} {name:>10}: {result['tokens_per_s']:8.1f} tokens/s",
            flush=True)
  medians = {name: statistics.median(r) for name, r in rates.items()}
  ratios = {}
  for name in names[1:]:
    key = f"ours/{name}" if name in ("trl", "tunix") else f"{name}/ours"
    ratios[key] = (medians["ours"] / medians[name] if name in ("trl", "tunix")
                   else medians[name] / medians["ours"])
  # Paired: the ratio inside each round (neighbouring runs see nearly the same machine load),
  # then the median over rounds; steadier than the ratio of medians on a shared machine.
  paired = {}
  for name in names[1:]:
    per_round = [o / p if name in ("trl", "tunix") else p / o
                 for o, p in zip(rates["ours"], rates[name])]
    key = f"ours/{name}" if name in ("trl", "tunix") else f"{name}/ours"
    paired[key] = statistics.median(per_round)
  for name in names:
    print(f"{name:>10}: median {medians[name]:8.1f} tokens/s over {len(rates[name])} runs "
          f"({', '.join(f'{r:.0f}' for r in rates[name])})")
  for key, ratio in ratios.items():
    print(f"{key:>16}: {ratio:.3f} (ratio of medians), {paired[key]:.3f} (median of per-round "
          "ratios)")
  print(json.dumps({"tokens_per_s": rates, "median_tokens_per_s": medians, "ratios": ratios,
                    "paired_ratios": paired,
                    "commands": {n: portable(c) for n, c in runs.items()}}))


if __name__ == "__main__":
  app.run(main)
