"""The tokenized split cache (data/tokenized_cache.py): a restart reads the pairs back instead
of tokenizing; another tokenizer, limit or data file is another entry; the counts survive."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from conftest import micro_config
from data import pipeline, tfds_builders, tokenized_cache
from data.errors import DataError
from data.tokenizer import ByteTokenizer, HFTokenizer
from test_data import _write_wordlevel

TOK = ByteTokenizer()
LIMITS = pipeline.TokenizeLimits(max_prompt_len=6, max_completion_len=4)
# Identical, long-prompt, long-completion and labelled records: every counter moves.
RECORDS = [
    {"prompt": "p", "chosen": "ab", "rejected": "cd", "chosen_label": 1},
    {"prompt": "p", "chosen": "same", "rejected": "same", "chosen_label": 0},
    {"prompt": "a much longer prompt", "chosen": "x", "rejected": "y", "chosen_label": 1},
    {"prompt": "q", "chosen": "a long completion", "rejected": "z", "chosen_label": 0.5},
]


@pytest.fixture
def tokenize_calls(monkeypatch):
  """How many times `pipeline.tokenize` ran (the cache calls it through the module)."""
  calls = []
  real = pipeline.tokenize

  def counting(*args, **kwargs):
    calls.append(args[2])
    return real(*args, **kwargs)

  monkeypatch.setattr(pipeline, "tokenize", counting)
  return calls


def _source(tmp_path, records=RECORDS, name="prefs"):
  """The split `train` of a JSONL file prepared as the trainer prepares it."""
  d = tmp_path / name
  d.mkdir(exist_ok=True)
  (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return tfds_builders.load_preference_source(str(d), "train", str(tmp_path / "tfds"))


def _entries(tmp_path) -> int:
  root = tmp_path / "tfds" / "tokenized_preferences"
  return len(os.listdir(root)) if root.exists() else 0


def _same(a, b) -> bool:
  def key(p):
    return (p.example_id, p.prompt.tolist(), p.chosen.tolist(),
            None if p.rejected is None else p.rejected.tolist(), p.extras)
  return [key(p) for p in a] == [key(p) for p in b]


def test_a_restart_reads_the_pairs_and_counts_back_without_tokenizing(tmp_path, tokenize_calls):
  source = _source(tmp_path)
  direct = pipeline.tokenize(source, TOK, LIMITS)
  tokenize_calls.clear()
  first = tokenized_cache.load_tokenized(source, TOK, LIMITS, str(tmp_path / "tfds"))
  assert len(tokenize_calls) == 1 and _entries(tmp_path) == 1
  again = tokenized_cache.load_tokenized(_source(tmp_path), TOK, LIMITS, str(tmp_path / "tfds"))
  assert len(tokenize_calls) == 1  # read back, not tokenized
  for pairs in (first, again):
    assert _same(pairs, direct) and pairs.stats == direct.stats
    assert pairs.stats.summary() == direct.stats.summary()
    assert (pairs.source_name, pairs.pad_id) == (direct.source_name, direct.pad_id)
    assert (pairs.max_prompt_len, pairs.max_completion_len) == (6, 4)
    assert all(p.prompt.dtype == np.int32 for p in pairs)
  s = again.stats
  assert (s.total, s.kept, s.dropped_identical, s.truncated_prompt,
          s.truncated_completion) == (4, 3, 1, 1, 1)


def test_another_tokenizer_limit_or_file_is_another_entry(tmp_path, tokenize_calls):
  data_dir = str(tmp_path / "tfds")
  source = _source(tmp_path)
  tokenized_cache.load_tokenized(source, TOK, LIMITS, data_dir)
  changes = [
      (source, ByteTokenizer(vocab_size=300), LIMITS),
      (source, TOK, pipeline.TokenizeLimits(max_prompt_len=7, max_completion_len=4)),
      (source, TOK, pipeline.TokenizeLimits(max_prompt_len=6, max_completion_len=5)),
      (source, TOK, pipeline.TokenizeLimits(6, 4, on_long_prompt="drop")),
      (_source(tmp_path, RECORDS[:3], name="edited"), TOK, LIMITS),
  ]
  for n, (src, tok, limits) in enumerate(changes, start=2):
    pairs = tokenized_cache.load_tokenized(src, tok, limits, data_dir)
    assert len(tokenize_calls) == n and _entries(tmp_path) == n
    assert _same(pairs, pipeline.tokenize(src, tok, limits))
    tokenize_calls.pop()
  tokenized_cache.load_tokenized(source, TOK, LIMITS, data_dir)  # the first is still there
  assert len(tokenize_calls) == len(changes) + 1


def test_a_tokenizer_subclass_and_a_changed_chat_template_change_the_fingerprint(tmp_path):
  class NoBos(ByteTokenizer):
    @property
    def bos_id(self):
      return None

  source = _source(tmp_path)
  key = lambda tok: tokenized_cache.fingerprint(source, tok, LIMITS)  # noqa: E731
  assert key(TOK) == key(ByteTokenizer()) != key(NoBos())
  config = {"eos_token": "</s>", "chat_template": "{{ messages[0]['content'] }}"}
  d = _write_wordlevel(tmp_path / "tok", tokenizer_config=config)
  before = key(HFTokenizer(d))
  assert before == key(HFTokenizer(d))
  config["chat_template"] += "!"
  _write_wordlevel(tmp_path / "tok", tokenizer_config=config)
  assert key(HFTokenizer(d)) != before
  # What cannot say what it is is not cached: records in memory, a tokenizer without one.
  assert tokenized_cache.fingerprint(RECORDS, TOK, LIMITS) is None
  assert tokenized_cache.fingerprint(source, object(), LIMITS) is None


def test_a_data_error_surfaces_on_every_uncached_run_and_nothing_is_written(tmp_path):
  source = _source(tmp_path)
  strict = pipeline.TokenizeLimits(6, 4, on_identical_pair="error")
  for _ in range(2):
    with pytest.raises(DataError, match=r"train\.jsonl:2: record 1: field 'rejected': identical"):
      tokenized_cache.load_tokenized(source, TOK, strict, str(tmp_path / "tfds"))
  assert _entries(tmp_path) == 0


def test_blocks_round_trip_single_responses_and_numbers():
  pairs = [pipeline.TokenizedPair(7, np.asarray([1, 2], np.int32), np.asarray([3], np.int32),
                                  None, {"chosen_label": 1.0}),
           pipeline.TokenizedPair(9, np.asarray([], np.int32), np.asarray([4, 5], np.int32),
                                  np.asarray([6], np.int32), {})]
  back = tokenized_cache.from_block(tokenized_cache.to_block(pairs))
  assert _same(back, pairs)


def test_experiment_restart_reads_the_cache(tmp_path, tokenize_calls, caplog):
  from training import experiment

  config = micro_config(**{"data.data_dir": str(tmp_path / "tfds")})
  caplog.set_level(logging.INFO)
  runs = []
  for workdir in ("first", "restart"):
    workdir = str(tmp_path / workdir)
    sources = experiment.load_sources(config, workdir)
    runs.append(experiment.load_pairs(config, workdir, TOK, sources))
  assert len(tokenize_calls) == 2  # train and eval, on the first run only
  assert caplog.text.count("tokenized pairs read from") == 2
  for first, restart in zip(*runs):
    assert _same(first, restart) and first.stats == restart.stats


def test_losing_a_race_to_write_an_entry_reads_the_winners(tmp_path, monkeypatch):
  source, data_dir = _source(tmp_path), str(tmp_path / "tfds")
  theirs = pipeline.tokenize(source, TOK, LIMITS)
  generate = tokenized_cache.TokenizedPreferences._generate_examples
  raced = []

  def slow_generate(self, pairs):
    if not raced:  # another process writes the same entry while this one generates it
      raced.append(self.builder_config.name)
      tokenized_cache.TokenizedPreferences(
          data_dir=data_dir, fingerprint=self.builder_config.name,
          pairs=theirs).download_and_prepare()
    yield from generate(self, pairs)

  monkeypatch.setattr(tokenized_cache.TokenizedPreferences, "_generate_examples", slow_generate)
  pairs = tokenized_cache.load_tokenized(source, TOK, LIMITS, data_dir)
  assert raced and _same(pairs, theirs) and pairs.stats == theirs.stats
  assert _entries(tmp_path) == 1
