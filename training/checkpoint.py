"""Orbax checkpoints of the train state: periodic, keep the newest N, verified exact resume.

A checkpoint `DIR/<step>/` holds two orbax items:

* `state`: params, optimizer state, step, skipped-step count and the step RNG;
* `meta` (JSON): the data position and one checksum per state array.

Data position. Batch `s` is a pure function of (seed, s) (see
`data.pipeline.PreferenceBatcher`), so the position IS the step: nothing is re-read or
skipped on resume. `meta` records it explicitly together with what batch `s` depends on
(`data_position_fn`: seed, batch size, a fingerprint of the tokenized training split, the
example ids of the next batch), and `restore` refuses a checkpoint that would resume on other
batches (a changed `config.seed`, other data files) with `CheckpointMismatchError`.

Integrity. Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames the directory when
every file is written, so a run killed mid-save (even by SIGKILL) leaves no `<step>` directory
and resumes from the previous one; leftover tmp directories are deleted on the next start.
A step directory damaged afterwards (files missing or truncated, or flipped bits, which orbax
restores silently, hence the checksums) fails `restore`, which warns, moves it aside to
`<step>.corrupt` and falls back to the next older checkpoint. When no checkpoint restores,
`CorruptCheckpointError` says so in one line and nothing is moved.

Failed saves. A save that fails (no space left, an I/O error), in the foreground or in
orbax's background thread, raises `training.workdir.WorkdirIOError` (`could not save
checkpoint 20 to DIR: No space left on device`) at the next `check_for_errors`, which the loop
calls after every step: the run stops at once with the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from training.step import TrainState
from training.workdir import io_error

_FORMAT = 1


class CheckpointError(Exception):
  """A checkpoint this run cannot resume from; the message is one line for the user."""


class CheckpointMismatchError(CheckpointError, ValueError):
  """An intact checkpoint that this run must not resume from (it would read other data)."""


class CorruptCheckpointError(CheckpointError, RuntimeError):
  """A checkpoint directory that cannot be restored faithfully."""


def _as_tree(state: TrainState) -> dict:
  tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "skipped_steps": state.skipped_steps}
  if state.rng is not None:
    tree["rng"] = state.rng
  return tree


def _from_tree(tree: dict) -> TrainState:
  return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
                    skipped_steps=tree["skipped_steps"], rng=tree.get("rng"))


# ----------------------------------------------------------------------------------------------
# Checksums


def _bits(x):
  """The bit pattern of `x` as uint32 (64-bit types gain a trailing axis of 2)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if x.dtype.itemsize >= 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x):
  """Sum over elements of bits * (2 * flat_index * phi + 1), mod 2**32.

  Every weight is odd, so any single flipped bit changes the sum, and the position weights
  catch swapped elements. The flat index is built from per-axis iotas, not a reshape, so a
  sharded array is summed where it lives (no gather); integer sums are exact in any order.
  """
  bits = _bits(x)
  index, stride = jnp.zeros(bits.shape, jnp.uint32), 1
  for axis in reversed(range(bits.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * np.uint32(stride)
    stride = (stride * bits.shape[axis]) % 2**32
  weights = index * np.uint32(0x9E3779B9 * 2 % 2**32) + np.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


_checksums_jit = jax.jit(lambda leaves: [_checksum(x) for x in leaves])


def checksums(tree) -> dict[str, int]:
  """{key path: checksum} of every array in `tree` (computed on device, see `_checksum`)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  values = jax.device_get(_checksums_jit([leaf for _, leaf in flat]))
  return {jax.tree_util.keystr(path): int(v) for (path, _), v in zip(flat, values)}


# ----------------------------------------------------------------------------------------------
# Data position


def dataset_fingerprint(batcher) -> str:
  """A hash of what the batches are drawn from: the tokenized split, batch size, buckets."""
  h = hashlib.sha256()
  h.update(repr((len(batcher.pairs), batcher.batch_size, tuple(batcher.buckets))).encode())
  for i in range(len(batcher.pairs)):
    pair = batcher.pairs[i]
    h.update(np.int64(pair.example_id).tobytes())
    for ids in (pair.prompt, pair.chosen, pair.rejected):
      if ids is None:  # a single response (no rejected side)
        h.update(np.int64(-1).tobytes())
        continue
      h.update(np.int64(len(ids)).tobytes())
      h.update(np.ascontiguousarray(ids, np.int32).tobytes())
  return h.hexdigest()[:16]


def data_position_fn(batcher):
  """`step -> dict`: the data position of a `PreferenceBatcher` at `step`, for `meta`.

  The same on every process (global example ids, not this host's slice).
  """
  fingerprint = dataset_fingerprint(batcher)

  def position(step: int) -> dict:
    ids = [int(batcher.pairs[i].example_id) for i in batcher.global_indices(step)]
    return {"step": int(step), "seed": int(batcher.seed), "batch_size": int(batcher.batch_size),
            "dataset": fingerprint, "next_batch_example_ids": ids}

  return position


_MISMATCH_HINTS = {
    "seed": "config.seed changed",
    "batch_size": "config.batch_size changed",
    "dataset": "the training data, tokenizer, truncation limits or buckets changed",
    "next_batch_example_ids": "the batch order changed",
}


def _short(value):
  return f"{value[:8]}{'...' if len(value) > 8 else ''}" if isinstance(value, list) else value


def _check_position(saved: dict, current: dict, where: str):
  for key, hint in _MISMATCH_HINTS.items():
    if key in saved and saved[key] != current.get(key):
      raise CheckpointMismatchError(
          f"{where} was written with {key}={_short(saved[key])} but this run has "
          f"{key}={_short(current.get(key))} ({hint}): resuming would train on other batches. "
          "Restore the original setting or start in a new workdir.")


# ----------------------------------------------------------------------------------------------


class Checkpointer:
  """`ocp.CheckpointManager` for `TrainState`s with data position and integrity checks.

  `data_position(step) -> dict` (see `data_position_fn`) is saved in each checkpoint and
  compared on restore; None records and checks nothing.
  """

  def __init__(self, directory: str, *, keep: int = 2, save_every: int = 0,
               data_position=None):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True,
                                             cleanup_tmp_directories=True),
    )
    self._save_every = int(save_every)
    self._data_position = data_position
    self._saving = None  # the step of the newest save started (errors name it)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def is_due(self, step: int, *, force: bool = False) -> bool:
    """Whether `maybe_save(step, ..., force=force)` would write a checkpoint."""
    periodic = self._save_every > 0 and step % self._save_every == 0
    return (periodic or force) and self._manager.latest_step() != step

  def maybe_save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
    """Saves (asynchronously) when `step` is a multiple of `save_every` or `force` is set."""
    if not self.is_due(step, force=force):
      return False
    tree = _as_tree(state)
    meta = {"format": _FORMAT, "step": int(step), "checksums": checksums(tree),
            "data_position": self._data_position(step) if self._data_position else {}}
    if self._saving is not None:  # orbax waits for it anyway; its failure names its step
      self.wait()
    self._saving = step
    with self._save_errors():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
    return True

  @contextlib.contextmanager
  def _save_errors(self):
    """Any failure of a save (orbax wraps the OSError in its own types) as one line."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - re-raised as the one-line WorkdirIOError
      raise io_error(e, f"save checkpoint {self._saving} to {self.directory}") from e

  def check_for_errors(self):
    """Raises `WorkdirIOError` if a background save has failed (cheap; call every step)."""
    check = getattr(self._manager, "check_for_errors", None)  # orbax >= 0.5
    if check is not None and self._saving is not None:
      with self._save_errors():
        check()

  def restore(self, state_like: TrainState, step: int | None = None) -> TrainState:
    """Restores onto the shapes, dtypes and shardings of `state_like` (arrays or abstract).

    With `step` None: the newest checkpoint that restores intact; damaged newer ones are
    moved aside with a warning. If none restores, the newest one's error is raised and
    nothing is moved (a config that no longer fits, e.g. another model shape, fails on every
    checkpoint and is not damage). `CheckpointMismatchError` is raised at once.
    """
    if step is not None:
      return self._restore_step(state_like, step)
    failed = []
    for candidate in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._restore_step(state_like, candidate)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # orbax/tensorstore raise many types for a damaged directory
        logging.warning("checkpoint %d in %s cannot be restored (%s: %s); trying the previous "
                        "one", candidate, self.directory, type(e).__name__, str(e)[:500])
        failed.append((candidate, e))
        continue
      if failed:
        self._set_aside([s for s, _ in failed])
      return state
    if failed:
      step, error = failed[0]
      lines = [line for line in str(error).splitlines() if line.strip()]
      raise CorruptCheckpointError(
          f"no checkpoint in {self.directory} restores (the newest, step {step}: "
          f"{type(error).__name__}: {(lines[-1] if lines else '')[:300]}); nothing was moved. "
          "Restore the checkpoints or start in a new workdir.") from error
    raise FileNotFoundError(f"no checkpoint in {self.directory}")

  def _restore_step(self, state_like: TrainState, step: int) -> TrainState:
    where = f"checkpoint {step} in {self.directory}"
    # The small JSON item first: a run on other data is refused before any array is read.
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    if self._data_position is not None and meta.get("data_position"):
      _check_position(meta["data_position"], self._data_position(step), where)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_tree(state_like))
    tree = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    if meta.get("step") != step or int(tree["step"]) != step:
      raise CorruptCheckpointError(f"{where} holds step {meta.get('step')} / {int(tree['step'])}")
    expected, actual = meta.get("checksums", {}), checksums(tree)
    bad = sorted(k for k in actual if expected.get(k) != actual[k])
    if bad:
      raise CorruptCheckpointError(f"{where}: checksum mismatch in {len(bad)} arrays, e.g. "
                                   f"{bad[:3]}")
    return _from_tree(tree)

  def read(self, step: int | None = None) -> tuple[dict, dict]:
    """(state tree, meta) of a checkpoint as saved, without a model to restore onto.

    For inspection and tests; arrays come back with the shardings recorded in the checkpoint
    (single-process use).
    """
    step = self._manager.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def _set_aside(self, steps: list[int]):
    """Renames damaged step directories to `<step>.corrupt` (kept for inspection)."""
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        target = path + ".corrupt"
        suffix = 1
        while os.path.exists(target):
          target, suffix = f"{path}.corrupt{suffix}", suffix + 1
        logging.warning("moving damaged checkpoint %s aside to %s", path, target)
        os.rename(path, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints set aside")
    self._manager.reload()

  def wait(self):
    with self._save_errors():
      self._manager.wait_until_finished()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    # After a failed save the manager is left open: closing it shuts down the event loop
    # that the failed save's remaining writes still report to (each would print a
    # traceback), and the process is about to end with the save's error anyway.
    self.wait()
    self._manager.close()
