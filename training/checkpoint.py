"""Orbax checkpoints of the train state: periodic, keep the newest N, exact resume.

A checkpoint holds params, optimizer state, the step and the skipped-step count. The data
position needs nothing more: batch `s` is a pure function of (seed, s) (see
`data.pipeline.PreferenceBatcher`), so a run resumed at step s sees exactly the batches the
uninterrupted run would have seen. Orbax writes to a temporary directory and renames it when
complete, so a run killed mid-save resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from training.step import TrainState


def _as_tree(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "skipped_steps": state.skipped_steps}


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for `TrainState`s."""

  def __init__(self, directory: str, *, keep: int = 2, save_every: int = 0):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True),
    )
    self._save_every = int(save_every)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def maybe_save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
    due = self._save_every > 0 and step % self._save_every == 0
    if not (due or force) or self._manager.latest_step() == step:
      return False
    self._manager.save(step, args=ocp.args.StandardSave(_as_tree(state)), force=True)
    return True

  def restore(self, state_like: TrainState, step: int | None = None) -> TrainState:
    """Restores onto the shapes, dtypes and shardings of `state_like` (arrays or abstract)."""
    step = self._manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_tree(state_like))
    tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return TrainState(**tree)

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
