r"""Trains a policy with any registered preference loss.

    python -m experiments.train --config=configs/dpo.py:tiny --workdir=/tmp/dpo_tiny

Any config field can be overridden, e.g. `--config.loss.beta=0.2 --config.mesh.fsdp=2`.
Re-running with the same workdir resumes from its newest checkpoint.

A bad command line or input is refused with one line on stderr, `error: ...`, and exit code 2
(no traceback): an override naming no config field (`--config.loss.bogus=1`) or of the wrong
type (`--config.batch_size=abc`), a value `training.config_check` rejects, a
`data.DataError` (naming file, record and field) or `ConfigError` raised while the run is
built, a workdir held by another run or holding a run with another config, a checkpoint that
cannot be resumed, and a write that fails (no space left on device): `refusals()`. A
`config.nonfinite="halt"` stop prints its report the same way, with exit code 1.
"""

import difflib
import json
import re

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags
from ml_collections.config_flags import config_path

# noqa: F401 below: shared by the CLIs that import this module as `cli`
from experiments.common import fail, quiet_libraries, refusals, run_summary  # noqa: F401
from experiments.common import reuse_host_buffers, set_cpu_xla_flags

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
_YNN = flags.DEFINE_string(
    "cpu_ynn_fusion_type", "default",
    "XLA:CPU only: value of --xla_cpu_experimental_ynn_fusion_type. 'default' (the default) "
    "adds no flag; '' turns YNNPACK's dot and reduction fusions off, as "
    "experiments.benchmark does (faster steps at bench_tiny's shapes, the same at the tiny "
    "preset's: docs/performance.md). Experimental in XLA, so not set unless asked: an XLA that "
    "no longer knows the flag refuses to start. Ignored when XLA_FLAGS sets it.")
_REUSE_HOST_BUFFERS = flags.DEFINE_bool(
    "cpu_reuse_host_buffers", False,
    "glibc only: serve every thread's malloc from one heap that is never handed back to the "
    "OS (experiments.common.reuse_host_buffers), so that XLA:CPU's per-step temporaries are "
    "not mapped and faulted in afresh every step. Host memory only; the process keeps its "
    "peak heap.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDE = re.compile(r"--?(?:no)?config\.([^=]+)")  # ml_collections' override syntax


def field_problem(config: ConfigDict, path: str) -> str | None:
  """Why the override `--config.<path>` names no field of `config`; None when it does."""
  node, name = config, "config"
  for key in config_path.split(path):  # "data.buckets[0]" -> ("data", "buckets", 0)
    if not isinstance(key, str):  # an index into a tuple or list field
      if not isinstance(node, (tuple, list)) or not -len(node) <= key < len(node):
        return f"{name} is {node!r}, which has no item [{key!r}]"
      node, name = node[key], f"{name}[{key!r}]"
    elif not isinstance(node, ConfigDict):
      return f"{name} is {node!r}, not a section with fields"
    elif key not in node:
      fields = list(node.keys())
      close = difflib.get_close_matches(key, fields, n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      return f"no such config field{hint}; fields of {name}: {', '.join(fields)}"
    else:
      node, name = node[key], f"{name}.{key}"
  return None


def _unknown_override(argv) -> str | None:
  """The first `--config.*` override in argv that names no field, as an error line.

  ml_collections raises a bare AttributeError/KeyError/IndexError holding only the last
  key, so the config file is loaded again here, without the overrides, and each override
  looked up in it.
  """
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:  # `--config FILE` in two words
    spec = next((b for a, b in zip(argv, argv[1:]) if a == "--config"), None)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv[:1])  # an argv without the overrides
  try:
    values([argv[0], f"--config={spec}"])
  except flags.Error:
    return None
  if not isinstance(values.config, ConfigDict):  # the file did not load
    return None
  for arg in argv[1:]:
    match = _OVERRIDE.match(arg)
    problem = match and field_problem(values.config, match.group(1))
    if problem:
      return f"--config.{match.group(1)}: {problem}"
  return None


def parse_flags(argv):
  """absl's flag parsing, with one-line errors for a bad `--config` or `--config.*` flag."""
  try:
    argv = flags.FLAGS(argv)
    _CONFIG.value.get  # ml_collections defers a config file's load error to its first use
    return argv
  except flags.Error as e:  # wrong types (absl's message names the flag), missing flags
    fail(e)
  except OSError as e:  # the config file does not load
    fail(f"--config: {e}")
  except (AttributeError, KeyError, IndexError) as e:  # ml_collections: no such field
    fail(_unknown_override(argv) or f"a --config.* override cannot be applied: {e!r}")


def workdir() -> str:
  return _WORKDIR.value


def claimed_workdir():
  """The workdir's lock (`training.workdir.claim`), for a `with` around the run: taken right
  after the config check, so a second run on the workdir is refused before the heavy imports.
  Only process 0 of a multi-process run takes it."""
  from training import workdir as workdir_lib

  writer = True
  if _DISTRIBUTED.value:
    import jax
    writer = jax.process_index() == 0
  return workdir_lib.claim(_WORKDIR.value, writer=writer)


def maybe_initialize_distributed():
  """`jax.distributed.initialize()` with the flags' coordinator, when --distributed."""
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def checked_config() -> ConfigDict:
  """The --config, refused in one line (exit 2) when `training.config_check` rejects it:
  bad values never reach data loading or compute."""
  from training import config_check

  try:
    config_check.validate(_CONFIG.value)
  except ValueError as e:  # ConfigError, or the algorithm's own ValueError
    fail(e)
  return _CONFIG.value


def apply_cpu_settings():
  """--cpu_ynn_fusion_type and --cpu_reuse_host_buffers; first thing in a CLI's main, before
  JAX creates its backend and thread pools (both are read then)."""
  if _REUSE_HOST_BUFFERS.value:
    reuse_host_buffers()
  set_cpu_xla_flags(_YNN.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  apply_cpu_settings()
  quiet_libraries()
  maybe_initialize_distributed()
  config = checked_config()
  try:
    with claimed_workdir():
      from training import loop  # after the checks: a refusal comes before heavy imports
      print(run_summary(config, _WORKDIR.value), flush=True)
      summary = loop.train(config, _WORKDIR.value)
  except refusals() as e:
    fail(e)
  except loop.NonFiniteError as e:  # config.nonfinite="halt": the message is the report
    fail(e, exit_code=1)
  first = summary.get("first_eval", {})
  final = summary.get("final_eval", {})
  for label, metrics in (("step 0", first), (f"step {summary['final_step']}", final)):
    shown = [k for k in ("loss", "rewards/accuracies", "rewards/margins") if f"eval/{k}" in metrics]
    if shown:
      print(f"eval at {label}: " + " ".join(f"{k}={metrics[f'eval/{k}']:.4f}" for k in shown))
  logging.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "state"},
                                         default=str))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
