"""Tests for the data package: tokenizers, synthetic task, readers, TFDS, pipeline."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from data import pipeline, readers, synthetic
from data.errors import DataError
from data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer

# ==========================================================================
# Tokenizers


@pytest.mark.parametrize("text", ["", "hello", "héllo wörld ✓ 日本 🙂", "a\nb\tc\x00"])
def test_byte_tokenizer_round_trip(text):
  tok = ByteTokenizer()
  ids = tok.encode(text)
  assert all(0 <= i < 256 for i in ids)
  assert tok.decode(ids) == text


def test_byte_tokenizer_specials():
  tok = ByteTokenizer(vocab_size=300)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 300)
  assert isinstance(tok, Tokenizer)
  # Specials and ids beyond 258 (a larger model vocab) are skipped on decode.
  assert tok.decode([257, 104, 105, 258, 256, 299]) == "hi"
  with pytest.raises(ValueError, match="259"):
    ByteTokenizer(vocab_size=258)
  assert isinstance(load_tokenizer(""), ByteTokenizer)


def _write_wordlevel(directory, **configs):
  from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers

  vocab = {"[UNK]": 0, "<pad>": 1, "<s>": 2, "</s>": 3, "hello": 4, "world": 5, "!": 6}
  raw = RawTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  raw.add_special_tokens(["<pad>", "<s>", "</s>"])
  os.makedirs(directory, exist_ok=True)
  raw.save(os.path.join(directory, "tokenizer.json"))
  for name, content in configs.items():
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
      json.dump(content, f)
  return str(directory)


def test_hf_tokenizer_wordlevel(tmp_path):
  d = _write_wordlevel(tmp_path / "tok", tokenizer_config={
      "eos_token": "</s>", "bos_token": {"content": "<s>", "special": True}})
  tok = load_tokenizer(d)
  assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
  assert tok.encode("hello world !") == [4, 5, 6]
  assert tok.decode([2, 4, 5, 3]) == "hello world"  # specials skipped
  assert (tok.eos_id, tok.bos_id, tok.pad_id) == (3, 2, 3)  # pad falls back to eos
  assert tok.vocab_size == 7
  assert tok.encode_batch(["hello", "world"]) == [[4], [5]]


def test_hf_tokenizer_special_tokens_map_overrides(tmp_path):
  d = _write_wordlevel(tmp_path / "tok",
                       tokenizer_config={"eos_token": "</s>", "bos_token": None},
                       special_tokens_map={"pad_token": "<pad>"})
  tok = HFTokenizer(d)
  assert (tok.eos_id, tok.bos_id, tok.pad_id) == (3, None, 1)


def test_hf_tokenizer_bpe_round_trip(tmp_path):
  from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, trainers

  raw = RawTokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|eos|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  raw.train_from_iterator(["sort 1 2 3: 1 2 3", "hello world"] * 20, trainer=trainer)
  d = tmp_path / "bpe"
  d.mkdir()
  raw.save(str(d / "tokenizer.json"))
  (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|eos|>"}))
  tok = HFTokenizer(d / "tokenizer.json")  # a path to the file works too
  text = "sort 9 1: 1 9 héllo"
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode(text) + [tok.eos_id]) == text


def test_hf_tokenizer_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    HFTokenizer(tmp_path)
  d = _write_wordlevel(tmp_path / "noeos")
  with pytest.raises(ValueError, match="eos_token.*tokenizer_config.json"):
    HFTokenizer(d)
  d = _write_wordlevel(tmp_path / "bad", tokenizer_config={"eos_token": "<eot>"})
  with pytest.raises(ValueError, match="'<eot>'.*tokenizer_config.json"):
    HFTokenizer(d)


# ==========================================================================
# Synthetic task


def test_synthetic_golden_and_deterministic():
  # Guards against generator drift: cached datasets and results depend on it.
  assert synthetic.make_split("train", 1) == [{
      "prompt": "sort 6 0 4 8 7 6:", "chosen": " 0 4 6 6 7 8", "rejected": " 0 4 6 7 6 8"}]
  assert synthetic.make_split("test", 1)[0]["prompt"] == "sort 9 0 3 2 8 9:"
  assert synthetic.make_examples(50, 3) == synthetic.make_examples(50, 3)
  assert synthetic.make_examples(50, 3) != synthetic.make_examples(50, 4)


def test_synthetic_splits_disjoint():
  train = synthetic.make_split("train", 5000)
  test = synthetic.make_split("test", 500)
  train_p, test_p = {e["prompt"] for e in train}, {e["prompt"] for e in test}
  assert len(train_p) == 5000 and len(test_p) == 500  # unique within a split
  assert not train_p & test_p
  assert {synthetic.partition_of(p) for p in test_p} == {"test"}
  with pytest.raises(ValueError):
    synthetic.make_split("validation", 1)


def _descents(completion):
  d = [int(x) for x in completion.split()]
  return sum(a > b for a, b in zip(d, d[1:]))


def test_synthetic_format_and_local_rule():
  for e in synthetic.make_split("train", 2000):
    assert len(e["prompt"]) + max(len(e["chosen"]), len(e["rejected"])) <= 29
    digits = synthetic.parse_prompt(e["prompt"])
    assert 3 <= len(digits) <= 6
    # The learnable rule: chosen never descends, rejected descends once.
    assert _descents(e["chosen"]) == 0 and _descents(e["rejected"]) == 1
    assert sorted(e["rejected"].split()) == e["chosen"].split()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_synthetic_verifier_agrees(seed):
  for e in synthetic.make_examples(5, seed):
    assert synthetic.verify(e["prompt"], e["chosen"])
    assert not synthetic.verify(e["prompt"], e["rejected"])


def test_verifier_details():
  assert synthetic.verify("sort 3 1 2:", " 1 2 3")
  assert synthetic.verify("sort 3 1 2:", "1  2 3 \n")  # spacing is free
  assert not synthetic.verify("sort 3 1 2:", " 1 2")
  assert not synthetic.verify("sort 3 1 2:", " 1 2 3 3")
  assert not synthetic.verify("sort 3 1 2:", " 1 2 3!")
  assert not synthetic.verify("sort 3 1 2:", "")
  with pytest.raises(ValueError):
    synthetic.verify("sort these:", " 1")


# ==========================================================================
# Readers

STANDARD = [
    {"prompt": "Q1", "chosen": "good", "rejected": "bad", "extra": 1},
    {"prompt": "", "chosen": "é🙂", "rejected": "x"},
]
EXPECTED = [{"prompt": "Q1", "chosen": "good", "rejected": "bad"},
            {"prompt": "", "chosen": "é🙂", "rejected": "x"}]


def _jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


def test_read_jsonl_json_parquet(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  assert readers.read_preferences(_jsonl(tmp_path / "a.jsonl", STANDARD), "train") == EXPECTED
  (tmp_path / "a.json").write_text(json.dumps(STANDARD))
  assert readers.read_preferences(str(tmp_path / "a.json"), "train") == EXPECTED
  pq.write_table(pa.Table.from_pylist(STANDARD), tmp_path / "a.parquet")
  assert readers.read_preferences(str(tmp_path / "a.parquet"), "train") == EXPECTED
  with pytest.raises(DataError, match="only holds the 'train' split"):
    readers.read_preferences(str(tmp_path / "a.json"), "test")


def test_read_directory(tmp_path):
  _jsonl(tmp_path / "train.jsonl", STANDARD)
  _jsonl(tmp_path / "validation.jsonl", STANDARD[:1])
  (tmp_path / "notes.txt").write_text("ignored")
  assert readers.available_splits(str(tmp_path)) == ["train", "validation"]
  assert readers.read_preferences(str(tmp_path), "train") == EXPECTED
  assert readers.read_preferences(str(tmp_path), "test") == EXPECTED[:1]  # alias
  with pytest.raises(DataError, match="no 'dev' split"):
    readers.read_preferences(str(tmp_path), "dev")


def test_read_hf_style_parquet_shards(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  (tmp_path / "data").mkdir()
  for i in range(2):
    pq.write_table(pa.Table.from_pylist(STANDARD[i:i + 1]),
                   tmp_path / "data" / f"train-0000{i}-of-00002.parquet")
  assert readers.read_preferences(str(tmp_path), "train") == EXPECTED


def test_conversational_explicit_and_implicit_prompt(tmp_path):
  user = {"role": "user", "content": "Hi?"}
  system = {"role": "system", "content": "Be nice."}
  good = {"role": "assistant", "content": "Hello!"}
  bad = {"role": "assistant", "content": "Go away."}
  records = [
      {"prompt": [system, user], "chosen": [good], "rejected": [bad]},
      {"chosen": [system, user, good], "rejected": [system, user, bad]},  # implicit
  ]
  out = readers.read_preferences(_jsonl(tmp_path / "c.jsonl", records), "train")
  want = {"prompt": "<|system|>\nBe nice.\n<|user|>\nHi?\n<|assistant|>\n",
          "chosen": "Hello!\n", "rejected": "Go away.\n"}
  assert out == [want, want]
  # prompt + completion is the full rendered conversation.
  assert want["prompt"] + want["chosen"] == readers.render_messages([system, user, good])


def _error_for(tmp_path, name, content: bytes):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(DataError) as info:
    readers.read_preferences(str(path), "train")
  return str(info.value)


GOOD_LINE = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}).encode() + b"\n"


@pytest.mark.parametrize("line2, expected", [
    (b'{"prompt": "p", "chosen": "c",', "invalid JSON"),
    (b'{"prompt": "p", "chosen": "c"}', "field 'rejected': missing"),
    (b'{"chosen": "c", "rejected": "r"}', "field 'prompt': missing"),
    (b'{"prompt": "p", "chosen": 3, "rejected": "r"}', "field 'chosen': must be a string"),
    (b'{"prompt": "p", "chosen": "c", "rejected": "  "}', "field 'rejected': empty"),
    (b'{"prompt": "p", "chosen": "c\xff", "rejected": "r"}', "not valid UTF-8"),
    (b'{"prompt": "p", "chosen": "\\ud800", "rejected": "r"}', "field 'chosen': not valid UTF-8"),
    (b'{"chosen": [{"role": "bot", "content": "x"}], "rejected": [{"role": "assistant", '
     b'"content": "y"}]}', "field 'chosen[0].role': unknown role 'bot'"),
    (b'{"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "assistant", '
     b'"content": "y"}]}', "field 'chosen[0]': the completion must start with an 'assistant'"),
    (b'{"chosen": [{"role": "assistant"}], "rejected": []}', "field 'chosen[0].content': missing"),
    (b'{"prompt": "p", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "r"}',
     "field 'rejected': must be a list of messages"),
    (b'[1, 2]', "record 1: a record must be an object"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, line2, expected):
  msg = _error_for(tmp_path, "bad.jsonl", GOOD_LINE + line2 + b"\n")
  assert "bad.jsonl:2" in msg and expected in msg, msg


def test_json_and_parquet_errors_name_record(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  records = [{"prompt": "p", "chosen": "c", "rejected": "r"},
             {"prompt": "p", "chosen": "", "rejected": "r"}]
  msg = _error_for(tmp_path, "bad.json", json.dumps(records).encode())
  assert "bad.json: record 1: field 'chosen': empty" in msg
  msg = _error_for(tmp_path, "syntax.json", b'[\n{"prompt": "p",\n]')
  assert "syntax.json:3: invalid JSON" in msg
  msg = _error_for(tmp_path, "lines.json", GOOD_LINE * 2)
  assert "lines.json:2" in msg and ".jsonl" in msg
  msg = _error_for(tmp_path, "enc.json", b'[\n{"prompt": "\xfe"}]')
  assert "enc.json:2: record 0: field 'prompt': not valid UTF-8" in msg
  pq.write_table(pa.Table.from_pylist(records), tmp_path / "bad.parquet")
  with pytest.raises(DataError, match=r"bad.parquet: record 1: field 'chosen': empty"):
    readers.read_preferences(str(tmp_path / "bad.parquet"), "train")
  with pytest.raises(DataError, match="no such file"):
    readers.read_preferences(str(tmp_path / "missing.jsonl"), "train")


# ==========================================================================
# TFDS builders (array_record, no TensorFlow)


def test_tfds_has_no_tensorflow():
  import data.tfds_builders  # noqa: F401

  assert "tensorflow" not in sys.modules


def test_synthetic_builder_round_trip(tmp_path):
  from data import tfds_builders

  kw = dict(num_train=300, num_test=40, seed=1)
  for split, n in (("train", 300), ("test", 40)):
    src = tfds_builders.load_preference_source("", split, str(tmp_path), **kw)
    want = [dict(e, example_id=i)
            for i, e in enumerate(synthetic.make_split(split, n, seed=1))]
    assert len(src) == n
    assert list(src) == want
    assert src[-1] == want[-1] and src[1:3] == want[1:3]
    assert isinstance(src[0]["prompt"], str) and isinstance(src[0]["example_id"], int)
  assert len(tfds_builders.load_preference_source("", "validation", str(tmp_path), **kw)) == 40


def test_local_builder_round_trip_and_cache_invalidation(tmp_path):
  from data import tfds_builders

  d = tmp_path / "prefs"
  d.mkdir()
  _jsonl(d / "train.jsonl", STANDARD)
  _jsonl(d / "test.jsonl", STANDARD[1:])
  cache = str(tmp_path / "cache")
  src = tfds_builders.load_preference_source(str(d), "train", cache)
  assert list(src) == [dict(e, example_id=i) for i, e in enumerate(EXPECTED)]
  assert list(tfds_builders.load_preference_source(str(d), "test", cache)) == [
      dict(EXPECTED[1], example_id=0)]
  name_before = tfds_builders.local_config(str(d)).name

  # Editing the file changes the config name, so the stale cache is not read.
  _jsonl(d / "train.jsonl", STANDARD[:1])
  assert tfds_builders.local_config(str(d)).name != name_before
  src = tfds_builders.load_preference_source(str(d), "train", cache)
  assert list(src) == [dict(EXPECTED[0], example_id=0)]

  builder = tfds_builders.LocalPreferences(path=str(d), data_dir=cache)
  tfds_builders.prepare(builder)
  assert set(builder.info.splits) == {"train", "test"}
  with pytest.raises(TypeError):
    tfds_builders.load_preference_source(str(d), "train", cache, num_train=3)


def test_pair_fields_travel_from_files_to_batches(tmp_path):
  """chosen_label / rejected_label / preference_prob / scores in a local file (JSON Lines,
  conversational Parquet) reach the TFDS source and the batches; null means "not given"."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  from data import tfds_builders

  labelled = [dict(STANDARD[0], chosen_label=1, rejected_label=0.0, preference_prob=0.75),
              dict(STANDARD[1], chosen_label=0, rejected_label=1, preference_prob=0.25,
                   chosen_score=None)]
  d = tmp_path / "prefs"
  d.mkdir()
  _jsonl(d / "train.jsonl", labelled)
  src = tfds_builders.load_preference_source(str(d), "train", str(tmp_path / "cache"))
  assert src[0] == dict(EXPECTED[0], example_id=0, chosen_label=1.0, rejected_label=0.0,
                        preference_prob=0.75)
  assert "chosen_score" not in src[1] and src[1]["preference_prob"] == 0.25
  pairs = pipeline.tokenize(src, TOK, pipeline.TokenizeLimits(max_prompt_len=8,
                                                               max_completion_len=8))
  batcher = pipeline.PreferenceBatcher(pairs, batch_size=2, seed=0, buckets=(16,),
                                       shuffle=False)
  batch = batcher.batch(0)
  by_id = {int(e): i for i, e in enumerate(batch["example_id"])}
  np.testing.assert_array_equal(batch["chosen_label"][[by_id[0], by_id[1]]], [1.0, 0.0])
  np.testing.assert_array_equal(batch["preference_prob"][[by_id[0], by_id[1]]], [0.75, 0.25])
  assert "chosen_score" not in batch

  conversational = [{"chosen": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"}],
                     "rejected": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "go"}],
                     "chosen_score": 2.5, "rejected_score": -1}]
  pq.write_table(pa.Table.from_pylist(conversational), tmp_path / "c.parquet")
  record, = readers.read_preferences(str(tmp_path / "c.parquet"), "train")
  assert (record["chosen_score"], record["rejected_score"]) == (2.5, -1.0)


