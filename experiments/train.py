r"""Trains a policy with any registered preference loss.

    python -m experiments.train --config=configs/dpo.py:tiny --workdir=/tmp/dpo_tiny

Any config field can be overridden, e.g. `--config.loss.beta=0.2 --config.mesh.fsdp=2`.
Re-running with the same workdir resumes from its newest checkpoint.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from training import config_check, loop  # after flag parsing: keeps --help fast

  try:  # bad values are refused here, before any data is read or any compute starts
    config_check.validate(_CONFIG.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  summary = loop.train(_CONFIG.value, _WORKDIR.value)
  first = summary.get("first_eval", {})
  final = summary.get("final_eval", {})
  for label, metrics in (("step 0", first), (f"step {summary['final_step']}", final)):
    if metrics:
      print(f"eval at {label}: loss={metrics['eval/loss']:.4f} "
            f"rewards/accuracies={metrics['eval/rewards/accuracies']:.3f} "
            f"rewards/margins={metrics['eval/rewards/margins']:.4f}")
  logging.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "state"},
                                         default=str))


if __name__ == "__main__":
  app.run(main)
