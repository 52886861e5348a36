"""What a run on several processes (`jax.distributed`, one process per host) needs outside
its jitted steps: decisions every process takes together, and host copies of global arrays.

Every process runs the same program: the same Python decisions, the same jitted calls on
global arrays (parameters and batches sharded over the mesh, whose devices sit on several
hosts). Two things break that, and a pod hangs or diverges:

* a decision that each process takes from its own view, e.g. `os.path.exists` of a file that
  process 0 writes: one process skips a computation whose collectives the others run.
  `process_0_says` makes process 0's view everyone's; `barrier` keeps the others from reading
  a file before process 0 has written it;
* `np.asarray` of a global array: its shards live on other hosts. `host_value` gathers it.

Something only process 0 should do (call a paid judge API) is done there and its arrays sent
to the others with `from_process_0`. On one process every helper is plain numpy or a no-op.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_main() -> bool:
  """Process 0: the one that writes files (stage records, metrics, config.json)."""
  return jax.process_index() == 0


def process_0_says(flag: bool) -> bool:
  """Process 0's `flag`, on every process: for a decision that leads into collectives (a
  stage read back from its file, or computed by every process)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))


def barrier(name: str) -> None:
  """Every process waits here for the others (after process 0 wrote what they read next).
  `name` must be the same on every process: a process that reached another barrier is an
  error here, not a hang further on."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def from_process_0(tree):
  """`tree` (a pytree of numpy arrays) as process 0 holds it, on every process: what only
  process 0 computed. The others pass arrays of the same shapes and dtypes (their values are
  ignored). float64 arrives as float32 (jax without x64)."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def host_value(x) -> np.ndarray:
  """The whole value of a jax array as numpy, on every process: a copy when it is on this
  host's devices (or replicated on every device), else an all-gather of its shards (a
  collective: every process must ask for it)."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
