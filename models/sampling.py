"""Batched temperature / nucleus sampling with a KV cache, jitted once per shape.

Used by the online algorithms (DNO, INPO, GPO, PRIME) to draw K responses per prompt
from the current policy. One call runs, inside a single `jax.jit`:

  1. prefill: one forward over the whole prompt [B, P], which fills a KV cache of
     P + max_new_tokens - 1 slots per layer (`Transformer.cached_hidden_states`);
  2. decode: a `jax.lax.while_loop` that feeds one token per step and samples the
     next one, until `max_new_tokens` or until every row has emitted eos.

Positions follow training exactly (`models.llama.default_positions`): a prompt's first
real token has position 0 whatever its padding, and completion token i has position
n_b + i where n_b = sum(prompt_mask[b]). So re-scoring `concat(prompt, tokens)` with
mask `concat(prompt_mask, completion_mask)` through the training forward
(`training.logprobs.token_logps`) gives back the sampler's `logps` (float32 ~1e-6).

Per step, from float32 logits z [B, V] (Holtzman et al. 2020, "The Curious Case of
Neural Text Degeneration", Sec. 3.1, for the nucleus):

  temperature τ > 0:  z' = z / τ
  top-p:              keep the smallest set of most likely tokens whose probability
                      under softmax(z') reaches p (the most likely token always stays);
                      all others get z' = -inf
  token               ~ Categorical(softmax(z'))          (τ == 0: argmax z, greedy)
  logps               = log softmax(z)[token]             (the *model's* log-prob, τ = 1,
                                                           no filtering; see `sample`)

A row stops after its first eos: the eos token is part of the completion (mask 1), every
later slot is `pad_id` with mask 0 and logp 0.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.llama import default_positions


# ----------------------------------------------------------------------------
# Per-step token choice.


_SIGN = np.uint32(0x80000000)


def _order_key(x):
  """float32 -> uint32 with the same order (-inf < ... < -0 < +0 < ... < inf)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits & _SIGN, ~bits, bits | _SIGN)


def _from_order_key(k):
  """The inverse of `_order_key`."""
  return jax.lax.bitcast_convert_type(jnp.where(k & _SIGN, k & ~_SIGN, ~k), jnp.float32)


def top_p_filter(logits, top_p):
  """Nucleus filter: logits [B, V] float32, top_p scalar in (0, 1] -> [B, V].

  A token is kept iff the probability mass of the tokens strictly more likely than it is
  below top_p, i.e. the smallest prefix of the sorted distribution whose mass reaches
  top_p; the most likely token is always kept. Ties at the cut-off logit are all kept.
  Dropped tokens get -inf.

  No sort: the cut-off c* = min{z : M(z) < top_p}, M(c) = sum of softmax(logits) over
  logits > c, is found by bisection over the 2^32 float32 values in order (`_order_key`;
  M is non-increasing, so 32 halvings of [min z, max z] end on c* exactly, and c* is
  one of the row's logits). On XLA:CPU a [16, 1024] sort cost ~3 ms per decode step; the
  32 masked sums cost ~0.4 ms.
  """
  probs = jax.nn.softmax(logits, axis=-1)

  def mass_above(cut):  # [B] -> [B], M(cut) per row
    return jnp.sum(jnp.where(logits > cut[:, None], probs, 0.0), axis=-1)

  def halve(_, bounds):
    # Invariant: M(lo) >= top_p or lo is below every logit; M(hi) < top_p.
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    inside = mass_above(_from_order_key(mid)) < top_p
    return jnp.where(inside, lo, mid), jnp.where(inside, mid, hi)

  lo = _order_key(jnp.min(logits, axis=-1)) - 1  # a finite logit's key is never 0
  hi = _order_key(jnp.max(logits, axis=-1))  # M(max) = 0 < top_p
  _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  cutoff = _from_order_key(hi)[:, None]
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


def _inverse_cdf(key, logits):
  """One draw per row of Categorical(softmax(logits)) [B, V] -> [B] int32.

  One uniform u in (0, 1] per row and the first token whose cumulative mass reaches
  u * total: the same distribution as `jax.random.categorical` (Gumbel-max), which draws
  B * V random numbers per step instead of B (~0.3 ms of a decode step at V = 1024).
  Tokens of probability 0 (-inf logits) are never chosen: the cumulative mass does not
  rise there and u * total > 0.
  """
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  cumulative = jnp.cumsum(weights, axis=-1)  # [B, V]
  u = 1.0 - jax.random.uniform(key, (logits.shape[0], 1))  # (0, 1]
  index = jnp.sum(cumulative < u * cumulative[:, -1:], axis=-1)
  return jnp.minimum(index, logits.shape[-1] - 1).astype(jnp.int32)