# ==========================================================================
# Pipeline

TOK = ByteTokenizer()
B_, E_, P_ = 257, 258, 256  # bos, eos, pad of the byte tokenizer


def _ids(text):
  return [ord(c) for c in text]


def test_hand_checked_batch():
  source = [
      # prompt "abcdef" keeps its end "def" (bos + 3 = max_prompt_len 4);
      # chosen "XY"+eos fits exactly; rejected "LMNOP" keeps "LMN", loses eos.
      {"prompt": "abcdef", "chosen": "XY", "rejected": "LMNOP", "example_id": 7},
      # short pair: no truncation; rejected is shorter than chosen.
      {"prompt": "q", "chosen": "AB", "rejected": "C", "example_id": 9},
  ]
  batcher = pipeline.PreferenceBatcher(
      pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(max_prompt_len=4,
                                                             max_completion_len=3)),
      batch_size=2, seed=0, buckets=(4, 8, 12), shuffle=False)
  b = batcher.batch(0)
  assert b["chosen_ids"].tolist() == [
      [B_, *_ids("def"), *_ids("XY"), E_, P_],
      [B_, *_ids("q"), *_ids("AB"), E_, P_, P_, P_],
  ]
  assert b["rejected_ids"].tolist() == [
      [B_, *_ids("def"), *_ids("LMN"), P_],
      [B_, *_ids("q"), *_ids("C"), E_, P_, P_, P_, P_],
  ]
  assert b["chosen_attention_mask"].tolist() == [[1] * 7 + [0], [1] * 5 + [0] * 3]
  assert b["rejected_attention_mask"].tolist() == [[1] * 7 + [0], [1] * 4 + [0] * 4]
  assert b["chosen_loss_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0, 0]]
  assert b["rejected_loss_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0, 0]]
  assert b["example_id"].tolist() == [7, 9]
  dtypes = {k: v.dtype for k, v in b.items()}
  assert dtypes == {"chosen_ids": np.int32, "rejected_ids": np.int32,
                    "chosen_attention_mask": np.int32, "rejected_attention_mask": np.int32,
                    "chosen_loss_mask": np.float32, "rejected_loss_mask": np.float32,
                    "example_id": np.int64}
  s = batcher.stats
  assert (s.total, s.kept, s.dropped, s.truncated_prompt, s.truncated_completion) == (2, 2, 0, 1, 1)


class _NoBosTokenizer(ByteTokenizer):
  @property
  def bos_id(self):
    return None


def test_no_bos_and_empty_prompt():
  source = [{"prompt": "", "chosen": "ab", "rejected": "ba"}]
  batcher = pipeline.PreferenceBatcher(
      pipeline.tokenize(source, _NoBosTokenizer(),
                        pipeline.TokenizeLimits(max_prompt_len=2, max_completion_len=4)),
      batch_size=1, seed=0, buckets=(6,))
  b = batcher.batch(0)
  assert b["chosen_ids"].tolist() == [[*_ids("ab"), E_, P_, P_, P_]]
  # Token 0 has no predecessor, so it never counts.
  assert b["chosen_loss_mask"].tolist() == [[0, 1, 1, 0, 0, 0]]
  # With one completion token and nothing before it, no token is scored.
  pairs = pipeline.tokenize(source, _NoBosTokenizer(),
                            pipeline.TokenizeLimits(max_prompt_len=2, max_completion_len=1))
  assert (len(pairs), pairs.stats.dropped, pairs.stats.truncated_completion) == (0, 1, 1)


def test_identical_after_truncation_is_dropped():
  source = [{"prompt": "p", "chosen": "same-A", "rejected": "same-B"},
            {"prompt": "p", "chosen": "x", "rejected": "y"}]
  pairs = pipeline.tokenize(source, TOK,
                            pipeline.TokenizeLimits(max_prompt_len=4, max_completion_len=3))
  assert [p.example_id for p in pairs] == [1]
  assert (pairs.stats.dropped, pairs.stats.truncated_completion) == (1, 1)


def test_buckets_pick_smallest_fit_and_validate():
  source = [{"prompt": "p" * n, "chosen": "c" * n, "rejected": "r"} for n in (1, 5, 9)]
  pairs = pipeline.tokenize(source, TOK,
                            pipeline.TokenizeLimits(max_prompt_len=10, max_completion_len=10))
  kw = dict(shuffle=False)
  batcher = pipeline.PreferenceBatcher(pairs, batch_size=1, seed=0,
                                       buckets=(4, 8, 16, 32), **kw)
  # lengths (bos + prompt + completion + eos): 4, 12, 20
  assert [batcher.batch(i)["chosen_ids"].shape[1] for i in range(3)] == [4, 16, 32]
  assert [batcher.batch(i)["rejected_ids"].shape[1] for i in range(3)] == [4, 16, 32]
  with pytest.raises(ValueError, match="largest bucket"):
    pipeline.PreferenceBatcher(pairs, batch_size=1, seed=0, buckets=(8, 16), **kw)
  with pytest.raises(ValueError, match="ascending"):
    pipeline.PreferenceBatcher(pairs, batch_size=1, seed=0, buckets=(32, 8), **kw)


SORT_LIMITS = pipeline.TokenizeLimits(max_prompt_len=20, max_completion_len=14)
SORT_KW = dict(buckets=(16, 24, 32, 40))


@pytest.fixture(scope="module")
def sort_train():
  return synthetic.make_split("train", 203)


@pytest.fixture(scope="module")
def sort_pairs(sort_train):
  return pipeline.tokenize(sort_train, TOK, SORT_LIMITS)


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batcher_deterministic_and_resumable(sort_pairs):
  make = lambda seed: pipeline.PreferenceBatcher(  # noqa: E731
      sort_pairs, batch_size=8, seed=seed, **SORT_KW)
  a, b = make(0), make(0)
  assert a.num_batches_per_epoch == 25
  run = [a.batch(s) for s in range(60)]  # crosses two epoch boundaries
  # Resume: a fresh batcher produces step 57 directly, without replaying.
  assert _equal(b.batch(57), run[57])
  assert all(_equal(x, y) for x, y in zip(run, iter(make(0))))
  assert not _equal(make(1).batch(0), run[0])
  # One epoch visits distinct examples; the next epoch is a new order.
  epoch0 = np.concatenate([run[s]["example_id"] for s in range(25)])
  epoch1 = np.concatenate([run[s]["example_id"] for s in range(25, 50)])
  assert len(set(epoch0.tolist())) == 200 and not np.array_equal(epoch0, epoch1)


def test_epoch_permutation_is_stable():
  # Hard-coded: resuming by step must survive library upgrades.
  assert pipeline.epoch_permutation(10, 0, 0).tolist() == [0, 3, 5, 7, 9, 6, 2, 8, 1, 4]
  assert sorted(pipeline.epoch_permutation(1000, 5, 3).tolist()) == list(range(1000))


def test_process_slices_equal_global_slice(sort_pairs):
  glob = pipeline.PreferenceBatcher(sort_pairs, batch_size=8, seed=3, **SORT_KW)
  for step in (0, 31):
    full = glob.batch(step)
    for pi in range(4):
      local = pipeline.PreferenceBatcher(sort_pairs, batch_size=8, seed=3,
                                         process_index=pi, process_count=4,
                                         **SORT_KW).batch(step)
      assert _equal(local, {k: v[2 * pi:2 * pi + 2] for k, v in full.items()})
  with pytest.raises(ValueError, match="divisible"):
    pipeline.PreferenceBatcher(sort_pairs, batch_size=8, seed=0, process_count=3,
                               **SORT_KW)


def test_keep_remainder_fills_last_batch(sort_pairs):
  batcher = pipeline.PreferenceBatcher(sort_pairs, batch_size=8, seed=0,
                                       drop_remainder=False, **SORT_KW)
  assert batcher.num_batches_per_epoch == 26
  ids = np.concatenate([batcher.batch(s)["example_id"] for s in range(26)])
  assert len(ids) == 208 and set(ids.tolist()) == set(range(203))


def test_eval_batches_cover_split_exactly(sort_train, sort_pairs):
  n = len(sort_train)
  batches = list(pipeline.EvalBatches(sort_pairs, batch_size=16, **SORT_KW))
  assert len(batches) == 13
  ids = np.concatenate([b["example_id"] for b in batches])
  w = np.concatenate([b["weight"] for b in batches])
  assert ids[w == 1].tolist() == list(range(n))  # in order, each once
  assert w.sum() == n and w.dtype == np.float32 and w[n:].sum() == 0
  assert {b["chosen_ids"].shape[0] for b in batches} == {16}
  local = list(pipeline.EvalBatches(sort_pairs, batch_size=16, process_index=1,
                                    process_count=2, **SORT_KW))
  assert all(_equal(lb, {k: v[8:] for k, v in gb.items()})
             for lb, gb in zip(local, batches))


def test_left_pad(sort_pairs):
  right = pipeline.PreferenceBatcher(sort_pairs, batch_size=8, seed=0,
                                     **SORT_KW).batch(0)
  left = pipeline.left_pad(right)
  for side in ("chosen", "rejected"):
    ids, attn, loss = (right[f"{side}_{k}"] for k in ("ids", "attention_mask", "loss_mask"))
    lids, lattn, lloss = (left[f"{side}_{k}"] for k in ("ids", "attention_mask", "loss_mask"))
    assert (lattn[:, -1] == 1).all()
    for row in range(ids.shape[0]):
      real = attn[row] == 1
      assert lids[row][lattn[row] == 1].tolist() == ids[row][real].tolist()
      assert lloss[row][lattn[row] == 1].tolist() == loss[row][real].tolist()
      assert (lids[row][lattn[row] == 0] == TOK.pad_id).all()
  assert np.array_equal(left["example_id"], right["example_id"])
  with pytest.raises(ValueError, match="not right-padded"):
    pipeline.left_pad(left)
