"""Tokenization, truncation, padding and deterministic batching of preference pairs.

Sequence layout (per pair, chosen and rejected alike)::

    tokens = [bos] + prompt_ids + completion_ids + [eos]     # bos only if the tokenizer has one

Truncation (explicit limits, so the longest possible sequence is known up
front and always fits the largest bucket):

* the prompt segment (bos included) is at most ``max_prompt_len`` tokens; it
  keeps its END (the text right before the answer) and always keeps bos;
* the completion segment (eos included) is at most ``max_completion_len``
  tokens; it keeps its START. A truncated completion therefore loses its eos,
  so the model is never taught to stop where the text did not stop.

Batch arrays (B pairs, T = smallest bucket fitting the longest sequence of
the GLOBAL batch, chosen and rejected padded to the same T, right padding
with ``pad_id``):

* ``chosen_ids`` / ``rejected_ids``: [B, T] int32
* ``chosen_attention_mask`` / ``rejected_attention_mask``: [B, T] int32, 1 on
  real tokens (prompt + completion), 0 on padding
* ``chosen_loss_mask`` / ``rejected_loss_mask``: [B, T] float32, 1 at t iff
  ids[t] is a completion token (eos included): the label positions whose
  log pi(ids[t] | ids[<t]) counts. Always 0 at t = 0, on prompt and padding.
* ``example_id``: [B] int64; eval batches add ``weight``: [B] float32.
* per-pair extras (``TokenizedPair.extras``, see ``PAIR_FIELDS``): a float
  [B] array each, e.g. ``chosen_label`` or ``preference_prob``; per-token
  extras (``TOKEN_FIELDS``, one value per completion token): [B, T] float32,
  aligned with the completion and 0 elsewhere.

A pair may have no rejected side (``rejected=None``: PRIME's sampled
responses, unpaired records); a batch of such pairs has no ``rejected_*`` arrays. A record
of the prompt-only layout (``chosen`` None too) is kept only with
``TokenizeLimits.prompts_only`` (an online run, which samples the responses), as a pair
with an empty ``chosen`` and no ``rejected``.
Unpaired records (``rejected`` None, the label in ``chosen_label``) are refused
unless the loss trains on them (``unpaired``, see ``UNPAIRED_MODES``).

Conversations (records with ``messages``, see ``data.readers``) are rendered with
the tokenizer's chat template when it has one (``data.chat_template``): the prompt
is the prompt messages rendered with ``add_generation_prompt=True``, each
completion is the rest of the whole conversation's rendering, and the ids are
those of the whole rendering (the prompt's ids must be a prefix of them, else
``DataError``), exactly what ``apply_chat_template(tokenize=True)`` gives. The
template writes its own special tokens: no bos is added (a bos the template
writes is kept through prompt truncation), and eos is appended only to a
completion that does not already hold it (Llama 3's ``<|eot_id|>`` does; ChatML's
``<|im_end|>`` does when it is the eos). Without a template they use the text
fields' built-in format, tokenized as text records are.

Two steps, each a function of its inputs only::

    pairs = tokenize(source, tokenizer, TokenizeLimits(...))   # records -> TokenizedPairs
    batches = PreferenceBatcher(pairs, batch_size=..., seed=..., buckets=...)

``tokenize`` is EAGER: the whole split at once, which makes ``num_batches_per_epoch`` and
the dropped/truncated counts exact from the start and keeps ``batch(step)`` cheap and
side-effect free. Batchers take only ``TokenizedPairs``; anything that changes pairs
(T-REG's token rewards, an online round's rows) is a ``pairs -> pairs`` step in between,
and ``data.tokenized_cache`` keeps a tokenized split on disk so a restart skips the first.

Pairs are dropped, and counted in ``SplitStats``, when they carry no
preference signal: chosen and rejected identical as given
(``on_identical_pair="drop"``; ``"error"`` raises ``DataError`` instead), or
identical / unscored after truncation. ``on_long_prompt="drop"`` drops pairs
whose prompt exceeds ``max_prompt_len`` instead of truncating it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterator, Mapping, Sequence

import numpy as np

from absl import logging

from data.chat_template import TemplateRefused
from data.errors import DataError, locate
from data.packing import pack_micro_batches
from data.readers import PAIR_FIELDS, TOKEN_FIELDS, pair_numbers, token_field_side
from data.tokenizer import ByteTokenizer, Tokenizer

_CHUNK = 1024  # records tokenized per encode_batch call
# What to do with a pair whose chosen and rejected are identical, and with a
# prompt over max_prompt_len (config.data.on_identical_pair / on_long_prompt).
IDENTICAL_PAIR_MODES = ("drop", "error")
LONG_PROMPT_MODES = ("truncate", "drop")
# How a loss trains on unpaired records (algorithms.base.Requirements.unpaired; None: it
# needs pairs and refuses them): "all" keeps every response with its label (implicit PRM's
# CE), "desirable" only those labelled true (SFT).
UNPAIRED_MODES = ("all", "desirable")
_PROMPT_ONLY_REFUSED = (
    "a prompt without responses (the prompt-only layout), which only the online losses "
    "(online_dpo, dno, inpo, gpo, prime: `python -m experiments.iterate`) read; this loss "
    "trains on given responses")
_UNPAIRED_REFUSED = (
    "an unpaired record (prompt/completion/label), but this loss trains on preference pairs: "
    "give prompt/chosen/rejected records, or train with loss 'sft' (its desirable "
    "completions) or 'implicit_prm' (prm_objective 'ce')")


@dataclasses.dataclass
class SplitStats:
  """Counts for one tokenized split (all in pairs)."""

  total: int = 0
  kept: int = 0
  dropped: int = 0               # all dropped pairs: the two below + no signal after truncation
  dropped_identical: int = 0     # chosen == rejected as given (on_identical_pair="drop")
  dropped_long_prompt: int = 0   # prompt over max_prompt_len (on_long_prompt="drop")
  dropped_undesirable: int = 0   # unpaired records labelled false (unpaired="desirable")
  truncated_prompt: int = 0      # prompt lost tokens on the left
  truncated_completion: int = 0  # chosen or rejected lost tokens on the right

  def summary(self) -> str:
    """One line for the logs, e.g. '100 pairs: 97 kept, 3 dropped (2 identical, ...)'."""
    after = (self.dropped - self.dropped_identical - self.dropped_long_prompt
             - self.dropped_undesirable)
    undesirable = (f"{self.dropped_undesirable} labelled undesirable, "
                   if self.dropped_undesirable else "")
    return (f"{self.total} pairs: {self.kept} kept, {self.dropped} dropped "
            f"({self.dropped_identical} chosen == rejected, {self.dropped_long_prompt} prompt "
            f"over max_prompt_len, {undesirable}{after} no signal after truncation); "
            f"truncated: {self.truncated_prompt} prompts, {self.truncated_completion} "
            f"completions")


# PAIR_FIELDS (optional numbers of a record, [B] float arrays in batches) and TOKEN_FIELDS
# (per-completion-token extras, [B, T] at the completion positions) are defined with the
# record format, in data.readers.


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
  """One pair after tokenization and truncation; arrays are int32."""

  example_id: int
  prompt: np.ndarray   # [bos] + prompt ids
  chosen: np.ndarray   # completion ids + [eos] (eos absent if truncated)
  rejected: np.ndarray | None  # None for a single response (no pair)
  # PAIR_FIELDS -> float, TOKEN_FIELDS -> float array with one value per completion token.
  extras: Mapping[str, object] = dataclasses.field(default_factory=dict)


def _encode_many(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
  batch = getattr(tokenizer, "encode_batch", None)
  return batch(texts) if batch is not None else [tokenizer.encode(t) for t in texts]


def _check_mode(value: str, modes: Sequence[str], name: str) -> str:
  if value not in modes:
    raise ValueError(f"{name} must be one of {list(modes)}, got {value!r}")
  return value


def _where(source, name: str, index: int, field: str) -> str:
  """Error location of record ``index``: the source's own locator (file and line) if any."""
  find = getattr(source, "locate", None)
  return find(index, field) if callable(find) else locate(name, record=index, field=field)


