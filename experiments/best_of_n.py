r"""Best-of-N accuracy of a trained implicit PRM (training/best_of_n.py; Yuan et al. 2024,
Table 1): N responses per held-out prompt from a generator, the PRM's pick checked by the
verifier, beside a random pick and pass@N.

    python -m experiments.best_of_n --config=configs/implicit_prm.py:tiny --workdir=/tmp/prm \
        --n=8 --prompts=128 --generator_sft_steps=250
    # the paper's evaluation: MATH500 as prompt / answer records, candidates from π_ref
    python -m experiments.best_of_n --config=configs/reproduce/implicit_prm.py:paper \
        --workdir=/tmp/prm_paper --config.model.init_from=/path/to/Llama-3.1-8B-Instruct \
        --config.data.tokenizer=/path/to/Llama-3.1-8B-Instruct \
        --config.data.path=/path/to/ultrainteract_math_rollout.jsonl \
        --n=64 --prompts=500 --data=/path/to/math500 --split=test

`--config` / `--workdir` are the PRM run's (its newest checkpoint is scored). Prints one JSON
line (`bon/accuracy`, `bon/random_accuracy`, `bon/oracle_accuracy`, ...) and writes it to
WORKDIR/best_of_n.json (or `--output`).
"""

import json

from absl import app, flags

from experiments import train as cli  # the shared flags and one-line errors

_N = flags.DEFINE_integer("n", 8, "Responses per prompt.")
_PROMPTS = flags.DEFINE_integer("prompts", 64, "Held-out prompts.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None,
                                       "Response length (default config.online.max_new_tokens).")
_GENERATOR = flags.DEFINE_string("generator", "", "A policy run or round directory that samples "
                                 "the candidates (default: π_ref, the PRM's initial model).")
_SFT_STEPS = flags.DEFINE_integer("generator_sft_steps", 0, "SFT steps on π_ref before it "
                                  "samples (a random-init π_ref answers nothing right).")
_DATA = flags.DEFINE_string("data", "", "Prompts with reference answers (e.g. MATH500 as "
                            "prompt / answer records); default: the run's eval split.")
_SPLIT = flags.DEFINE_string("split", "test", "The split of --data.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the prompt choice and the sampling.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON (default "
                              "WORKDIR/best_of_n.json).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.apply_cpu_settings()
  cli.quiet_libraries()
  config = cli.checked_config()
  from training import best_of_n  # after the checks: a refusal comes before heavy imports
  try:  # bad flag values, before any compute
    spec = best_of_n.BestOfN(
        n=_N.value, prompts=_PROMPTS.value, temperature=_TEMPERATURE.value,
        max_new_tokens=_MAX_NEW_TOKENS.value, generator=_GENERATOR.value,
        generator_sft_steps=_SFT_STEPS.value, data=_DATA.value, split=_SPLIT.value,
        seed=_SEED.value)
  except ValueError as e:
    cli.fail(e)
  try:
    result = best_of_n.evaluate(config, cli.workdir(), spec, out=_OUTPUT.value)
  except cli.refusals() as e:
    cli.fail(e)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
