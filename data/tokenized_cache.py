"""Tokenized splits cached as array_record (TFDS, no TensorFlow): a restart does not tokenize.

    pairs = load_tokenized(source, tokenizer, limits, data_dir)

The first call tokenizes ``source`` (``data.pipeline.tokenize``: its ``DataError``, naming
file, line, record and field, surfaces there, and nothing is written) and writes the pairs
with their counts (``SplitStats``, in the entry's ``metadata.json``, so the logged counts
stay the same) to ``data_dir/tokenized_preferences/<fingerprint>/``; a later call with the
same fingerprint reads them back instead. The fingerprint hashes everything the ids depend
on: the prepared text split (``PreferenceSource.fingerprint``: its builder config hashes the
files' bytes or names every synthetic setting), the tokenizer's ``fingerprint()`` (its files,
chat template included, special ids and library versions), the ``TokenizeLimits`` and
``pipeline.TOKENIZE_VERSION``. A change of any of them is a new entry, so a stale one is never
read. A source or tokenizer that cannot say what it is (records in memory, a tokenizer
without ``fingerprint``) is tokenized on every call.

Each stored example is a block of up to ``_BLOCK`` pairs: their example ids, segment
lengths, concatenated token ids and ``PAIR_FIELDS`` (NaN: not given), as raw byte buffers.
TFDS's cost is per example: decoding the text cache's records, one each, is most of the
0.5 s the tiny preset's 4096 pairs take to tokenize, so one stored example per pair would
make a restart little faster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data import pipeline, tfds_builders
from data.pipeline import SplitStats, TokenizedPair, TokenizedPairs, TokenizeLimits
from data.readers import PAIR_FIELDS

_SPLIT = "pairs"
_BLOCK = 1024  # pairs per stored example
_NO_REJECTED = -1  # the rejected length stored for a single response (no rejected side)


def fingerprint(source, tokenizer, limits: TokenizeLimits) -> str | None:
  """The cache key of ``source`` tokenized by ``tokenizer`` under ``limits``: a hash of what
  the pairs depend on, or None when the source or the tokenizer cannot say what it is."""
  of_source = getattr(source, "fingerprint", "")
  of_tokenizer = getattr(tokenizer, "fingerprint", None)
  if not of_source or of_tokenizer is None:
    return None
  key = json.dumps({"source": of_source, "tokenizer": of_tokenizer(),
                    "limits": dataclasses.asdict(limits),
                    "tokenize_version": pipeline.TOKENIZE_VERSION}, sort_keys=True)
  return hashlib.sha256(key.encode()).hexdigest()[:24]


def _features() -> tfds.features.FeaturesDict:
  """One block of pairs; ``lengths`` [n, 3] holds each pair's prompt, chosen and rejected
  lengths, ``tokens`` their ids one after the other in that order."""
  raw = tfds.features.Encoding.BYTES  # a raw buffer: no per-value protobuf varints to decode
  return tfds.features.FeaturesDict({
      "example_id": tfds.features.Tensor(shape=(None,), dtype=np.int64, encoding=raw),
      "lengths": tfds.features.Tensor(shape=(None, 3), dtype=np.int32, encoding=raw),
      "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=raw),
      "numbers": tfds.features.Tensor(shape=(None, len(PAIR_FIELDS)), dtype=np.float64,
                                      encoding=raw),
  })


def to_block(pairs: list[TokenizedPair]) -> dict:
  """Pairs (at least one) as one stored example (see ``_features``)."""
  sides = lambda p: [p.prompt, p.chosen] + ([] if p.rejected is None else [p.rejected])  # noqa
  return {
      "example_id": np.asarray([p.example_id for p in pairs], np.int64),
      "lengths": np.asarray([[len(p.prompt), len(p.chosen),
                              _NO_REJECTED if p.rejected is None else len(p.rejected)]
                             for p in pairs], np.int32),
      "tokens": np.concatenate([np.asarray(x, np.int32) for p in pairs for x in sides(p)]),
      "numbers": np.asarray([[p.extras.get(f, np.nan) for f in PAIR_FIELDS] for p in pairs],
                            np.float64),
  }


def from_block(block: dict) -> list[TokenizedPair]:
  """The pairs of one stored example, as ``to_block`` got them."""
  lengths = np.asarray(block["lengths"])
  ends = np.cumsum(np.maximum(lengths, 0).reshape(-1))
  segments = np.split(np.asarray(block["tokens"], np.int32), ends[:-1])
  out = []
  for row, (example_id, numbers) in enumerate(zip(block["example_id"], block["numbers"])):
    prompt, chosen, rejected = segments[3 * row:3 * row + 3]
    extras = {f: float(v) for f, v in zip(PAIR_FIELDS, numbers) if not np.isnan(v)}
    out.append(TokenizedPair(int(example_id), prompt, chosen,
                             None if lengths[row, 2] == _NO_REJECTED else rejected, extras))
  return out


class TokenizedPreferences(tfds_builders.ArrayRecordBuilder, skip_registration=True):
  """One tokenized split as a TFDS dataset (split ``"pairs"``), named by its fingerprint.

  ``pairs``: what to write when preparing (a builder that only reads needs none); their
  ``SplitStats`` go into ``info.metadata["stats"]``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Blocks of tokenized pairs with their split's counts."}

  def __init__(self, *, fingerprint: str, pairs: TokenizedPairs | None = None,
               description: str = "", **kwargs):
    self._pairs = pairs
    config = tfds.core.BuilderConfig(name=fingerprint, description=description)
    super().__init__(config=config, file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description="Tokenized preference pairs.",
                                 features=_features(), disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    if self._pairs is None:
      raise ValueError(f"{self.data_dir} is not prepared and no pairs were given to write")
    self.info.metadata["stats"] = dataclasses.asdict(self._pairs.stats)
    return {_SPLIT: self._generate_examples(self._pairs)}

  def _generate_examples(self, pairs: TokenizedPairs):
    for key, start in enumerate(range(0, len(pairs), _BLOCK)):
      yield key, to_block([pairs[i] for i in range(start, min(start + _BLOCK, len(pairs)))])


def cache_bytes(pairs: TokenizedPairs) -> int:
  """About what writing ``pairs`` takes: 4 bytes a token, 20 plus the numbers a pair, and
  one array_record block at least."""
  tokens = sum(len(p.prompt) + len(p.chosen) + (0 if p.rejected is None else len(p.rejected))
               for p in pairs)
  return 4 * tokens + (20 + 8 * len(PAIR_FIELDS)) * len(pairs) + tfds_builders.MIN_SPLIT_BYTES


def _read(builder: TokenizedPreferences, limits: TokenizeLimits, pad_id: int,
          source_name: str) -> TokenizedPairs:
  """The pairs and counts a prepared entry holds."""
  blocks = builder.as_data_source(split=_SPLIT)
  pairs = [pair for i in range(len(blocks)) for pair in from_block(blocks[i])]
  return TokenizedPairs(pairs, pad_id, source_name=source_name,
                        stats=SplitStats(**builder.info.metadata["stats"]),
                        max_prompt_len=limits.max_prompt_len,
                        max_completion_len=limits.max_completion_len)


def load_tokenized(source, tokenizer, limits: TokenizeLimits, data_dir: str, *,
                   check_space=None) -> TokenizedPairs:
  """``pipeline.tokenize(source, tokenizer, limits)``, from the cache under ``data_dir`` when
  an entry with this fingerprint exists, else tokenized and written there first.

  ``check_space(needed_bytes)`` is asked before writing (``tfds_builders.prepare``).
  Several processes sharing ``data_dir`` should let one write first, as for the text cache;
  one that loses a race to write the same entry reads the winner's.
  """
  key = fingerprint(source, tokenizer, limits)
  if key is None:
    return pipeline.tokenize(source, tokenizer, limits)
  name = pipeline.name_of(source)
  with tfds_builders.quiet():
    builder = TokenizedPreferences(data_dir=data_dir, fingerprint=key)
    prepared = builder.is_prepared()
  if prepared:
    logging.info("%s: tokenized pairs read from %s", name, builder.data_dir)
    return _read(builder, limits, tokenizer.pad_id, name)
  pairs = pipeline.tokenize(source, tokenizer, limits)
  if not len(pairs):
    return pairs  # nothing to keep: the batchers refuse an empty split
  with tfds_builders.quiet():
    builder = TokenizedPreferences(
        data_dir=data_dir, fingerprint=key, pairs=pairs,
        description=f"{name} tokenized by {tokenizer!r} with {limits}")
  try:
    tfds_builders.prepare(builder, check_space, needed=cache_bytes(pairs))
  except OSError:
    # TFDS writes into a temporary directory and renames it into place; the rename fails
    # when another process sharing data_dir wrote the same entry first.
    with tfds_builders.quiet():
      builder = TokenizedPreferences(data_dir=data_dir, fingerprint=key)
      if not builder.is_prepared():
        raise
  return _read(builder, limits, tokenizer.pad_id, name)
