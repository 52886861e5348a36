"""Per-token log-probs with the lm_head on completion positions only, and a fused backward.

Same contract as `training.logprobs.token_logps` on the positions a loss reads (the loss
mask), computed with less work:

* only a window of K positions per row goes through the vocabulary projection. Completion
  tokens are contiguous and at most `data.max_completion_len` per sequence
  (`data.pipeline` truncates them), so the window [s, s + K) from the first loss-mask
  position s (moved left to end by T when it would overrun) holds all of them with
  K = min(max_completion_len, T - 1). At the TRL anchor's shape that is 192 of 255
  positions, and the prompt positions are never projected;
* the head is one `jax.custom_vjp`: forward `logp = z[y] − logsumexp(z)` with z = h·W, and
  backward `dz = g·(onehot(y) − softmax(z))`, `dh = dz·Wᵀ`, `dW = hᵀ·dz`, which XLA:CPU runs
  as plain GEMMs instead of fusing the softmax derivative into a transposing copy.

Positions outside the window get log-prob 0, exactly like prompt and padding positions, which
every loss masks out. A row whose loss mask does not fit in the window (a batch built with a
longer completion limit than K) gets NaN log-probs, so that the step's non-finite guard skips
it loudly instead of training on a silently truncated sum.

Used by `training.step.pair_logps` (and so by the train step, the eval step and the
reference forward) when `config.model.logits_on = "completion"`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def label_logps(hidden, w, labels):
  """hidden [..., D], w [D, V], labels [...] int -> [...] float32 log softmax(h·W)[label]."""
  return _label_logps_fwd(hidden, w, labels)[0]


def _logits(hidden, w):
  return jnp.einsum('...d,dv->...v', hidden, w, preferred_element_type=jnp.float32)


def _label_logps_fwd(hidden, w, labels):
  logits = _logits(hidden, w)
  lse = jax.nn.logsumexp(logits, axis=-1)
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return label_logits - lse, (hidden, w, labels, logits, lse)


def _label_logps_bwd(res, g):
  hidden, w, labels, logits, lse = res
  probs = jnp.exp(logits - lse[..., None])
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  dlogits = ((onehot - probs) * g[..., None]).astype(hidden.dtype)
  dhidden = jnp.einsum('...v,dv->...d', dlogits, w)
  flat_h = hidden.reshape(-1, hidden.shape[-1])
  flat_dz = dlogits.reshape(-1, dlogits.shape[-1])
  dw = jnp.einsum('md,mv->dv', flat_h, flat_dz, preferred_element_type=jnp.float32)
  return dhidden, dw.astype(w.dtype), None


label_logps.defvjp(_label_logps_fwd, _label_logps_bwd)


def head_weight(model):
  """The lm_head as [D, V] in the compute dtype (the embedding, transposed, when tied)."""
  if model.config.final_logit_softcapping is not None:
    # label_logps computes plain h·W logits; soft-capped ones (Gemma 2) need model.unembed.
    raise ValueError(
        'final_logit_softcapping (Gemma 2) is not supported by the completion-window head: '
        'set config.model.logits_on="all" and config.model.share_prompt=False.')
  dt = model.config.compute_dtype
  if model.config.tie_word_embeddings:
    return model.embedding[...].astype(dt).T
  return model.lm_head[...].astype(dt)


def window_size(bound: int, length: int) -> int:
  """Positions in a window bounded by `bound` over rows of `length`: min(bound, T − 1), at
  least 1; bound <= 0 means T − 1 (every label position)."""
  return max(1, min(length - 1 if bound <= 0 else bound, length - 1))


def completion_window(loss_mask, window: int):
  """First position [B] of the K = `window` positions that hold every loss-mask token."""
  num_positions = loss_mask.shape[1]
  first = jnp.argmax(loss_mask > 0, axis=1)
  return jnp.clip(first, 1, num_positions - window)


def completion_token_logps(model, ids, attention_mask, loss_mask, *, max_completion_len: int):
  """[B, T] log-probs, computed on the completion window only (module doc).

  `model` is a `models.Transformer`; `loss_mask` [B, T] marks the positions that count;
  `max_completion_len` <= 0 means no bound (a window of T − 1: every label position, which
  still gains the fused backward).
  """
  batch, length = ids.shape
  window = window_size(max_completion_len, length)
  hidden = model.hidden_states(ids, attention_mask=attention_mask)  # [B, T, D]
  start = completion_window(loss_mask, window)
  positions = start[:, None] + jnp.arange(window)  # [B, K] label positions
  labels = jnp.take_along_axis(ids, positions, axis=1)
  h = jnp.take_along_axis(hidden, (positions - 1)[..., None], axis=1)  # t-1 predicts t
  logps = label_logps(h, head_weight(model), labels)  # [B, K] float32
  rows = jnp.arange(batch)[:, None]
  full = jnp.zeros((batch, length), jnp.float32).at[rows, positions].set(logps)
  # Loss-mask tokens outside the window would silently drop out of the sums: poison the row.
  covered = jnp.sum(jnp.take_along_axis(loss_mask, positions, axis=1), axis=1)
  lost = covered < jnp.sum(loss_mask, axis=1)
  return jnp.where(lost[:, None], jnp.nan, full)