def choose_tokens(logits, key, temperature, top_p):
  """logits [B, V] float32 -> (tokens [B] int32, model log-probs [B] float32).

  temperature and top_p are traced scalars (changing them does not recompile):
  temperature <= 0 is greedy; top_p >= 1 skips the filter. Both are run-time branches
  (`lax.cond`), so a greedy step does no random draw and no filter.
  """
  logits = logits.astype(jnp.float32)

  def greedy(_):
    # The first index of the row's maximum, as jnp.argmax, from two plain reductions:
    # argmax's (value, index) reduction ran ~3x slower per decode step on XLA:CPU.
    top = jnp.max(logits, axis=-1, keepdims=True)
    index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(logits == top, index, logits.shape[-1]), axis=-1)

  def draw(_):
    scaled = logits / temperature
    scaled = jax.lax.cond(top_p < 1.0, top_p_filter, lambda z, _: z, scaled, top_p)
    return _inverse_cdf(key, scaled)

  tokens = jax.lax.cond(temperature > 0, draw, greedy, None)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  logps = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
  return tokens, logps


def _is_eos(tokens, eos_ids: tuple[int, ...]):
  """tokens [B] -> [B] bool, True where the token is one of eos_ids."""
  return jnp.any(tokens[:, None] == jnp.asarray(eos_ids, jnp.int32)[None, :], axis=-1)


# ----------------------------------------------------------------------------
# The jitted sampler.


@functools.partial(
    jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'eos_ids', 'pad_id'))
def _sample_jit(graphdef, states, prompt_ids, prompt_mask, key, temperature, top_p, *,
                max_new_tokens: int, eos_ids: tuple[int, ...], pad_id: int):
  """The whole sampler (see `sample`); graphdef and the three ints are static."""
  model = nnx.merge(graphdef, *states)
  b, p = prompt_ids.shape
  m = max_new_tokens
  prompt_mask = prompt_mask.astype(jnp.int32)
  num_real = jnp.sum(prompt_mask, axis=-1)  # [B]

  # Slots [0, P) hold the prompt, slot P + i - 1 holds completion token i - 1 (fed at
  # step i). The last sampled token is never fed, hence P + M - 1 slots.
  cache_len = p + m - 1
  cache = model.init_cache(b, cache_len)
  key_mask = jnp.concatenate([prompt_mask, jnp.ones((b, m - 1), jnp.int32)], axis=1)

  # Prefill. The next-token logits come from each row's last real prompt token (the last
  # slot under left padding; any padding side works since pad keys are masked).
  positions = default_positions(prompt_ids, prompt_mask)
  hidden, cache = model.cached_hidden_states(
      prompt_ids, positions=positions, cache=cache, index=0, key_mask=key_mask)
  last = (p - 1) - jnp.argmax(prompt_mask[:, ::-1], axis=-1)  # [B] last real slot
  last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
  logits = model.unembed(last_hidden)  # [B, V] float32

  tokens = jnp.full((b, m), pad_id, jnp.int32)
  masks = jnp.zeros((b, m), jnp.int32)
  logps = jnp.zeros((b, m), jnp.float32)

  def emit(step, logits, done, tokens, masks, logps):
    """Chooses token `step` for rows not yet done and writes it to the outputs."""
    tok, lp = choose_tokens(logits, jax.random.fold_in(key, step), temperature, top_p)
    tok = jnp.where(done, pad_id, tok)
    lp = jnp.where(done, 0.0, lp)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, step))
    masks = jax.lax.dynamic_update_slice(
        masks, (~done).astype(jnp.int32)[:, None], (0, step))
    logps = jax.lax.dynamic_update_slice(logps, lp[:, None], (0, step))
    return tok, done | _is_eos(tok, eos_ids), tokens, masks, logps

  done = jnp.zeros((b,), bool)
  tok, done, tokens, masks, logps = emit(0, logits, done, tokens, masks, logps)

  def cond(carry):
    step, _, done, *_ = carry
    return (step < m) & ~jnp.all(done)

  def body(carry):
    step, cache, done, tok, tokens, masks, logps = carry
    # Feed token step-1 at slot P + step - 1, position n_b + step - 1.
    hidden, cache = model.cached_hidden_states(
        tok[:, None], positions=(num_real + step - 1)[:, None], cache=cache,
        index=p + step - 1, key_mask=key_mask)
    logits = model.unembed(hidden[:, 0])  # [B, V]
    tok, done, tokens, masks, logps = emit(step, logits, done, tokens, masks, logps)
    return step + 1, cache, done, tok, tokens, masks, logps

  carry = (jnp.asarray(1, jnp.int32), cache, done, tok, tokens, masks, logps)
  *_, tokens, masks, logps = jax.lax.while_loop(cond, body, carry)
  return tokens, masks, logps