# Bump when ``tokenize`` gives other pairs or counts for the same records, tokenizer and
# limits: a tokenized split cached by another version is then never read
# (data/tokenized_cache.py).
TOKENIZE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TokenizeLimits:
  """What ``tokenize`` keeps of each record, and which records it keeps.

  ``max_prompt_len`` / ``max_completion_len``: the segments' longest lengths (see the module
  docstring); ``on_identical_pair`` (``IDENTICAL_PAIR_MODES``) and ``on_long_prompt``
  (``LONG_PROMPT_MODES``): what happens to such pairs; ``unpaired``: None refuses unpaired
  records, else one of ``UNPAIRED_MODES``; ``prompts_only``: whether records without
  responses (a prompt set) are kept, as pairs with an empty ``chosen``: only the online
  rounds, which sample the responses, read them.
  """

  max_prompt_len: int
  max_completion_len: int
  on_identical_pair: str = "drop"
  on_long_prompt: str = "truncate"
  unpaired: str | None = None
  prompts_only: bool = False

  def __post_init__(self):
    _check_mode(self.on_identical_pair, IDENTICAL_PAIR_MODES, "on_identical_pair")
    _check_mode(self.on_long_prompt, LONG_PROMPT_MODES, "on_long_prompt")
    if self.unpaired is not None:
      _check_mode(self.unpaired, UNPAIRED_MODES, "unpaired")


