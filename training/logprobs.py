"""Per-token log-probabilities of a sequence under a causal LM.

    logps[b, t] = log softmax(logits[b, t-1])[ids[b, t]]   for t >= 1,   logps[b, 0] = 0

computed as `logit_of_label - logsumexp(logits)`, so the normalised [B, T, V] log-softmax is
never materialised; the vocabulary projection runs over sequence chunks of
`chunk_size` positions so that at most [B, chunk, V] float32 logits are live at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _label_logps(logits, labels):
  """logits [B, C, V] float32, labels [B, C] -> [B, C] log p(label)."""
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return label_logits - jax.nn.logsumexp(logits, axis=-1)


def token_logps(model, ids, attention_mask, *, chunk_size: int = 0, positions=None,
                segment_ids=None):
  """[B, T] int ids -> [B, T] float32 per-token log-probs aligned with `ids` (see module doc).

  `model` is a `models.Transformer`. `chunk_size` > 0 computes the lm_head and the logsumexp
  over that many positions at a time (inside the same jit; a scan keeps memory flat).
  `positions` and `segment_ids` go to `hidden_states` (packed rows, data/packing.py); the
  first token of a segment then gets the previous segment's prediction, which no loss reads.
  """
  hidden = model.hidden_states(ids, attention_mask=attention_mask, positions=positions,
                               segment_ids=segment_ids)  # [B, T, D]
  hidden, labels = hidden[:, :-1], ids[:, 1:]  # position t-1 predicts token t
  num_positions = labels.shape[1]
  if chunk_size <= 0 or chunk_size >= num_positions:
    logps = _label_logps(model.unembed(hidden), labels)
  else:
    pad = (-num_positions) % chunk_size
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    labels = jnp.pad(labels, ((0, 0), (0, pad)))
    batch, padded, width = hidden.shape
    hidden_chunks = hidden.reshape(batch, padded // chunk_size, chunk_size, width).swapaxes(0, 1)
    label_chunks = labels.reshape(batch, padded // chunk_size, chunk_size).swapaxes(0, 1)

    def one_chunk(_, xs):
      h, y = xs
      return None, _label_logps(model.unembed(h), y)

    _, logps = jax.lax.scan(one_chunk, None, (hidden_chunks, label_chunks))
    logps = logps.swapaxes(0, 1).reshape(batch, padded)[:, :num_positions]
  return jnp.pad(logps, ((0, 0), (1, 0)))  # position 0 has no prediction
