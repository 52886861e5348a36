r"""Step time against sequence length, with the work each length costs; one JSON line.

    python -m experiments.length_scaling --config=configs/dpo.py:bench_tiny \
        --lengths=256,512,768,1024 --rounds=3

Every length keeps the preset's prompt : completion ratio (64 : 192 for bench_tiny) and batch.
Each run is its own `experiments.benchmark` process (as a training run would be: one compiled
step per process), and the lengths alternate over `--rounds` rounds, order reversed every
other round; the median over rounds is reported. (Timing all lengths inside ONE process made
the longest one bimodal, 3.4 or 4.4 s/step at 1024 tokens: the compiled programs of the other
lengths and their buffers share the caches and the allocator.)

Why "linear" is the wrong yardstick for step time alone: per token, the decoder's weights
cost a fixed amount of work, but attention costs work proportional to the sequence length S.
The script prints, per length, the step time, the tokens/s, the work W(S) of one step
(`experiments/benchmark_work.py`: T·(8·N + 8·D·V + 16·L·A·S) with an in-step reference) and
the time per unit of work, and the ratios to the first length: step time growing like T means
linear scaling, growing like W means the step runs the extra attention work as efficiently as
the rest.
"""

import importlib
import json
import shlex
import statistics
import sys

from absl import app, flags

from experiments.benchmark_work import split_length, work_per_step
from experiments.processes import portable, run_json

_CONFIG = flags.DEFINE_string("config", "configs/dpo.py:bench_tiny", "Config file:preset.")
_LENGTHS = flags.DEFINE_list("lengths", ["256", "512", "768", "1024"],
                             "Tokens per sequence (prompt + completion).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternations (each length runs once per round).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per run (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per run.")
_EXTRA = flags.DEFINE_string("bench_flags", "", "More flags for experiments.benchmark.")


def load_config(spec: str):
  """`configs/NAME.py:PRESET` -> that module's get_config(PRESET)."""
  path, _, preset = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  return module.get_config(preset) if preset else module.get_config()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = load_config(_CONFIG.value)
  lengths = [int(x) for x in _LENGTHS.value]
  commands = {}
  for s in lengths:
    prompt, completion = split_length(config, s)
    commands[s] = [sys.executable, "-m", "experiments.benchmark", f"--config={_CONFIG.value}",
                   f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
                   f"--config.data.max_prompt_len={prompt}",
                   f"--config.data.max_completion_len={completion}",
                   f"--config.data.buckets=({s},)"] + shlex.split(_EXTRA.value)
  times = {s: [] for s in lengths}
  for r in range(_ROUNDS.value):
    for s in (lengths if r % 2 == 0 else lengths[::-1]):
      times[s].append(run_json(commands[s])["step_time_s"])
  rows = []
  for s in lengths:
    median = statistics.median(times[s])
    work = work_per_step(config, s)
    rows.append({"seq_len": s, "step_time_s": median, "step_times_s": times[s],
                 "tokens_per_s": 2 * config.batch_size * s / median, "work_flops": work,
                 "s_per_tflop": median / work * 1e12})
  first = rows[0]
  for row in rows:
    row["time_ratio"] = row["step_time_s"] / first["step_time_s"]
    row["token_ratio"] = row["seq_len"] / first["seq_len"]
    row["work_ratio"] = row["work_flops"] / first["work_flops"]
    print(f"S={row['seq_len']:>5}: {row['step_time_s']:.3f} s/step "
          f"({row['tokens_per_s']:5.0f} tokens/s)  time x{row['time_ratio']:.2f}  "
          f"tokens x{row['token_ratio']:.2f}  work x{row['work_ratio']:.2f}  "
          f"{row['s_per_tflop']:.2f} s/TFLOP")
  print(json.dumps({"config": _CONFIG.value, "rounds": _ROUNDS.value, "steps": _STEPS.value,
                    "work_formula": "T*(8N + 8DV + 16*L*A*S), in-step reference",
                    "commands": {s: portable(c) for s, c in commands.items()}, "rows": rows}))


if __name__ == "__main__":
  app.run(main)