def _split_model(model) -> tuple[Any, tuple[Any, ...]]:
  """A Transformer, or (graphdef, state, ...) from nnx.split -> (graphdef, states)."""
  if isinstance(model, nnx.Module):
    graphdef, *states = nnx.split(model)
    return graphdef, tuple(states)
  if isinstance(model, (tuple, list)) and len(model) >= 2:
    return model[0], tuple(model[1:])
  raise TypeError('model must be an nnx Module or a (graphdef, state, ...) tuple from '
                  f'nnx.split, got {type(model).__name__}.')


def _eos_tuple(eos_id) -> tuple[int, ...]:
  ids = (eos_id,) if isinstance(eos_id, (int, np.integer)) else tuple(eos_id)
  if not ids:
    raise ValueError('eos_id must be an int or a non-empty sequence of ints.')
  return tuple(int(i) for i in ids)


def _check_concrete_inputs(prompt_ids, prompt_mask):
  """Shape checks, and (outside a trace) that every row has a real prompt token."""
  if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
    raise ValueError('prompt_ids and prompt_mask must both be [B, P], got '
                     f'{prompt_ids.shape} and {prompt_mask.shape}.')
  if isinstance(prompt_mask, jax.core.Tracer) or not prompt_mask.is_fully_addressable:
    return  # traced, or a global array with rows on other hosts (the caller's to check)
  empty = np.flatnonzero(np.asarray(prompt_mask).sum(axis=-1) == 0)
  if empty.size:
    raise ValueError(f'prompt rows {empty.tolist()} have no real token (prompt_mask all '
                     '0); a completion needs at least one conditioning token (e.g. bos).')


def sample(model, prompt_ids, prompt_mask, *, key, max_new_tokens: int,
           temperature: float = 1.0, top_p: float = 1.0, eos_id, pad_id: int):
  """Samples a completion for each row of a (left-)padded prompt batch.

  Args:
    model: a `models.Transformer`, or `(graphdef, state, ...)` from `nnx.split`.
    prompt_ids: [B, P] int prompt tokens, left-padded (any padding works: keys are
      masked and positions count real tokens only). numpy, or a jax array laid out as
      the caller wants the rows split, e.g. over a mesh's batch axes (on several hosts:
      a global array, and the outputs are global arrays laid out alike).
    prompt_mask: [B, P], 1 on real prompt tokens, 0 on padding; >= 1 real token a row.
    key: a `jax.random` key; the same key gives the same samples.
    max_new_tokens: M, the completion length (static).
    temperature: sampling temperature; 0 means greedy (argmax). Traced: changing it
      does not recompile.
    top_p: nucleus mass in (0, 1]; 1 disables the filter. Traced.
    eos_id: an int or a sequence of ints (e.g. Llama 3's several eos tokens).
    pad_id: the token written after a row's eos.

  Returns:
    tokens [B, M] int32: sampled ids; `pad_id` after the first eos.
    completion_mask [B, M] int32: 1 up to and including the first eos, then 0.
    logps [B, M] float32: log pi(token_i | prompt, token_<i) under the *model*
      (temperature 1, no top-p), 0 under mask 0; what the training forward gives when
      re-scoring the sample, whatever temperature/top_p drew it.
  """
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be an int >= 1, got {max_new_tokens!r}.')
  if not isinstance(top_p, jax.core.Tracer) and not 0.0 < float(top_p) <= 1.0:
    raise ValueError(f'top_p must be in (0, 1], got {top_p!r}.')
  if not isinstance(temperature, jax.core.Tracer) and not float(temperature) >= 0.0:
    raise ValueError(f'temperature must be >= 0, got {temperature!r}.')
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
  _check_concrete_inputs(prompt_ids, prompt_mask)
  graphdef, states = _split_model(model)
  return _sample_jit(
      graphdef, states, prompt_ids, prompt_mask, key,
      jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
      max_new_tokens=int(max_new_tokens), eos_ids=_eos_tuple(eos_id), pad_id=int(pad_id))


