"""Per-token log-probs of preference pairs with each pair's prompt run through the model once.

Chosen and rejected share their prompt token for token (`data.pipeline` truncates the prompt
on its own, so both sides keep the same prompt tokens). The usual [2B, T] forward computes the
prompt twice; here the prompt runs once ([B, P]) and both completions ([2B, C]) attend to its
keys and values, then causally to their own (`models.Transformer.prefix_shared_hidden_states`).
Same values as the plain forward up to float rounding; the saving is the prompt share of the
tokens of one side: 1/8 of the token work at the TRL anchor's 64 + 192 shape, up to 1/2 for
long prompts and short answers ("prefix sharing": Wang et al. 2024, arXiv 2410.20305, who
measured 1.1-1.5x on DPO).

Layout, per side row (the pipeline's right-padded rows, `data/pipeline.py`):

    ids    = [prompt (L tokens, L = first loss-mask position) | completion | padding]

* prompt: positions [0, L) of the chosen row, in a window of P = `max_prompt_len` positions;
* completion: positions [L, L + C) of each side's row, C = `max_completion_len`;
* completion token j is predicted by the hidden state before it: the prompt's last position
  for j = 0, the completion's position j − 1 otherwise. Only those C positions go through the
  vocabulary projection (the fused head of `training.fused_logprobs`).

The result is scattered back to the [2B, T] row layout, with log-prob 0 outside the
completion window, like `fused_logprobs.completion_token_logps`. A pair whose two rows do not
share their prompt (other prompt length or other tokens), whose prompt does not fit in P, or
whose loss-mask tokens do not fit in C gets NaN log-probs on both rows, so that the step's
non-finite guard skips it loudly instead of training on the wrong sequences.
"""

from __future__ import annotations

import jax.numpy as jnp

from training.fused_logprobs import head_weight, label_logps, window_size


def shared_prompt_token_logps(model, ids, attention_mask, loss_mask, *, num_sides: int,
                              max_prompt_len: int, max_completion_len: int):
  """[S*B, T] log-probs of `num_sides` stacked sides (rows s*B + b) sharing prompt b.

  `model` is a `models.Transformer`; `ids`, `attention_mask`, `loss_mask` are [S*B, T] as
  `training.step._stacked` builds them. See the module doc for the windows and the NaN rule.
  """
  rows, length = ids.shape
  batch = rows // num_sides
  p = window_size(max_prompt_len, length)
  c = window_size(max_completion_len, length)
  starts = jnp.argmax(loss_mask > 0, axis=1).astype(jnp.int32)  # [S*B] first completion pos
  prompt_len = starts[:batch]  # [B]

  # Each side's prompt must be the chosen row's: same length, same tokens.
  t = jnp.arange(length)
  in_prompt = t[None] < prompt_len[:, None]  # [B, T]
  by_side = ids.reshape(num_sides, batch, length)
  same = jnp.all((by_side == by_side[:1]) | ~in_prompt[None], axis=(0, 2))  # [B]
  same &= jnp.all(starts.reshape(num_sides, batch) == prompt_len[None], axis=0)
  same &= prompt_len <= p

  prefix_mask = (t[None, :p] < prompt_len[:, None]).astype(jnp.int32)  # [B, P]
  prefix_ids = jnp.where(prefix_mask != 0, ids[:batch, :p], 0)
  positions = starts[:, None] + jnp.arange(c)  # [S*B, C] row positions of the completion
  inside = positions < length
  clipped = jnp.minimum(positions, length - 1)
  suffix_ids = jnp.take_along_axis(ids, clipped, axis=1)
  suffix_mask = jnp.take_along_axis(attention_mask, clipped, axis=1) * inside

  prefix_h, suffix_h = model.prefix_shared_hidden_states(prefix_ids, prefix_mask,
                                                         suffix_ids, suffix_mask)
  last = jnp.take_along_axis(prefix_h, jnp.maximum(prompt_len - 1, 0)[:, None, None], axis=1)
  last = jnp.concatenate([last] * num_sides, axis=0)  # [S*B, 1, D]
  predictors = jnp.concatenate([last, suffix_h[:, :-1]], axis=1)  # [S*B, C, D]
  logps = label_logps(predictors, head_weight(model), suffix_ids)  # [S*B, C] float32

  row = jnp.arange(rows)[:, None]
  scatter_at = jnp.where(inside, positions, length)  # out of range: dropped
  full = jnp.zeros((rows, length), jnp.float32).at[row, scatter_at].set(logps, mode="drop")
  covered = jnp.sum(jnp.take_along_axis(loss_mask, clipped, axis=1) * inside, axis=1)
  fits = covered >= jnp.sum(loss_mask, axis=1)  # [S*B]
  pair_ok = same & jnp.all(fits.reshape(num_sides, batch), axis=0)  # [B]
  return jnp.where(jnp.concatenate([pair_ok] * num_sides)[:, None], full, jnp.nan)
