"""T-REG's token-level rewards by contrastive prompting, computed once before training.

Zhou et al. 2025 (T-REG, arXiv 2412.02685; the formula from a secondary summary, the
official code was not available to check): the reference model π_eval scores
the SAME response tokens after two revisions of the prompt, one asking for a better and
one for a worse answer, and

    r̂_t = σ( log π_eval(y_t | x_better, y_<t) − log π_eval(y_t | x_worse, y_<t) ) − ½.

The response's token ids are spliced after each prompt variant unchanged (re-tokenizing
prompt + response text could move token boundaries, and then r̂ would not line up with
the tokens the policy is trained on). The variants put `config.t_reg.better_prefix` /
`worse_prefix` before the prompt text, after bos.

The rewards travel with each pair as `chosen_token_rewards` / `rejected_token_rewards`
(data.pipeline.TOKEN_FIELDS), so every batch carries them [B, T], aligned with its ids.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from algorithms.t_reg import contrastive_token_rewards
from data.pipeline import TokenizedPair, TokenizedPairs, collate
from training.step import pair_logps

_CHUNK = 64  # pairs per forward pass


def _with_prefix(pair: TokenizedPair, prefix: list[int], num_special: int) -> TokenizedPair:
  prompt = np.concatenate([pair.prompt[:num_special], np.asarray(prefix, np.int32),
                           pair.prompt[num_special:]])
  return dataclasses.replace(pair, prompt=prompt)


def _completion_logps(logps: np.ndarray, pairs, side: str) -> list[np.ndarray]:
  """Per pair, the log-probs of the `side` completion's tokens (rows of [B, T])."""
  out = []
  for row, p in enumerate(pairs):
    start = len(p.prompt)
    out.append(logps[row, start:start + len(getattr(p, side))])
  return out


def add_token_rewards(pairs: TokenizedPairs, graphdef, ref_params, tokenizer,
                      config) -> TokenizedPairs:
  """`pairs` with T-REG's r̂ for every chosen and rejected completion token: a pairs -> pairs
  step, applied before the batchers are built (`training.experiment.build`)."""
  prefixes = {"better": tokenizer.encode(config.t_reg.better_prefix),
              "worse": tokenizer.encode(config.t_reg.worse_prefix)}
  num_special = 0 if tokenizer.bos_id is None else 1
  # One padded length for every chunk: the scoring forward compiles once.
  length = max(pairs.length(i) for i in range(len(pairs))) + max(map(len, prefixes.values()))
  logps_fn = jax.jit(lambda p, b: pair_logps(graphdef, p, b))
  out = []
  for start in range(0, len(pairs), _CHUNK):
    chunk = [pairs[i] for i in range(start, min(start + _CHUNK, len(pairs)))]
    scored = {}
    for name, prefix in prefixes.items():
      variants = [_with_prefix(p, prefix, num_special) for p in chunk]
      variants += variants[-1:] * (_CHUNK - len(variants))  # static batch shape
      chosen, rejected = jax.device_get(
          logps_fn(ref_params, collate(variants, length, pairs.pad_id)))
      scored[name] = (_completion_logps(chosen, variants, "chosen"),
                      _completion_logps(rejected, variants, "rejected"))
    rewards = {side: _rewards(scored["better"][i], scored["worse"][i])
               for i, side in enumerate(("chosen", "rejected"))}
    for n, pair in enumerate(chunk):
      extras = dict(pair.extras, **{f"{side}_token_rewards": rewards[side][n]
                                    for side in rewards})
      out.append(dataclasses.replace(pair, extras=extras))
  return pairs.with_pairs(out)


def _rewards(better: list[np.ndarray], worse: list[np.ndarray]) -> list[np.ndarray]:
  """Per completion, r̂ of its tokens: one `contrastive_token_rewards` call on the chunk's
  completions padded to a common length, cut back to each completion's own length."""
  lengths = [len(b) for b in better]
  width = max(lengths)
  mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
  pad = lambda rows: np.stack([np.pad(r, (0, width - len(r))) for r in rows])  # noqa: E731
  values = np.asarray(contrastive_token_rewards(pad(better), pad(worse),
                                                mask.astype(np.float32)), np.float32)
  return [values[n, :length] for n, length in enumerate(lengths)]
