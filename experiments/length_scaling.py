r"""Step time against sequence length, with the work each length costs; one JSON line.

    python -m experiments.length_scaling --config=configs/dpo.py:bench_tiny \
        --lengths=256,512,768,1024 --rounds=3

Every length keeps the preset's prompt : completion ratio (64 : 192 for bench_tiny) and batch,
and all lengths are compiled first and timed in interleaved rounds in one process
(`experiments.ab_variants.time_interleaved`), so they see the same machine.

Why "linear" is the wrong yardstick for step time alone: per token, the decoder's weights
cost a fixed amount of work, but attention costs work proportional to the sequence length S.
The work of one step, counted as the PaLM paper's appendix B does (forward 2 FLOPs per
multiply-add; backward twice the forward; attention scores and values over the full S × S
square, no causal saving), with an in-step reference forward:

    W(S) = T · (8·N + 8·D·V + 16·L·A·S)        T = 2 · batch · S tokens per step

    8·N        policy forward + backward (6·N) and reference forward (2·N), N non-embedding
    8·D·V      the lm_head, D hidden size, V vocabulary (not in N)
    16·L·A·S   attention: Q·Kᵀ and P·V, 4·A·S per token and layer forward, ×3 with the
               backward, +1 for the reference; L layers, A = heads × head_dim

(without an in-step reference: 6·N, 6·D·V, 12·L·A·S). The script prints, per length, the
step time, the tokens/s, W and the time per unit of work, and the ratios to the first length:
step time growing like T means linear scaling, growing like W means the step runs the extra
attention work as efficiently as the rest.
"""

import json
import statistics

from absl import app, flags

from experiments import ab_variants, benchmark

_CONFIG = benchmark._CONFIG
_LENGTHS = flags.DEFINE_list("lengths", ["256", "512", "768", "1024"],
                             "Tokens per sequence (prompt + completion).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (one step per length each).")


def work_per_step(config, seq_len: int) -> float:
  """W(S) of the module doc, in FLOPs."""
  import models
  from training import loop

  m = loop.model_config(config)
  tokens = 2 * config.batch_size * seq_len
  n = models.num_non_embedding_params(m)
  reference = config.reference.mode == "in_step"
  dense, attention = (8, 16) if reference else (6, 12)
  attn_width = m.num_heads * m.head_dim
  return tokens * (dense * (n + m.hidden_size * m.vocab_size)
                   + attention * m.num_layers * attn_width * seq_len)


def at_length(config, seq_len: int):
  """`config` with prompt + completion = seq_len, in the preset's prompt : completion ratio."""
  d = config.data
  prompt = round(seq_len * d.max_prompt_len / (d.max_prompt_len + d.max_completion_len))
  config = config.copy_and_resolve_references()
  config.data.max_prompt_len = prompt
  config.data.max_completion_len = seq_len - prompt
  config.data.buckets = (seq_len,)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  benchmark.set_cpu_xla_flags(benchmark._YNN.value)
  lengths = [int(x) for x in _LENGTHS.value]
  configs = {s: at_length(_CONFIG.value, s) for s in lengths}
  timed = ab_variants.time_interleaved(configs, _ROUNDS.value, 1)
  rows = []
  for s in lengths:
    times = timed[s]["times"]
    median = statistics.median(times)
    work = work_per_step(configs[s], s)
    rows.append({"seq_len": s, "step_time_s": median, "min_step_s": min(times),
                 "step_times_s": [round(t, 4) for t in times],
                 "tokens_per_s": timed[s]["tokens"] / median, "work_flops": work,
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
  import jax
  print(json.dumps({"config": _CONFIG.value.name, "rounds": _ROUNDS.value,
                    "work_formula": "T*(8N + 8DV + 16*L*A*S), in-step reference",
                    "jax_version": jax.__version__, "rows": rows}))


if __name__ == "__main__":
  app.run(main)