# ----------------------------------------------------------------------------
# Text in, text out.


def encode_prompts(tokenizer, prompts: Sequence[str], *, num_samples: int = 1,
                   prompt_length: int | None = None, pad_multiple: int = 16):
  """Tokenises prompts as the pipeline does ([bos] + ids) and left-pads them.

  Each prompt is repeated num_samples (K) times, grouped: rows i*K .. i*K+K-1 are
  prompt i. The padded length is `prompt_length` if given (longer prompts keep their
  end, as the pipeline truncates), else the longest prompt rounded up to
  `pad_multiple` (fewer distinct shapes, so fewer compilations).

  Returns:
    (ids [len(prompts) * K, P] int32, mask [len(prompts) * K, P] int32), numpy.
  """
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}.')
  bos = tokenizer.bos_id
  prefix = [] if bos is None else [int(bos)]
  if prompt_length is not None and prompt_length < max(len(prefix), 1):
    raise ValueError(f'prompt_length={prompt_length} leaves no room for a prompt token.')
  encoded = []
  for text in prompts:
    ids = list(tokenizer.encode(text))
    if prompt_length is not None:
      budget = prompt_length - len(prefix)
      ids = ids[max(len(ids) - budget, 0):]  # keep the end, like the pipeline
    encoded.append(prefix + ids)
  if prompt_length is None:
    longest = max([len(s) for s in encoded] + [1])
    prompt_length = -(-longest // pad_multiple) * pad_multiple
  ids = np.full((len(encoded), prompt_length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(encoded), prompt_length), np.int32)
  for row, seq in enumerate(encoded):
    if seq:
      ids[row, prompt_length - len(seq):] = seq
      mask[row, prompt_length - len(seq):] = 1
  return np.repeat(ids, num_samples, axis=0), np.repeat(mask, num_samples, axis=0)


def decode_completions(tokenizer, tokens, completion_mask,
                       eos_ids: Sequence[int] = ()) -> list[str]:
  """[B, M] sampled tokens -> B strings: the masked tokens, cut before the first eos."""
  stop = set(int(i) for i in eos_ids) | {int(tokenizer.eos_id)}
  texts = []
  for row, row_mask in zip(np.asarray(tokens), np.asarray(completion_mask)):
    ids = []
    for tok, keep in zip(row.tolist(), row_mask.tolist()):
      if not keep or tok in stop:
        break
      ids.append(tok)
    texts.append(tokenizer.decode(ids))
  return texts


def _default_eos(model, tokenizer) -> tuple[int, ...]:
  """The tokenizer's eos plus any eos ids the model config lists (Llama 3 has several)."""
  ids = [int(tokenizer.eos_id)]
  cfg_eos = getattr(getattr(model, 'config', None), 'eos_token_id', None)
  if cfg_eos is not None:
    ids += list(_eos_tuple(cfg_eos))
  return tuple(dict.fromkeys(ids))


def sample_texts(model, tokenizer, prompts: Sequence[str], *, key, num_samples: int,
                 max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 eos_id=None, prompt_length: int | None = None) -> list[list[str]]:
  """K sampled completions (text) per prompt: result[i][j] is sample j of prompt i.

  `model` must be a `models.Transformer` here (its config supplies extra eos ids);
  eos_id defaults to the tokenizer's eos plus `model.config.eos_token_id`.
  See `encode_prompts` for tokenisation and `sample` for the rest.
  """
  if not prompts:
    return []
  eos = _default_eos(model, tokenizer) if eos_id is None else _eos_tuple(eos_id)
  ids, mask = encode_prompts(tokenizer, prompts, num_samples=num_samples,
                             prompt_length=prompt_length)
  tokens, completion_mask, _ = sample(
      model, ids, mask, key=key, max_new_tokens=max_new_tokens, temperature=temperature,
      top_p=top_p, eos_id=eos, pad_id=tokenizer.pad_id)
  texts = decode_completions(tokenizer, tokens, completion_mask, eos)
  k = num_samples
  return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]