@dataclasses.dataclass
class _Tokens:
  """One record's ids before truncation: the prompt's and each completion's."""

  prompt: list[int]
  chosen: list[int]
  rejected: list[int] | None
  templated: bool  # rendered by a chat template, which wrote its own special tokens


class TokenizedPairs(Sequence[TokenizedPair]):
  """A whole split of token ids: the pairs, their pad id, name and counts.

  ``tokenize`` makes one from records; an online round's samples, already ids, are wrapped
  as they are. ``max_prompt_len`` / ``max_completion_len`` bound every pair's segments (the
  limits it was tokenized with; by default the longest of ``pairs``), so a batcher checks
  its buckets against them. ``stats``: the counts of the split the pairs came from
  (default: all of them kept).
  """

  def __init__(self, pairs: Sequence[TokenizedPair], pad_id: int, *,
               source_name: str = "generated pairs", stats: SplitStats | None = None,
               max_prompt_len: int | None = None, max_completion_len: int | None = None):
    self._pairs = list(pairs)
    self.pad_id = int(pad_id)
    self.source_name = source_name
    self.stats = stats or SplitStats(total=len(self._pairs), kept=len(self._pairs))
    longest = lambda side: max((len(getattr(p, side)) for p in self._pairs  # noqa: E731
                                if getattr(p, side) is not None), default=0)
    self.max_prompt_len = longest("prompt") if max_prompt_len is None else max_prompt_len
    self.max_completion_len = (max(longest("chosen"), longest("rejected"))
                               if max_completion_len is None else max_completion_len)

  def with_pairs(self, pairs: Sequence[TokenizedPair]) -> "TokenizedPairs":
    """The same split (name, pad id, counts, limits) holding ``pairs`` instead: what a
    pairs -> pairs step (e.g. T-REG's token rewards) returns."""
    return TokenizedPairs(pairs, self.pad_id, source_name=self.source_name, stats=self.stats,
                          max_prompt_len=self.max_prompt_len,
                          max_completion_len=self.max_completion_len)

  def __len__(self) -> int:
    return len(self._pairs)

  def __getitem__(self, i):  # type: ignore[override]
    return self._pairs[i]

  def length(self, i: int) -> int:
    """Longest of the chosen / rejected sequences of pair ``i``."""
    p = self._pairs[i]
    rejected = 0 if p.rejected is None else len(p.rejected)
    return len(p.prompt) + max(len(p.chosen), rejected)


def name_of(source) -> str:
  """What errors call ``source``: its ``name`` when it has one."""
  return str(getattr(source, "name", "") or "input records")


