"""Packed batches (data/packing.py, config.data.pack_rows): every token once, segments apart,
and the packed step equal to the unpacked one."""

import jax
import numpy as np
import pytest

from data.packing import pack_batch, pack_micro_batches
from data.pipeline import TokenizedPair, collate

PACKED_KEYS = ("packed_ids", "packed_segment_ids", "packed_positions", "chosen_packed_index",
               "rejected_packed_index")


def _batch(single=False):
  rng = np.random.default_rng(0)
  lengths = [(3, 2, 5), (2, 7, 1), (4, 1, 1), (1, 3, 2)]  # prompt, chosen, rejected
  pairs = [TokenizedPair(i, rng.integers(3, 50, p).astype(np.int32),
                         rng.integers(3, 50, c).astype(np.int32),
                         None if single else rng.integers(3, 50, r).astype(np.int32))
           for i, (p, c, r) in enumerate(lengths)]
  return collate(pairs, 10, pad_id=0)


def test_every_token_lands_once_in_its_own_segment():
  batch = _batch()
  packed = pack_batch(batch, rows=5)  # 8 sequences of 9, 8, 5, 5, 5, 4, 3, 3 tokens
  assert packed is not None
  flat_ids = packed["packed_ids"].reshape(-1)
  seen = []
  for side in ("chosen", "rejected"):
    index = packed[f"{side}_packed_index"]
    n = batch[f"{side}_attention_mask"].sum(1)
    for b in range(4):
      assert (index[b, 0] == -1) and (index[b, n[b]:] == -1).all()
      np.testing.assert_array_equal(flat_ids[index[b, 1:n[b]]], batch[f"{side}_ids"][b, 1:n[b]])
      # One segment per sequence, positions from 0, the first token just before index[1].
      rows, offsets = np.divmod(index[b, 1:n[b]], 10)
      assert len(set(rows)) == 1 and (np.diff(offsets) == 1).all()
      segment = packed["packed_segment_ids"][rows[0], offsets[0]]
      assert segment > 0 and (packed["packed_segment_ids"][rows[0]] == segment).sum() == n[b]
      np.testing.assert_array_equal(packed["packed_positions"][rows, offsets],
                                    np.arange(1, n[b]))
      seen.extend(index[b, 1:n[b]])
  assert len(seen) == len(set(seen))  # no slot holds two tokens
  assert (packed["packed_segment_ids"] > 0).sum() == batch["chosen_attention_mask"].sum() + \
      batch["rejected_attention_mask"].sum()


def test_batch_that_does_not_fit_is_left_unpacked():
  assert pack_batch(_batch(), rows=4) is None  # 42 tokens, but first fit leaves a 3 out
  single = pack_batch(_batch(single=True), rows=3)  # PRIME-style: chosen only
  assert single is not None and "rejected_packed_index" not in single


def test_micro_batches_are_packed_apart_where_the_step_splits_them():
  """With K = 2 micro-batches, the step's split (pairs j::K, rows j::K) finds exactly what
  pack_batch makes of micro-batch j alone; one micro-batch that does not fit: no packing."""
  batch = _batch()
  packed = pack_micro_batches(batch, rows=6, micro_batches=2)
  for j in range(2):
    alone = pack_batch({k: v[j::2] for k, v in batch.items()}, rows=3)
    for key in PACKED_KEYS:
      np.testing.assert_array_equal(packed[key][j::2], alone[key], err_msg=key)
  # Micro-batch 1 (19 tokens) fits in 2 rows of 10, micro-batch 0 (23 tokens) does not.
  assert pack_batch({k: v[1::2] for k, v in batch.items()}, rows=2) is not None
  assert pack_micro_batches(batch, rows=4, micro_batches=2) is None
  with pytest.raises(ValueError, match="micro-batches"):
    pack_micro_batches(batch, rows=5, micro_batches=2)


@pytest.mark.parametrize("loss, grad_accum, processes",
                         [("dpo", 1, 1),
                          # ~15 s each (the suite's budget); dpo-2-2 keeps accumulation
                          pytest.param("simpo", 1, 1, marks=pytest.mark.slow),
                          pytest.param("dpo", 2, 1, marks=pytest.mark.slow),
                          ("dpo", 2, 2)])
def test_packed_step_equals_the_unpacked_step(tmp_path, tfds_dir, loss, grad_accum, processes):
  """Two train steps on packed batches give the losses and params of the plain batches,
  with and without gradient accumulation. With two processes, each packs its own slice and
  the global batch is their slices in process order, as `put_batch` assembles it."""
  from data import pipeline
  from tests.conftest import micro_config
  from training import experiment
  from training.mesh import put_batch

  # Sequences of 19-31 tokens in one 64-token bucket: two fit in a row.
  config = micro_config(**{"data.data_dir": tfds_dir, "data.pack_rows": 12, "loss.name": loss,
                           "data.buckets": (64,), "grad_accum_steps": grad_accum})
  exp = experiment.build(config, str(tmp_path))
  hosts = [pipeline.PreferenceBatcher(
      exp.train_batches.pairs, batch_size=config.batch_size, seed=config.seed,
      buckets=tuple(config.data.buckets), pack_rows=12, grad_accum_steps=grad_accum,
      process_index=p, process_count=processes)
      for p in range(processes)]
  step = jax.jit(experiment.make_train_step_for(exp))
  results = []
  for packed in (True, False):
    state, losses = exp.state, []
    for s in range(2):
      slices = [host.batch(s) for host in hosts]
      batch = {k: np.concatenate([b[k] for b in slices]) for k in slices[0]}
      assert "packed_ids" in batch  # the 16 sequences fit in 12 rows
      if not packed:
        batch = {k: v for k, v in batch.items() if k not in PACKED_KEYS}
        plain = exp.train_batches.batch(s)
        for k in plain.keys() - set(PACKED_KEYS):
          np.testing.assert_array_equal(batch[k], plain[k], err_msg=k)
      state, metrics = step(state, exp.ref_params, put_batch(batch, exp.mesh))
      assert metrics["nonfinite"] == 0
      losses.append(float(metrics["loss"]))
    results.append((losses, jax.device_get(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("override,message", [
    ({"data.pack_rows": 17}, "pack_rows must be in"),
    ({"data.pack_rows": 9, "grad_accum_steps": 2}, "grad_accum_steps = 2"),
    ({"data.pack_rows": 8, "model.share_prompt": True}, "share_prompt"),
    ({"data.pack_rows": 8, "model.logits_on": "completion"}, "logits_on"),
])
def test_bad_packing_configs_are_rejected(override, message):
  from tests.conftest import micro_config
  from training import config_check

  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(micro_config(**override))


def test_packed_run_trains_and_evaluates(tmp_path, tfds_dir):
  """loop.train end to end with packed training batches (eval batches stay unpacked)."""
  from tests.conftest import micro_config
  from training import loop

  summary = loop.train(micro_config(**{"data.data_dir": tfds_dir, "data.pack_rows": 10,
                                       "data.buckets": (64,)}), str(tmp_path))
  assert summary["final_step"] == 6 and summary["skipped_steps"] == 0
