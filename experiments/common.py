"""What every command-line entry point shares: one-line refusals and quiet library logs.

A refused run prints one line on stderr, `error: ...`, and exits with code 2 (`fail`); the
errors that end a run that way are `refusals()`. `quiet_libraries()` keeps orbax, TFDS and
JAX's own INFO chatter out of a healthy run's output (`--verbosity` brings it back).
"""

import logging as std_logging
import os
import sys

from absl import flags, logging


def fail(message, exit_code: int = 2):
  """Ends the program with one line on stderr instead of a traceback or absl's help text.

  A multi-line message (ml_collections embeds a traceback when a config file fails to load)
  is cut to its first and last lines, which hold the flag and the cause.
  """
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  text = " ... ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else "".join(lines)
  sys.stderr.write(f"error: {text}\n")
  sys.exit(exit_code)


def refusals() -> tuple[type, ...]:
  """The errors a run ends with as one line and exit 2: bad input, config, workdir,
  checkpoint, oracle, export, and failed writes (their messages name the file or field)."""
  from data.errors import DataError
  from training.checkpoint import CheckpointError
  from training.config_check import ConfigError
  from training.export import ExportError
  from training.oracles import OracleError
  from training.workdir import WorkdirError
  return (DataError, ConfigError, CheckpointError, WorkdirError, OracleError, ExportError)


# Libraries whose log lines are chatter on a healthy run: orbax (~90 lines per tiny run, and
# the tracebacks of a failed background save, which `WorkdirIOError` reports in one line),
# TFDS ("Reusing dataset ..."), JAX's backend probing ("Unable to initialize backend 'tpu'").
_CHATTY = tuple(os.sep + os.path.join(*parts) + os.sep for parts in (
    ("orbax",), ("tensorflow_datasets",), ("jax", "_src")))


class _QuietLibraries(std_logging.Filter):
  """Drops the chatty libraries' records below `level`; every other record passes."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record) -> bool:
    return record.levelno >= self.level or not any(p in record.pathname for p in _CHATTY)


class _WithoutLoopEchoes:
  """`sys.stderr` less the "Event loop is closed" tracebacks that tensorstore prints when the
  writes of a failed orbax save finish after the save's event loop has ended (the save's
  error is reported in one line; these are its echoes, printed from tensorstore's threads).

  Text passes through as written; only a block that starts with "Traceback (most recent
  call last):" is held until its exception line, then dropped if that line is the echo.
  """

  _HEADER = "Traceback (most recent call last):"
  _ECHO = "RuntimeError: Event loop is closed"

  def __init__(self, stream):
    self._stream = stream
    self._held = None

  def write(self, text: str):
    if self._held is None and not text.startswith(self._HEADER):
      return self._stream.write(text)
    self._held = (self._held or "") + text
    lines = self._held.splitlines()
    last = lines[-1] if lines else ""
    if (self._held.endswith("\n") and len(lines) > 1 and not last.startswith(" ")
        and last != self._HEADER):
      held, self._held = self._held, None
      if last != self._ECHO:
        self._stream.write(held)
    return len(text)

  def flush(self):
    if self._held:
      held, self._held = self._held, None
      self._stream.write(held)
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def quiet_libraries():
  """Silences orbax, TFDS and JAX's own logging below CRITICAL, unless --verbosity (or -v)
  is given: then every line comes back. The project's own lines are unaffected."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.get_absl_handler().addFilter(_QuietLibraries(std_logging.CRITICAL))
  sys.stderr = _WithoutLoopEchoes(sys.stderr)


def run_summary(config, workdir: str) -> str:
  """One line that says what is about to run, printed before the progress bar."""
  m, d = config.model, config.data
  model = m.init_from or f"{m.architecture} {m.num_layers} layers x {m.hidden_size} (random init)"
  data = d.path or "the built-in sorting task"
  import algorithms  # already imported by the config check
  online = algorithms.get_algorithm(config.loss.name).requirements.online is not None
  steps = (f"{config.online.rounds} rounds of {config.total_steps} steps" if online
           else f"{config.total_steps} steps")
  # Every hyperparameter of the loss: the losses share no field but `name` (β, τ, η, ...).
  loss = ", ".join(f"{k}={v}" for k, v in sorted(config.loss.items()) if k != "name")
  return (f"{config.name} -> {workdir}: loss {config.loss.name} ({loss}), "
          f"{model}, data {data}, {steps} of {config.batch_size} pairs, "
          f"lr {config.optimizer.learning_rate:g} ({config.optimizer.decay})")


# XLA:CPU's YNNPACK fusion list; '' turns the fusions off (docs/performance.md, "On an
# AVX-512 host", and ../shared research: slower inside our steps on both hosts measured).
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def set_cpu_xla_flags(ynn_fusion_type: str) -> str:
  """Adds `--xla_cpu_experimental_ynn_fusion_type=<value>` to XLA_FLAGS; 'default' adds
  nothing, and a value XLA_FLAGS already sets is kept.

  Must run before JAX creates its backends. Only XLA:CPU reads `xla_cpu_*` flags, so on an
  accelerator they change nothing there. Returns the resulting XLA_FLAGS.
  """
  flags_now = os.environ.get("XLA_FLAGS", "")
  if ynn_fusion_type != "default" and _YNN_FLAG not in flags_now:
    flags_now = f"{flags_now} {_YNN_FLAG}={ynn_fusion_type}".strip()
    os.environ["XLA_FLAGS"] = flags_now
  return flags_now


def reuse_host_buffers() -> bool:
  """glibc's mallopt so that large freed host blocks are reused instead of mapped afresh.

  XLA:CPU allocates each execution's temporaries as one block from a pool thread; glibc's
  thread arenas cannot hold it, so it is mmap'ed and unmapped every step, and its page
  faults cost ~0.2 CPU-s per bench_tiny step (docs/performance.md, "reused host buffers").
  M_ARENA_MAX=1, M_MMAP_MAX=0 and M_TRIM_THRESHOLD=2^31-1 serve every thread from the main
  heap and keep what it grew to. Host memory only; no numbers change. Must run before JAX
  creates its thread pools (a thread keeps the arena it first got). Returns whether every
  mallopt call succeeded (False without glibc).
  """
  import ctypes

  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's <malloc.h>
  settings = ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1))
  return all(mallopt(param, value) == 1 for param, value in settings)