def tokenize(source, tokenizer: Tokenizer, limits: TokenizeLimits, *,
             source_name: str | None = None) -> TokenizedPairs:
  """A whole split tokenized and truncated to ``limits``; the kept pairs and the counts.

  ``source`` is any sequence (or iterable) of dicts with str ``prompt``, ``chosen``,
  ``rejected`` (None: an unpaired record), optionally ``messages`` (a conversation, see
  ``data.readers``), the numbers of ``PAIR_FIELDS`` and an int ``example_id`` (defaults to
  the record's index). ``source_name`` (default: ``source.name`` if it has one) names it in
  errors; a source with a ``locate(index, field)`` method
  (``data.tfds_builders.PreferenceSource``) is asked for the file and line.
  """
  bos = tokenizer.bos_id
  room = 0 if bos is None else 1
  if limits.max_prompt_len < room or limits.max_completion_len < 1:
    raise ValueError(
        f"need max_prompt_len >= {room} (room for bos) and "
        f"max_completion_len >= 1, got {limits.max_prompt_len}, {limits.max_completion_len}")
  name = source_name or name_of(source)
  where = lambda i, field: _where(source, name, i, field)  # noqa: E731
  eos = int(tokenizer.eos_id)
  stats = SplitStats()
  pairs: list[TokenizedPair] = []
  fields = _FieldPresence()
  it, index = iter(source), 0
  while chunk := list(itertools.islice(it, _CHUNK)):
    for rec, tokens in zip(chunk, _tokenize_chunk(chunk, tokenizer, index, where)):
      fields.note(rec, index)
      stats.total += 1
      fitted, counts = _fit(tokens, rec, limits, bos, eos,
                            lambda field, i=index: where(i, field))
      for count in counts:
        setattr(stats, count, getattr(stats, count) + 1)
      if fitted is not None:
        pairs.append(TokenizedPair(
            int(rec.get("example_id", index)),
            *(None if ids is None else np.asarray(ids, np.int32) for ids in fitted),
            pair_numbers(rec, lambda f, i=index: where(i, f))))
      index += 1
  fields.check(source, name)
  stats.kept = len(pairs)
  return TokenizedPairs(pairs, tokenizer.pad_id, source_name=name, stats=stats,
                        max_prompt_len=limits.max_prompt_len,
                        max_completion_len=limits.max_completion_len)


def _fit(tokens: _Tokens, record: Mapping, limits: TokenizeLimits, bos: int | None,
         eos: int, where) -> tuple[tuple | None, list[str]]:
  """One record cut to ``limits``: ((prompt, chosen, rejected) ids, or None when the record
  is dropped; the ``SplitStats`` counters it adds to). ``where(field)`` locates errors."""
  p, c, r = tokens.prompt, tokens.chosen, tokens.rejected
  if c is None:
    if not limits.prompts_only:
      raise DataError(f"{where('chosen')}: missing: {_PROMPT_ONLY_REFUSED}")
  elif r is None:
    if limits.unpaired is None:
      raise DataError(f"{where('chosen')}: missing: {_UNPAIRED_REFUSED}")
    if limits.unpaired == "desirable" and not record.get("chosen_label", 1.0) > 0.5:
      return None, ["dropped_undesirable", "dropped"]
  # Compared as tokens: equal texts always match, and so do texts the
  # tokenizer's normalizer maps to the same ids (equally signal-free).
  elif list(c) == list(r):
    if limits.on_identical_pair == "error":
      raise DataError(
          f"{where('rejected')}: identical to "
          f"'chosen', so the pair carries no preference; fix the record or set "
          f"config.data.on_identical_pair='drop' to skip such pairs")
    return None, ["dropped_identical", "dropped"]
  counts = []
  head, p = _prompt_head(p, bos, tokens.templated)
  prompt_budget = limits.max_prompt_len - len(head)
  if len(p) > prompt_budget:
    if limits.on_long_prompt == "drop":
      return None, ["dropped_long_prompt", "dropped"]
    counts.append("truncated_prompt")
    p = p[len(p) - prompt_budget:]  # keep the end
  if c is None:  # a prompt alone: kept with an empty completion
    return (head + list(p), [], None), counts
  sides = [_with_eos(x, eos, tokens.templated) for x in (c, r) if x is not None]
  if any(len(x) > limits.max_completion_len for x in sides):
    counts.append("truncated_completion")
  sides = [x[:limits.max_completion_len] for x in sides]  # keep the start
  prompt = head + list(p)
  # Token 0 is never scored, so with an empty prompt and no bos
  # a one-token completion has nothing to learn from.
  scored = [len(x) - (0 if prompt else 1) for x in sides]
  if (len(sides) == 2 and sides[0] == sides[1]) or min(scored) < 1:
    return None, counts + ["dropped"]
  return (prompt, sides[0], sides[1] if len(sides) == 2 else None), counts


