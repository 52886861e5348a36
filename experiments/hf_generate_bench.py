r"""The Hugging Face anchor of `benchmark --mode=sample`: `transformers` `generate`, one JSON line.

    python -m experiments.hf_generate_bench --config=configs/dpo.py:bench_tiny --sampling=greedy

The model is ours, the one `benchmark --mode=sample` builds from the same config and seed
(`experiments.benchmark.sample_model`), written with `models.to_hf` into a temporary folder
and loaded by `transformers.AutoModelForCausalLM.from_pretrained(dir, dtype=float32)` (`dtype`,
transformers 5's name for `torch_dtype`):
the same random weights. The prompts are the same (`benchmark.synthetic_prompts`), passed
left-padded with their attention mask (none is padding at full length). Each call is

    model.generate(input_ids, attention_mask=mask, max_new_tokens=M, min_new_tokens=M,
                   do_sample=..., top_p=0.9, temperature=1.0, top_k=0, use_cache=True)

under `torch.inference_mode()`: `min_new_tokens=M` masks eos until the end, so every row
generates exactly M tokens, as ours does with an unreachable eos (equal work). top_k=0 turns
off generate's default top-k of 50, which our sampler does not apply. Timing and keys are
those of `benchmark.run_sample`: median over `--steps` calls after `--warmup`; prefill_s is a
generate call with max_new_tokens=1; compile_s is the first call minus the median (no
compilation in eager PyTorch: it is warm-up cost). torch's own thread count (all cores).
"""

import json
import statistics
import tempfile

from absl import app, flags

from experiments import benchmark

# Importing experiments.benchmark defines its flags (--config, --steps, --warmup,
# --sample_batch, --prompt_len, --new_tokens, --sampling): this script reads the same ones,
# with the same defaults, so one command line describes both sides.
FLAGS = flags.FLAGS


def load_hf_model(config, folder: str):
  """Our random-weight model of `config`, exported with models.to_hf and loaded by HF."""
  import torch
  import transformers

  import models

  models.to_hf(benchmark.sample_model(config), folder)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  return model.eval()


def generate_fn(model, ids, mask, new_tokens: int, sampling: str, seed: int):
  """A no-argument function running one `generate` call that makes exactly new_tokens."""
  import torch

  temperature, top_p = benchmark.SAMPLING[sampling]
  options = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) \
      if sampling == "top_p" else dict(do_sample=False)
  input_ids, attention_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

  def call():
    torch.manual_seed(seed)
    with torch.inference_mode():
      return model.generate(input_ids, attention_mask=attention_mask,
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            use_cache=True, pad_token_id=0, **options)

  return call


def run(config, *, batch: int, prompt_len: int, new_tokens: int, sampling: str, steps: int,
        warmup: int) -> dict:
  """Times `generate` like `benchmark.run_sample` times our sampler; the same keys."""
  import torch
  import transformers

  warmup = max(warmup, 1)
  with tempfile.TemporaryDirectory() as folder:
    model = load_hf_model(config, folder)
  ids, mask = benchmark.synthetic_prompts(batch, prompt_len, model.config.vocab_size,
                                          config.seed)
  full = generate_fn(model, ids, mask, new_tokens, sampling, config.seed)
  # time_calls blocks with jax.block_until_ready, a no-op on torch tensors (eager, sync).
  first_s, totals = benchmark.time_calls(full, steps, warmup)
  _, prefills = benchmark.time_calls(
      generate_fn(model, ids, mask, 1, sampling, config.seed), steps, warmup)
  out = full()[:, prompt_len:]
  assert out.shape == (batch, new_tokens), out.shape  # equal work: no early stop
  total_s = statistics.median(totals)
  return benchmark.sample_result(
      config=config.name, impl="transformers", sampling=sampling, batch=batch,
      prompt_len=prompt_len, new_tokens=new_tokens, total_s=total_s,
      prefill_s=statistics.median(prefills), compile_s=first_s - total_s,
      first_call_s=first_s, total_times_s=totals, device_kind="cpu", platform="cpu",
      versions={"transformers": transformers.__version__, "torch": torch.__version__},
      torch_threads=torch.get_num_threads(), steps=steps, warmup=warmup,
      first_tokens=out[0, :8].tolist())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(json.dumps(run(FLAGS.config, batch=FLAGS.sample_batch, prompt_len=FLAGS.prompt_len,
                       new_tokens=FLAGS.new_tokens, sampling=FLAGS.sampling,
                       steps=FLAGS.steps, warmup=FLAGS.warmup)), flush=True)


if __name__ == "__main__":
  app.run(main)
