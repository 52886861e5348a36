"""Precomputed reference log-probs: one forward pass of the reference over the data, cached.

With `config.reference.mode = "precomputed"` the frozen reference never enters the train
step: its per-token log-probs are computed once per (data, tokenization, reference weights)
and stored in WORKDIR/reference_cache/<fingerprint>.npz, keyed by example id. Each training
batch then carries `ref_chosen_logps` / `ref_rejected_logps` [B, T], aligned with its ids.
Precomputed and in-step reference log-probs are the same numbers (tests check this).
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np


def fingerprint(parts: dict) -> str:
  """A short stable hash of everything the cached log-probs depend on."""
  blob = json.dumps(parts, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


# The batch arrays a cache row needs.
_ROW_KEYS = ("example_id", "weight", "chosen_attention_mask", "rejected_attention_mask")


class ReferenceCache:
  """example_id -> per-token reference log-probs of chosen and rejected (unpadded)."""

  def __init__(self, chosen: dict[int, np.ndarray], rejected: dict[int, np.ndarray]):
    self.chosen, self.rejected = chosen, rejected

  @classmethod
  def compute(cls, logps_fn, batches, gather=jax.device_get) -> "ReferenceCache":
    """`logps_fn(batch) -> ([B, T], [B, T])` on device; `batches` yields host batches.

    `gather(x)` turns a batch array (this process's numpy slice, or the step's batch-sharded
    output) into the whole global batch on this host. On several processes every process
    thus keeps every example's log-probs: its later training batches hold examples that
    other processes' eval slices held. One process: `jax.device_get`.
    """
    chosen, rejected = {}, {}
    for batch in batches:
      ref_chosen, ref_rejected = (np.asarray(gather(x)) for x in logps_fn(batch))
      rows = {k: np.asarray(gather(batch[k])) for k in _ROW_KEYS if k in batch}
      keep = rows.get("weight", np.ones(len(rows["example_id"]))) > 0
      for row in np.flatnonzero(keep):
        example_id = int(rows["example_id"][row])
        chosen[example_id] = np.asarray(
            ref_chosen[row, :int(rows["chosen_attention_mask"][row].sum())], np.float32)
        rejected[example_id] = np.asarray(
            ref_rejected[row, :int(rows["rejected_attention_mask"][row].sum())], np.float32)
    return cls(chosen, rejected)

  def save(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"c{k}": v for k, v in self.chosen.items()}
    arrays.update({f"r{k}": v for k, v in self.rejected.items()})
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache

  @classmethod
  def load(cls, path: str) -> "ReferenceCache":
    chosen, rejected = {}, {}
    with np.load(path) as data:
      for key in data.files:
        (chosen if key[0] == "c" else rejected)[int(key[1:])] = data[key]
    return cls(chosen, rejected)

  def attach(self, batch: dict) -> dict:
    """Adds [B, T] `ref_chosen_logps` / `ref_rejected_logps` aligned with right-padded ids."""
    out = dict(batch)
    for side, table in (("chosen", self.chosen), ("rejected", self.rejected)):
      ids = batch[f"{side}_ids"]
      padded = np.zeros(ids.shape, np.float32)
      for row, example_id in enumerate(batch["example_id"]):
        values = table.get(int(example_id))
        if values is None:
          raise KeyError(f"example {int(example_id)} has no precomputed reference log-probs; "
                         "the cache does not match the data (delete it to recompute)")
        padded[row, :len(values)] = values
      out[f"ref_{side}_logps"] = padded
    return out
