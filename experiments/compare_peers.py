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

`--mode=sample` compares the KV-cache sampler instead, on generated tokens/s:

    python -m experiments.compare_peers --mode=sample --rounds=3

  ours   python -m experiments.benchmark --mode=sample --sampling=S (+ --ours_flags)
  hf     python -m experiments.hf_generate_bench --sampling=S, transformers `generate` on the
         same random weights (exported with models.to_hf), prompts and lengths, with the
         python of --hf_python (default: this one)

for S in greedy and top_p; each round runs the four processes, the order reversed every
other round. Both print `tokens_per_s` (batch * new tokens / one call's seconds) and the
prefill / decode split; the summary gives the medians and `ours/hf` per S (ratio of medians
and median of the per-round ratios).
"""

import json
import os
import shlex
import statistics
import sys

from absl import app, flags

from experiments.processes import portable, run_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"],
                          "Compare the train step (TRL, Tunix) or the sampler (HF generate).")
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
_HF_PY = flags.DEFINE_string("hf_python", sys.executable,
                             "--mode=sample: python with transformers and torch.")
_SAMPLE_FLAGS = flags.DEFINE_string(
    "sample_flags", "", "--mode=sample: flags for both sides, e.g. '--sample_batch=16 "
    "--prompt_len=64 --new_tokens=128 --steps=5 --warmup=1'.")
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


SAMPLINGS = ("greedy", "top_p")


def sample_contestants() -> dict[str, list[str]]:
  """'{ours,hf}_{greedy,top_p}' -> command line (--mode=sample)."""
  shared = [f"--config={_CONFIG.value}"] + shlex.split(_SAMPLE_FLAGS.value)
  runs = {}
  for sampling in SAMPLINGS:
    runs[f"ours_{sampling}"] = ([sys.executable, "-m", "experiments.benchmark", "--mode=sample",
                                 f"--sampling={sampling}"] + shared
                                + shlex.split(_OURS_FLAGS.value))
    runs[f"hf_{sampling}"] = [_HF_PY.value, "-m", "experiments.hf_generate_bench",
                              f"--sampling={sampling}"] + shared
  return runs


def sample_summary(results: dict[str, list[dict]]) -> dict:
  """Per sampling mode: medians of ours and hf (tokens/s, prefill and decode seconds), the
  ratio of medians ours/hf and the median of the per-round ratios."""
  summary = {}
  for sampling in SAMPLINGS:
    ours, hf = results[f"ours_{sampling}"], results[f"hf_{sampling}"]
    med = lambda runs, key: statistics.median(r[key] for r in runs)
    summary[sampling] = {
        "ours_tokens_per_s": [r["tokens_per_s"] for r in ours],
        "hf_tokens_per_s": [r["tokens_per_s"] for r in hf],
        "ours_median_tokens_per_s": med(ours, "tokens_per_s"),
        "hf_median_tokens_per_s": med(hf, "tokens_per_s"),
        "ratio_of_medians": med(ours, "tokens_per_s") / med(hf, "tokens_per_s"),
        "paired_ratio": statistics.median(o["tokens_per_s"] / h["tokens_per_s"]
                                          for o, h in zip(ours, hf)),
        **{f"{side}_median_{key}": med(runs, key)
           for side, runs in (("ours", ours), ("hf", hf))
           for key in ("total_s", "prefill_s", "decode_s", "compile_s")},
    }
  return summary


def alternate(runs: dict, describe) -> dict:
  """{name: [result of each round]}: every contestant once a round, as its own process, in
  an order reversed every other round; `describe(result)` is printed after each run."""
  names = list(runs)
  results = {name: [] for name in names}
  for round_index in range(_ROUNDS.value):
    for name in (names if round_index % 2 == 0 else names[::-1]):
      result = run_json(runs[name])
      results[name].append(result)
      print(f"round {round_index + 1} {name:>12}: {describe(result)}", flush=True)
  return results


def main_sample():
  runs = sample_contestants()
  results = alternate(runs, lambda r: f"{r['tokens_per_s']:8.1f} tokens/s (prefill "
                      f"{r['prefill_s']:.3f} s, decode {r['decode_s']:.3f} s)")
  names = list(runs)
  summary = sample_summary(results)
  for sampling, s in summary.items():
    print(f"{sampling:>7}: ours {s['ours_median_tokens_per_s']:8.1f}, hf "
          f"{s['hf_median_tokens_per_s']:8.1f} tokens/s; ours/hf {s['ratio_of_medians']:.3f} "
          f"(ratio of medians), {s['paired_ratio']:.3f} (median of per-round ratios)")
  first = results[names[0]][0]
  print(json.dumps({
      "mode": "sample", "rounds": _ROUNDS.value, "summary": summary,
      "shape": {k: first[k] for k in ("batch", "prompt_len", "new_tokens")},
      "cpu": first["cpu"],
      "versions": {k: v for runs_ in results.values() for k, v in runs_[0]["versions"].items()},
      "runs": {name: [{k: r[k] for k in ("tokens_per_s", "total_s", "prefill_s", "decode_s",
                                          "compile_s", "total_times_s")} for r in rs]
               for name, rs in results.items()},
      "commands": {n: portable(c) for n, c in runs.items()}}))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _MODE.value == "sample":
    main_sample()
    return
  runs = contestants()
  names = list(runs)
  rates = {name: [r["tokens_per_s"] for r in results] for name, results in
           alternate(runs, lambda r: f"{r['tokens_per_s']:8.1f} tokens/s").items()}
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