def _prompt_head(prompt: list[int], bos: int | None,
                 templated: bool) -> tuple[list[int], list[int]]:
  """(ids prompt truncation always keeps, the rest of the prompt).

  The pipeline's bos for text; for a chat template's rendering only the bos it wrote
  (transformers adds none to a template's text, and neither does this).
  """
  if not templated:
    return ([] if bos is None else [int(bos)]), list(prompt)
  if bos is not None and prompt[:1] == [int(bos)]:
    return [int(bos)], list(prompt[1:])
  return [], list(prompt)


def _with_eos(completion: list[int], eos: int, templated: bool) -> list[int]:
  """The completion followed by eos, unless a chat template's turn already holds it."""
  if templated and eos in completion:
    return list(completion)
  return list(completion) + [eos]


def _tokenize_chunk(chunk: list[Mapping], tokenizer: Tokenizer, start: int,
                    where) -> list[_Tokens]:
  """Ids of each record of ``chunk`` (record ``start`` first); see the module docstring."""
  template = getattr(tokenizer, "chat_template", None)
  if template is None:
    if any(rec.get("messages") for rec in chunk):
      _note_builtin_format(tokenizer)
    return _text_tokens(chunk, tokenizer)
  out: list[_Tokens | None] = [None] * len(chunk)
  texts = [i for i, rec in enumerate(chunk) if not rec.get("messages")]
  for i, tokens in zip(texts, _text_tokens([chunk[i] for i in texts], tokenizer)):
    out[i] = tokens
  conversations = [i for i, rec in enumerate(chunk) if rec.get("messages")]
  templated = _template_tokens([chunk[i] for i in conversations], tokenizer, template,
                               [start + i for i in conversations], where)
  for i, tokens in zip(conversations, templated):
    out[i] = tokens
  return out


def _text_tokens(records: list[Mapping], tokenizer: Tokenizer) -> list[_Tokens]:
  """Prompt and completions of text records, each tokenized on its own."""
  prompts = _encode_many(tokenizer, [r["prompt"] for r in records])

  def encode(side):  # None where a record has no such response
    given = [i for i, r in enumerate(records) if r[side] is not None]
    out: list = [None] * len(records)
    for i, ids in zip(given, _encode_many(tokenizer, [records[i][side] for i in given])):
      out[i] = list(ids)
    return out

  return [_Tokens(list(p), c, r, False)
          for p, c, r in zip(prompts, encode("chosen"), encode("rejected"))]


def _render(template, messages, add_generation_prompt: bool, where: str) -> str:
  try:
    return template.render(messages, add_generation_prompt=add_generation_prompt)
  except TemplateRefused as e:
    raise DataError(f"{where}: the chat template of {template.origin} refused the "
                    f"conversation: {e}") from None


def _first_difference(prefix: Sequence, whole: Sequence) -> int:
  """The first index where `whole` departs from `prefix` (a string or ids)."""
  return next((k for k, (a, b) in enumerate(zip(prefix, whole)) if a != b),
              min(len(prefix), len(whole)))


def _template_tokens(records: list[Mapping], tokenizer: Tokenizer, template,
                     indices: list[int], where) -> list[_Tokens]:
  """Ids of conversations rendered by ``template``: each completion is the whole
  conversation's ids past the prompt's (which must be their prefix)."""
  sides = ("chosen", "rejected")
  prompts, fulls = [], []
  for rec, i in zip(records, indices):
    messages = rec["messages"]
    prompt = _render(template, messages["prompt"], True, where(i, "prompt"))
    prompts.append(prompt)
    for side in sides:
      if messages.get(side) is None:
        continue
      full = _render(template, messages["prompt"] + messages[side], False, where(i, side))
      if not full.startswith(prompt):
        at = _first_difference(prompt, full)
        raise DataError(
            f"{where(i, side)}: the chat template's rendering of the conversation does not "
            f"start with its rendering of the prompt (add_generation_prompt=True): they "
            f"differ at character {at} ({prompt[at:at + 20]!r} vs {full[at:at + 20]!r}), so "
            f"the completion cannot be cut from it")
      fulls.append(full)
  prompt_ids = _encode_many(tokenizer, prompts)
  full_ids = iter(_encode_many(tokenizer, fulls))
  out = []
  for rec, i, p in zip(records, indices, prompt_ids):
    completions = {}
    for side in sides:
      if rec["messages"].get(side) is None:
        completions[side] = None
        continue
      ids = list(next(full_ids))
      if ids[:len(p)] != list(p):
        at = _first_difference(p, ids)
        raise DataError(
            f"{where(i, side)}: the prompt's tokens are not a prefix of the whole "
            f"conversation's tokens (they differ at token {at}), so prompt and completion "
            f"cannot be split at a token boundary; the chat template's generation prompt "
            f"and the completion merge into one token there")
      completions[side] = ids[len(p):]
    out.append(_Tokens(list(p), completions["chosen"], completions["rejected"], True))
  return out


