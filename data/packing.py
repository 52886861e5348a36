"""Packing a batch's sequences into fewer rows, with segment ids (`config.data.pack_rows`).

A batch of B pairs is 2B right-padded rows of length T (`data.pipeline.collate`); with
sequences of mixed lengths much of it is padding that the model still computes. Packing
places the 2B sequences (each side's prompt + completion) into R < 2B rows of the same length
T, first-fit by decreasing length, so the forward pass runs on [R, T]. Each sequence is a
segment: its own segment id (attention never crosses segments) and positions from 0, so its
log-probs equal the unpacked ones up to float rounding. The pair arrays stay as they are (the
losses read them); the packed ones are added beside them:

* ``packed_ids``, ``packed_segment_ids`` (1, 2, ... per sequence; 0 on padding) and
  ``packed_positions``: [R, T] int32;
* ``{side}_packed_index``: [B, T] int32, where token t of that side's row lives in the packed
  rows, as a flat index r·T + offset; −1 on padding and at t = 0 (nothing predicts the
  first token), where the unpacked log-prob is 0.

The training step reads the packed forward when ``packed_ids`` is present
(`training.step.pair_logps`). A batch whose sequences do not fit in R rows is returned
unpacked (`pack_batch` gives None), which the step handles as an ordinary batch.

With gradient accumulation over K micro-batches the step gives micro-batch j the pairs
j, j + K, j + 2K, ... (`training.step.make_train_step`). `pack_micro_batches` packs each
micro-batch on its own into R/K rows and interleaves the rows the same way, so the step's
split hands every micro-batch exactly its own packed rows and indices.
"""

from __future__ import annotations

import numpy as np


def _sides(batch) -> tuple[str, ...]:
  return tuple(s for s in ("chosen", "rejected") if f"{s}_ids" in batch)


def pack_batch(batch: dict, rows: int) -> dict | None:
  """`batch` plus the packed arrays of the module doc, or None if it does not fit `rows`."""
  sides = _sides(batch)
  num_pairs, length = batch["chosen_ids"].shape
  sequences = [(side, b, int(batch[f"{side}_attention_mask"][b].sum()))
               for side in sides for b in range(num_pairs)]
  fill = np.zeros(rows, np.int64)
  placed = {}
  # First fit by decreasing length (ties in batch order: deterministic).
  for i in sorted(range(len(sequences)), key=lambda i: -sequences[i][2]):
    n = sequences[i][2]
    free = np.flatnonzero(fill + n <= length)
    if free.size == 0:
      return None
    row = int(free[0])
    placed[i] = (row, int(fill[row]))
    fill[row] += n

  ids = np.zeros((rows, length), np.int32)
  segments = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  index = {side: np.full((num_pairs, length), -1, np.int32) for side in sides}
  for i, (side, b, n) in enumerate(sequences):
    row, start = placed[i]
    ids[row, start:start + n] = batch[f"{side}_ids"][b, :n]
    segments[row, start:start + n] = i + 1
    positions[row, start:start + n] = np.arange(n)
    index[side][b, 1:n] = row * length + start + np.arange(1, n)
  out = dict(batch, packed_ids=ids, packed_segment_ids=segments, packed_positions=positions)
  out.update({f"{side}_packed_index": index[side] for side in sides})
  return out


def pack_micro_batches(batch: dict, rows: int, micro_batches: int = 1) -> dict | None:
  """`pack_batch` for a step that splits `batch` into `micro_batches` (module doc).

  Micro-batch j (pairs j::K) is packed into rows/K rows; row r of it becomes row r·K + j of
  the packed arrays, and its pair r becomes pair r·K + j of `{side}_packed_index`, which is
  where the step's split takes them from. None unless every micro-batch fits.
  """
  if micro_batches == 1:
    return pack_batch(batch, rows)
  if rows % micro_batches or len(batch["chosen_ids"]) % micro_batches:
    raise ValueError(f"rows={rows} and the batch's {len(batch['chosen_ids'])} pairs must "
                     f"both divide into {micro_batches} micro-batches")
  parts = []
  for j in range(micro_batches):
    packed = pack_batch({key: value[j::micro_batches] for key, value in batch.items()},
                        rows // micro_batches)
    if packed is None:
      return None
    parts.append(packed)
  out = dict(batch)
  for key in parts[0].keys() - batch.keys():
    stacked = np.stack([part[key] for part in parts], axis=1)  # [n / K, K, T]
    out[key] = stacked.reshape((-1,) + stacked.shape[2:])
  return out
