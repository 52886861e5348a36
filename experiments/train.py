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
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host runs). On TPU "
    "pods and SLURM/Open MPI clusters it finds its peers itself; elsewhere pass the flags "
    "below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
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
