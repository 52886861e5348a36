r"""Evaluates any policy checkpoint against π_0 of an online run, as every round is evaluated.

    python -m experiments.evaluate --config=configs/dno.py:tiny --workdir=/tmp/dno \
        --checkpoint=/tmp/dno/round_2

On the run's held-out prompts (`config.online.eval_prompts`, one response each at
`config.online.eval_temperature`), the checkpoint's responses are judged against π_0's
(WORKDIR/round_0/eval_samples.json, made once) by the config's oracle. Prints one JSON line
with `eval/win_rate`, `eval/lc_win_rate`, `eval/length` and, where a verifier exists,
`eval/accuracy` (training.rounds.evaluate_policy); `--output` also writes it to a file.

`--checkpoint` is a run's or a round's directory (the newest step of its checkpoints/) or an
orbax params directory such as WORKDIR/round_0/policy. Another oracle than the run's:
`--config.online.scorer=judge --config.online.judge=pkg.module:fn`.
"""

import json

from absl import app, flags

from experiments import train as cli  # the shared flags and one-line errors

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON line to this file.")
flags.mark_flag_as_required("checkpoint")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.apply_cpu_settings()
  cli.quiet_libraries()
  config = cli.checked_config()
  from training import rounds  # after the checks: a refusal comes before heavy imports
  try:
    result = rounds.evaluate_checkpoint(config, cli.workdir(), _CHECKPOINT.value)
  except cli.refusals() as e:
    cli.fail(e)
  line = json.dumps({"checkpoint": _CHECKPOINT.value, **result})
  print(line)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