_NOTED_BUILTIN: set[str] = set()


def _note_builtin_format(tokenizer: Tokenizer) -> None:
  """Logs once per tokenizer that conversations use the built-in format (a checkpoint
  without a chat template; the byte-level tokenizer has none to miss)."""
  if isinstance(tokenizer, ByteTokenizer) or repr(tokenizer) in _NOTED_BUILTIN:
    return
  _NOTED_BUILTIN.add(repr(tokenizer))
  logging.info("%r has no chat template (tokenizer_config.json 'chat_template' or "
               "chat_template.jinja): conversations are rendered in the built-in format "
               "'<|role|>\\ncontent\\n' (data/readers.py)", tokenizer)


class _FieldPresence:
  """Which records give each PAIR_FIELD: all of a split's records or none must.

  A field on some records only would reach a batch that mixes both and fail there, mid-run;
  this finds it while the split is read, naming a record with and one without it.
  """

  def __init__(self):
    self.first_with: dict[str, int] = {}
    self.first_without: dict[str, int] = {}

  def note(self, record: Mapping, index: int) -> None:
    for field in PAIR_FIELDS:
      seen = self.first_with if record.get(field) is not None else self.first_without
      seen.setdefault(field, index)

  def check(self, source, source_name: str) -> None:
    for field, with_it in self.first_with.items():
      if field in self.first_without:
        without = self.first_without[field]
        raise DataError(
            f"{_where(source, source_name, without, field)}: missing, but other records "
            f"give it (first: {_where(source, source_name, with_it, field)}); give "
            f"{field} on every record of the split or on none")


def check_buckets(buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
  """Validates bucket lengths: ascending, positive, largest fits ``max_len``."""
  b = tuple(int(x) for x in buckets)
  if not b or any(x <= 0 for x in b) or list(b) != sorted(set(b)):
    raise ValueError(f"buckets must be strictly ascending positive lengths, got {buckets}")
  if b[-1] < max_len:
    raise ValueError(f"largest bucket {b[-1]} < max_prompt_len + max_completion_len "
                     f"= {max_len}; a sequence might not fit")
  return b


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n."""
  for b in buckets:
    if b >= n:
      return b
  raise ValueError(f"sequence length {n} exceeds the largest bucket {buckets[-1]}")


def collate(pairs: Sequence[TokenizedPair], length: int, pad_id: int) -> dict:
  """Right-padded batch arrays (see the module docstring) of padded length ``length``."""
  B = len(pairs)
  out = {"example_id": np.asarray([p.example_id for p in pairs], np.int64)}
  sides = ("chosen",) if all(p.rejected is None for p in pairs) else ("chosen", "rejected")
  for side in sides:
    ids = np.full((B, length), pad_id, np.int32)
    attn = np.zeros((B, length), np.int32)
    loss = np.zeros((B, length), np.float32)
    for row, p in enumerate(pairs):
      completion = getattr(p, side)
      if completion is None:
        raise ValueError(f"pair {p.example_id} has no {side} side but others in its batch do")
      n_prompt, n = len(p.prompt), len(p.prompt) + len(completion)
      ids[row, :n_prompt] = p.prompt
      ids[row, n_prompt:n] = completion
      attn[row, :n] = 1
      loss[row, n_prompt:n] = 1.0
    loss[:, 0] = 0.0  # nothing predicts token 0
    out[f"{side}_ids"] = ids
    out[f"{side}_attention_mask"] = attn
    out[f"{side}_loss_mask"] = loss
  for field in PAIR_FIELDS:
    if any(field in p.extras for p in pairs):
      out[field] = np.asarray([_extra(p, field) for p in pairs], np.float32)
  for field in TOKEN_FIELDS:
    if any(field in p.extras for p in pairs):
      side = token_field_side(field)
      values = np.zeros((B, length), np.float32)
      for row, p in enumerate(pairs):
        start = len(p.prompt)
        token_values = np.asarray(_extra(p, field), np.float32)
        values[row, start:start + len(token_values)] = token_values
      out[field] = values * out[f"{side}_loss_mask"]
  return out


def _extra(pair: TokenizedPair, field: str):
  if field not in pair.extras:
    raise ValueError(f"pair {pair.example_id} lacks {field!r} but others in its batch have it")
  return pair.extras[field]


def left_pad(batch: Mapping[str, np.ndarray]) -> dict:
  """Converts a right-padded batch to left padding (same T, same content).

  Each row is rotated right by its padding amount, which moves the pad
  tokens (and their zero masks) to the front. Other keys are copied.
  """
  out = dict(batch)
  for side in ("chosen", "rejected"):
    if f"{side}_ids" not in batch:
      continue
    attn = np.asarray(batch[f"{side}_attention_mask"])
    B, T = attn.shape
    lengths = attn.sum(axis=1)
    positions = np.arange(T)[None, :]
    if not np.array_equal(attn, (positions < lengths[:, None]).astype(attn.dtype)):
      raise ValueError(f"{side}_attention_mask is not right-padded")
    index = (positions - (T - lengths)[:, None]) % T
    names = [f"{side}_{key}" for key in ("ids", "attention_mask", "loss_mask")]
    names += [f for f in TOKEN_FIELDS if token_field_side(f) == side and f in batch]
    for name in names:
      out[name] = np.take_along_axis(np.asarray(batch[name]), index, axis=1)
  return out


# --------------------------------------------------------------------------
# Deterministic shuffling


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer on uint64 arrays (wrapping arithmetic)."""
  x = np.asarray(x, np.uint64)
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """A permutation of range(n) that depends only on (n, seed, epoch).

  Hand-rolled (hash keys + stable argsort) instead of numpy's Generator so
  the order, and thus resuming a run by step number, cannot change with
  a numpy upgrade.
  """
  h = _mix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
  h = _mix64(h ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF))
  with np.errstate(over="ignore"):
    keys = _mix64(h ^ (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
  return np.argsort(keys, kind="stable")


def _local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} / process_count={process_count}")
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by "
                     f"process_count {process_count}")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


