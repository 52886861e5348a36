r"""Runs an online algorithm round after round: sample, score, train, move the anchors.

    python -m experiments.iterate --config=configs/dno.py:tiny --workdir=/tmp/dno

For the online losses (online_dpo, dno, inpo, gpo, prime); `training.rounds` says what a
round does and what WORKDIR/round_<t>/ keeps. Prints one line per round: win rate and
length-controlled win rate against π_0, mean length and, with a verifier, accuracy; the same
rows are in WORKDIR/metrics.jsonl and plotted in WORKDIR/rounds.png. Re-running with the same
workdir resumes where the run stopped (mid-sampling, mid-scoring or mid-training).

Bad flags, config values and data are refused with one line on stderr (`error: ...`, exit 2)
as by experiments/train.py.
"""

import json

from absl import app, logging

from experiments import train as cli  # the shared flags and one-line errors


def format_round(row: dict) -> str:
  """'round 2: win_rate=0.6250 lc_win_rate=0.6101 length=11.03 accuracy=0.5469'."""
  keys = ("win_rate", "lc_win_rate", "length", "accuracy")
  return f"round {row['round']}: " + " ".join(
      f"{k}={row[f'eval/{k}']:.4f}" for k in keys if f"eval/{k}" in row)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.apply_cpu_settings()
  cli.quiet_libraries()
  cli.maybe_initialize_distributed()
  config = cli.checked_config()
  try:
    with cli.claimed_workdir():
      from training import rounds  # after the checks: a refusal comes before heavy imports
      print(cli.run_summary(config, cli.workdir()), flush=True)
      summary = rounds.iterate(config, cli.workdir())
  except cli.refusals() as e:
    cli.fail(e)
  for row in summary.get("rounds", []):
    print(format_round(row))
  logging.info("summary: %s", json.dumps({k: v for k, v in summary.items()
                                          if k not in ("params", "prm")}, default=str))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