class PreferenceBatcher:
  """Deterministic, resumable training batches over tokenized pairs.

  Global batch ``step`` comes from the permutation of epoch
  ``step // num_batches_per_epoch``, which depends on (seed, epoch) only, so
  any step can be produced directly: resuming needs just the step number.
  Each process gets the contiguous ``process_index``-th 1/process_count
  slice of the global batch; the padded length T is computed over the
  global batch so all processes agree on shapes.

  ``drop_remainder=False`` keeps every example: the last batch of an epoch
  is completed with examples from the start of the same epoch's order (so
  shapes stay static; those few examples are seen twice that epoch).
  ``pack_rows`` > 0 packs each batch's sequences into
  that many rows when they fit (``data/packing.py``): each process's slice
  into its share of the rows, each of the step's ``grad_accum_steps``
  micro-batches on its own, and only when every process's slice fits.
  """

  def __init__(self, pairs: TokenizedPairs, *, batch_size: int, seed: int,
               buckets: Sequence[int], shuffle: bool = True, drop_remainder: bool = True,
               process_index: int = 0, process_count: int = 1, pack_rows: int = 0,
               grad_accum_steps: int = 1):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.pack_rows = int(pack_rows)
    self.grad_accum_steps = int(grad_accum_steps)
    self.process_index, self.process_count = process_index, process_count
    if self.pack_rows % (process_count * self.grad_accum_steps):
      raise ValueError(f"pack_rows={pack_rows} must divide into process_count="
                       f"{process_count} x grad_accum_steps={grad_accum_steps} parts")
    self._local = _local_slice(batch_size, process_index, process_count)
    self.buckets = check_buckets(buckets, pairs.max_prompt_len + pairs.max_completion_len)
    self.pairs = pairs
    self.batch_size = batch_size
    self.local_batch_size = batch_size // process_count
    self.seed = int(seed)
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    n = len(self.pairs)
    if n == 0 or (drop_remainder and n < batch_size):
      raise DataError(f"{self.pairs.source_name}: only {n} usable pairs, fewer than "
                      f"batch_size {batch_size} ({self.stats.summary()})")
    self.num_batches_per_epoch = (n // batch_size if drop_remainder
                                  else math.ceil(n / batch_size))
    self._perm_cache: dict[int, np.ndarray] = {}

  @property
  def stats(self) -> SplitStats:
    return self.pairs.stats

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._perm_cache:
      n = len(self.pairs)
      order = (epoch_permutation(n, self.seed, epoch) if self.shuffle
               else np.arange(n))
      self._perm_cache = {epoch: order}  # one epoch at a time is enough
    return self._perm_cache[epoch]

  def global_indices(self, step: int) -> np.ndarray:
    """Indices into ``self.pairs`` of global batch ``step``."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, j = divmod(int(step), self.num_batches_per_epoch)
    order = self._order(epoch)
    positions = (j * self.batch_size + np.arange(self.batch_size)) % len(order)
    return order[positions]

  def batch(self, step: int) -> dict:
    """This process's slice of global batch ``step``."""
    idx = self.global_indices(step)
    length = bucket_length(max(self.pairs.length(i) for i in idx), self.buckets)
    local = [self.pairs[i] for i in idx[self._local]]
    batch = collate(local, length, self.pairs.pad_id)
    if self.pack_rows:
      # data/packing.py; a batch that does not fit stays unpacked.
      return self._packed(batch, idx, length) or batch
    return batch

  def _packed(self, batch: dict, idx: np.ndarray, length: int) -> dict | None:
    """This process's slice packed into pack_rows / process_count rows, or None.

    Every process must hand the step the same arrays, so each one packs every process's
    slice and packs only if all fit. The global packed rows are the processes' rows in
    process order, so this slice's flat indices move by its rows' offset within each
    micro-batch: process p's rows r·K + j are micro-batch j's rows p·R/K + r (R rows per
    process, K micro-batches).
    """
    rows = self.pack_rows // self.process_count
    k = self.grad_accum_steps
    if self.process_count > 1:
      local = len(idx) // self.process_count
      for p in range(self.process_count):
        if p == self.process_index:
          continue
        other = collate([self.pairs[i] for i in idx[p * local:(p + 1) * local]], length,
                        self.pairs.pad_id)
        if pack_micro_batches(other, rows, k) is None:
          return None
    packed = pack_micro_batches(batch, rows, k)
    if packed is None or self.process_index == 0:
      return packed
    offset = self.process_index * (rows // k) * length
    for key in packed.keys() - batch.keys():
      if key.endswith("_packed_index"):
        packed[key] = np.where(packed[key] >= 0, packed[key] + offset, -1).astype(np.int32)
    return packed

  def __iter__(self) -> Iterator[dict]:
    """Endless batches from step 0; use ``batch(step)`` to resume elsewhere."""
    return (self.batch(step) for step in itertools.count())


class EvalBatches:
  """In-order batches over a whole tokenized split, each example exactly once.

  The last global batch is completed with repeats of the first examples
  carrying ``weight`` 0 (real rows have 1), so weighted averages are exact
  and shapes stay static. Re-iterable; ``len()`` is the number of batches.
  """

  def __init__(self, pairs: TokenizedPairs, *, batch_size: int, buckets: Sequence[int],
               process_index: int = 0, process_count: int = 1):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self._local = _local_slice(batch_size, process_index, process_count)
    self.buckets = check_buckets(buckets, pairs.max_prompt_len + pairs.max_completion_len)
    self.pairs = pairs
    self.batch_size = batch_size
    if len(self.pairs) == 0:
      raise DataError(f"{self.pairs.source_name}: no usable pairs to evaluate "
                      f"({self.stats.summary()})")

  @property
  def stats(self) -> SplitStats:
    return self.pairs.stats

  def __len__(self) -> int:
    return math.ceil(len(self.pairs) / self.batch_size)

  def __iter__(self) -> Iterator[dict]:
    n = len(self.pairs)
    for j in range(len(self)):
      positions = j * self.batch_size + np.arange(self.batch_size)
      weight = (positions < n).astype(np.float32)
      idx = positions % n
      length = bucket_length(max(self.pairs.length(i) for i in idx), self.buckets)
      batch = collate([self.pairs[i] for i in idx[self._local]], length,
                      self.pairs.pad_id)
      batch["weight"] = weight[self._local]
      yield batch
