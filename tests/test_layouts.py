"""Public dataset layouts: each trains a few steps or is refused in one line naming file, line
and field; split names; an eval split held out of a single file by prompt.

The records are synthetic text in the real datasets' field shapes (~50 per layout).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from data import pipeline, readers, tfds_builders
from data.errors import DataError
from data.tokenizer import ByteTokenizer
from tests.conftest import micro_config
from training import config_check, experiment, loop

N = 50
WORDS = ["sort", "the", "digits", "please", "now", "three", "one", "two", "fast", "slow"]
TOK = ByteTokenizer()


def _words(rng, n):
  return " ".join(rng.choice(WORDS, n))


def _msg(role, content):
  return {"role": role, "content": content}


def _jsonl(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


def _parquet(path, records):
  import pyarrow as pa
  import pyarrow.parquet as pq

  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(records), path)
  return str(path)


def ultrafeedback(n=N, seed=0) -> list[dict]:
  """HuggingFaceH4/ultrafeedback_binarized's shape: a string prompt, whole conversations."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    prompt = f"q{i} {_words(rng, 2)}"
    user = _msg("user", prompt)
    chosen, rejected = [user, _msg("assistant", "yes " + _words(rng, 2))], [
        user, _msg("assistant", "no " + _words(rng, 2))]
    out.append({"prompt": prompt, "prompt_id": f"{i:064x}", "chosen": chosen,
                "rejected": rejected, "messages": chosen,
                "score_chosen": float(7 + i % 3), "score_rejected": float(i % 5) / 2})
  return out


def hh_rlhf(n=N, seed=1) -> list[dict]:
  """Anthropic/hh-rlhf's shape: two transcripts, no prompt field."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    history = f"\n\nHuman: q{i} {_words(rng, 2)}"
    if i % 3 == 0:  # a multi-turn history: the prompt ends at the LAST assistant header
      history += f"\n\nAssistant: {_words(rng, 2)}\n\nHuman: and {_words(rng, 1)}?"
    out.append({"chosen": f"{history}\n\nAssistant: yes {_words(rng, 2)}",
                "rejected": f"{history}\n\nAssistant: no {_words(rng, 2)}"})
  return out


def unpaired(n=N, seed=2) -> list[dict]:
  """TRL's unpaired (KTO) layout: prompt / completion / label."""
  rng = np.random.default_rng(seed)
  return [{"prompt": f"q{i // 2} {_words(rng, 2)}",
           "completion": ("yes " if i % 2 == 0 else "no ") + _words(rng, 2),
           "label": i % 2 == 0} for i in range(n)]


def _config(path, tmp_path, **overrides):
  return micro_config(**{"data.path": str(path), "data.data_dir": str(tmp_path / "tfds"),
                         "total_steps": 5, "eval_every": 0, "checkpoint_every": 0,
                         **overrides})


def _train(config, tmp_path) -> dict:
  summary = loop.train(config, str(tmp_path / "run"))
  assert summary["final_step"] == 5
  assert all(math.isfinite(v) for v in summary["final_eval"].values()), summary["final_eval"]
  return summary


# --------------------------------------------------------------------------
# Reading each layout


def test_ultrafeedback_prompt_is_the_shared_prefix_and_scores_are_kept(tmp_path):
  path = _parquet(tmp_path / "uf" / "data" / "train_prefs-00000-of-00001.parquet",
                  ultrafeedback(3))
  records = readers.read_preferences(str(tmp_path / "uf"), "train_prefs")
  raw = ultrafeedback(3)
  for record, r in zip(records, raw):
    assert record["prompt"] == f"<|user|>\n{r['prompt']}\n<|assistant|>\n"
    assert record["chosen"] == r["chosen"][1]["content"] + "\n"
    assert record["rejected"] == r["rejected"][1]["content"] + "\n"
    assert (record["chosen_score"], record["rejected_score"]) == (
        r["score_chosen"], r["score_rejected"])
  full, = readers.read_files([path])[:1]
  assert full["messages"]["prompt"] == [raw[0]["chosen"][0]]
  assert full["messages"]["chosen"] == [raw[0]["chosen"][1]]
  # Conversations that share nothing get the string prompt as their user turn.
  alone = readers.normalize_record(
      {"prompt": "hi", "chosen": [_msg("assistant", "a")], "rejected": [_msg("assistant", "b")]},
      file="f.jsonl", index=0)
  assert alone["messages"]["prompt"] == [_msg("user", "hi")]
  with pytest.raises(DataError, match="field 'score_chosen': given with 'chosen_score'"):
    readers.normalize_record(dict(raw[0], chosen_score=1.0), file="f.jsonl", index=0)
  with pytest.raises(DataError, match="f.jsonl: record 0: field 'score_chosen': must be a "
                                      "finite number"):
    readers.normalize_record(dict(raw[0], score_chosen="high"), file="f.jsonl", index=0)


def test_hh_rlhf_prompt_ends_with_the_last_assistant_header(tmp_path):
  records = readers.read_preferences(_jsonl(tmp_path / "hh.jsonl", hh_rlhf(6)), "train")
  for record, raw in zip(records, hh_rlhf(6)):
    assert record["prompt"].endswith("\n\nAssistant:")
    assert record["prompt"] + record["chosen"] == raw["chosen"]
    assert record["prompt"] + record["rejected"] == raw["rejected"]
    assert record["chosen"].startswith(" yes") and record["rejected"].startswith(" no")
  assert records[0]["prompt"].count("\n\nAssistant:") == 2  # multi-turn history
  with pytest.raises(DataError, match=r"t\.jsonl:1: record 0: field 'prompt': missing .*"
                                      r"'\\n\\nAssistant:' header"):
    readers.read_preferences(_jsonl(tmp_path / "t.jsonl",
                                    [{"chosen": "a b", "rejected": "a c"}]), "train")


def test_unpaired_records_and_their_errors(tmp_path):
  records = readers.read_preferences(_jsonl(tmp_path / "u.jsonl", unpaired(4)), "train")
  assert records[0]["rejected"] is None and records[0]["chosen_label"] == 1.0
  assert records[1]["chosen_label"] == 0.0
  conversational = readers.normalize_record(
      {"prompt": [_msg("user", "hi")], "completion": [_msg("assistant", "hello")],
       "label": False}, file="f.jsonl", index=0)
  assert conversational["messages"] == {"prompt": [_msg("user", "hi")],
                                        "chosen": [_msg("assistant", "hello")],
                                        "rejected": None}
  for bad, expected in (({"prompt": "p", "completion": "c"}, "field 'label': missing"),
                        ({"prompt": "p", "completion": "c", "label": "yes"},
                         "field 'label': must be true or false"),
                        ({"completion": "c", "label": True}, "field 'prompt': missing")):
    with pytest.raises(DataError, match=expected):
      readers.normalize_record(bad, file="f.jsonl", index=0)
  mixed = _jsonl(tmp_path / "mixed.jsonl", unpaired(2) + [{"prompt": "p", "chosen": "a",
                                                           "rejected": "b"}])
  with pytest.raises(DataError, match=r"mixed\.jsonl:3: record 2: field 'chosen': this "
                                      r"split's first record is unpaired"):
    readers.read_preferences(mixed, "train")


def test_a_record_of_no_layout_names_the_layouts(tmp_path):
  with pytest.raises(DataError) as info:
    readers.read_preferences(_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "rejected": "a"}]),
                             "train")
  assert str(info.value) == (
      f"{tmp_path}/x.jsonl:1: record 0: field 'chosen': missing (expected prompt/chosen/rejected "
      "(preference pairs), prompt/completion/label (unpaired records) or a prompt alone "
      "(online rounds))")


def test_prompt_only_records_and_reference_answers(tmp_path):
  """TRL's prompt-only layout (text or messages) with a reference answer, given as `answer`
  or as Eurus-2-RL-Data's `reward_model.ground_truth`; bad answers name their field; a split
  mixing prompts with pairs is refused."""
  records = [{"prompt": "What is 2 + 2?", "answer": 4},
             {"prompt": [_msg("system", "Be brief."), _msg("user", "Half of 1?")],
              "reward_model": {"ground_truth": "\\frac{1}{2}", "style": "rule"}}]
  text, chat = readers.read_files([_jsonl(tmp_path / "p.jsonl", records)])
  assert text == {"prompt": "What is 2 + 2?", "chosen": None, "rejected": None, "answer": "4"}
  assert chat["prompt"] == ("<|system|>\nBe brief.\n<|user|>\nHalf of 1?\n"
                            + readers.GENERATION_HEADER)
  assert chat["answer"] == "\\frac{1}{2}" and chat["chosen"] is None
  assert chat["messages"]["prompt"][1] == _msg("user", "Half of 1?")
  for bad, field in (({"prompt": "p", "answer": ""}, "answer': empty"),
                     ({"prompt": "p", "answer": True}, "answer': must be a string or a finite"),
                     ({"prompt": "p", "answer": float("nan")}, "answer': must be"),
                     ({"prompt": "p", "reward_model": {"ground_truth": [1]}},
                      "reward_model.ground_truth': must be"),
                     ({"prompt": "   "}, "prompt': empty")):
    with pytest.raises(DataError, match=field):
      readers.normalize_record(bad, file="f.jsonl", index=0)
  mixed = _jsonl(tmp_path / "mixed.jsonl", records + [{"prompt": "p", "chosen": "a",
                                                       "rejected": "b"}])
  with pytest.raises(DataError, match=r"mixed\.jsonl:3: record 2: field 'chosen': this split's "
                                      r"first record is prompts only"):
    readers.read_preferences(mixed, "train")


# --------------------------------------------------------------------------
# Training on each layout, or refusing it


def _batches(config, tmp_path):
  """The run's (training batcher, eval batches), built as experiment.build builds them."""
  config_check.validate(config, num_devices=1, process_count=1)
  workdir = str(tmp_path / "build")
  train, test = experiment.load_pairs(config, workdir, TOK,
                                      experiment.load_sources(config, workdir))
  return (experiment.make_batcher(config, train),
          experiment.make_eval_batches(config, test))


def test_ultrafeedback_scores_reach_the_batch(tmp_path):
  uf = tmp_path / "uf" / "data"
  train, test = ultrafeedback(N), ultrafeedback(16, seed=5)
  _parquet(uf / "train_prefs-00000-of-00001.parquet", train)
  _parquet(uf / "test_prefs-00000-of-00001.parquet", test)
  config = _config(tmp_path / "uf", tmp_path, **{"data.train_split": "train_prefs",
                                                 "data.eval_split": "test_prefs"})
  batcher, eval_batches = _batches(config, tmp_path)
  batch = batcher.batch(0)
  ids = batch["example_id"]
  np.testing.assert_array_equal(batch["chosen_score"], [train[i]["score_chosen"] for i in ids])
  np.testing.assert_array_equal(batch["rejected_score"],
                                [train[i]["score_rejected"] for i in ids])
  assert "chosen_score" in next(iter(eval_batches))


@pytest.mark.slow  # a compile of the train step: ~25 s, then ~6 s for the second layout
@pytest.mark.parametrize("layout", ["ultrafeedback", "hh_rlhf"])
def test_public_layouts_train(layout, tmp_path):
  if layout == "ultrafeedback":
    uf = tmp_path / "uf" / "data"
    _parquet(uf / "train_prefs-00000-of-00001.parquet", ultrafeedback(N))
    _parquet(uf / "test_prefs-00000-of-00001.parquet", ultrafeedback(16, seed=5))
    config = _config(tmp_path / "uf", tmp_path, **{"data.train_split": "train_prefs",
                                                   "data.eval_split": "test_prefs"})
  else:
    _jsonl(tmp_path / "hh" / "train.jsonl", hh_rlhf(N))
    _jsonl(tmp_path / "hh" / "test.jsonl", hh_rlhf(16, seed=7))
    config = _config(tmp_path / "hh", tmp_path)
  _train(config, tmp_path)


def _unpaired_dir(tmp_path):
  _jsonl(tmp_path / "kto" / "train.jsonl", unpaired(N))
  _jsonl(tmp_path / "kto" / "test.jsonl", unpaired(16, seed=9))
  return tmp_path / "kto"


def _unpaired_config(tmp_path, loss):
  extra = {"loss.prm_objective": "ce"} if loss == "implicit_prm" else {}
  return _config(_unpaired_dir(tmp_path), tmp_path, **{"loss.name": loss, **extra})


def test_unpaired_records_batch_for_sft_and_implicit_prm(tmp_path):
  batcher, _ = _batches(_unpaired_config(tmp_path, "sft"), tmp_path)
  assert (batcher.stats.kept, batcher.stats.dropped_undesirable) == (N // 2, N // 2)
  assert "25 labelled undesirable" in batcher.stats.summary()
  batch = batcher.batch(0)
  assert "rejected_ids" not in batch and set(batch["chosen_label"].tolist()) == {1.0}
  batcher, _ = _batches(_unpaired_config(tmp_path, "implicit_prm"), tmp_path)
  assert batcher.stats.kept == N
  labels = np.concatenate([batcher.batch(s)["chosen_label"] for s in range(6)])
  assert set(labels.tolist()) == {0.0, 1.0}


@pytest.mark.slow  # two more compiles of single-response steps: ~40 s
@pytest.mark.parametrize("loss", ["sft", "implicit_prm"])
def test_unpaired_records_train(loss, tmp_path):
  summary = _train(_unpaired_config(tmp_path, loss), tmp_path)
  if loss == "implicit_prm":
    assert "eval/prm/accuracy" in summary["final_eval"]


@pytest.mark.parametrize("loss", ["dpo", "simpo", "ipo"])
def test_pairwise_losses_refuse_unpaired_records_in_one_line(loss, tmp_path, monkeypatch):
  def no_model(*args, **kwargs):
    raise AssertionError("the model was built before the data was refused")

  monkeypatch.setattr(experiment, "init_params", no_model)
  path = _unpaired_dir(tmp_path)
  with pytest.raises(DataError) as info:
    experiment.build(_config(path, tmp_path, **{"loss.name": loss}), str(tmp_path / "run"))
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"{path}/train.jsonl:1: record 0: field 'chosen': missing: an "
                            "unpaired record (prompt/completion/label), but this loss trains "
                            "on preference pairs"), message
  assert "'sft'" in message and "'implicit_prm'" in message


# --------------------------------------------------------------------------
# Split names


def test_a_missing_named_split_lists_the_splits_found(tmp_path):
  d = tmp_path / "uf" / "data"
  for split in ("train_prefs", "test_prefs", "train_sft"):
    _parquet(d / f"{split}-00000-of-00001.parquet", ultrafeedback(2))
  assert readers.available_splits(str(tmp_path / "uf")) == ["test_prefs", "train_prefs",
                                                            "train_sft"]
  config = _config(tmp_path / "uf", tmp_path, **{"data.train_split": "train_prefs"})
  with pytest.raises(config_check.ConfigError) as info:
    config_check.validate(config, num_devices=1, process_count=1)
  assert str(info.value).startswith("config.data.eval_split='test': ")
  assert "no 'test' split; found splits ['test_prefs', 'train_prefs', 'train_sft']" in str(
      info.value)
  config_check.validate(_config(tmp_path / "uf", tmp_path, **{
      "data.train_split": "train_prefs", "data.eval_split": "test_prefs"}),
      num_devices=1, process_count=1)
  _jsonl(tmp_path / "flat" / "train_prefs.jsonl", [{"prompt": "p", "chosen": "a",
                                                    "rejected": "b"}])
  assert readers.available_splits(str(tmp_path / "flat")) == ["train_prefs"]


# --------------------------------------------------------------------------
# An eval split held out of a single file


def _pairs_by_prompt(n_prompts=20, per_prompt=3):
  return [{"prompt": f"prompt {p}", "chosen": f"good {p}.{k}", "rejected": f"bad {p}.{k}"}
          for p in range(n_prompts) for k in range(per_prompt)]


def test_a_single_file_holds_out_an_eval_split_by_prompt(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  path = _jsonl(tmp_path / "one.jsonl", _pairs_by_prompt())
  holdout = tfds_builders.Holdout("test", 0.1, seed=3)
  load = lambda split, h=holdout, cache="tfds": tfds_builders.load_preference_source(  # noqa
      path, split, str(tmp_path / cache), holdout=h)
  train, test = list(load("train")), list(load("test"))
  assert len(test) == 6 and len(train) == 54  # 10% of 60 records, whole prompts of 3
  train_prompts, test_prompts = {r["prompt"] for r in train}, {r["prompt"] for r in test}
  assert not train_prompts & test_prompts and len(test_prompts) == 2
  assert [r["example_id"] for r in test] == list(range(6))
  logged = [r.getMessage() for r in caplog.records if "held out" in r.getMessage()]
  assert len(logged) == 1 and "held out 6 of its 60 'train' records by prompt" in logged[0]
  # Seeded: the same seed holds out the same prompts, another seed others.
  assert {r["prompt"] for r in load("test", cache="again")} == test_prompts
  other = {r["prompt"] for r in load("test", tfds_builders.Holdout("test", 0.1, seed=4))}
  assert other != test_prompts
  # At least one record, never every prompt.
  tiny = {r["prompt"] for r in load("test", tfds_builders.Holdout("test", 0.001))}
  assert len(tiny) == 1
  # Errors point at the record's own line, not at its index in the held-out split.
  source = load("test")
  line = 1 + next(i for i, r in enumerate(_pairs_by_prompt()) if r == {
      k: source[0][k] for k in ("prompt", "chosen", "rejected")})
  assert source.locate(0, "rejected") == f"{path}:{line}: record {line - 1}: field 'rejected'"


def test_holdout_from_the_config_and_what_wins(tmp_path):
  path = _jsonl(tmp_path / "one.jsonl", _pairs_by_prompt())
  config = _config(path, tmp_path, **{"data.eval_fraction": 0.2})
  config_check.validate(config, num_devices=1, process_count=1)
  train, test = experiment.load_sources(config, str(tmp_path / "run"))
  assert (len(train), len(test)) == (48, 12)
  # An eval split that exists wins: nothing is held out of train.
  d = tmp_path / "dir"
  _jsonl(d / "train.jsonl", _pairs_by_prompt())
  _jsonl(d / "validation.jsonl", _pairs_by_prompt(2))
  train, test = experiment.load_sources(_config(d, tmp_path), str(tmp_path / "run"))
  assert (len(train), len(test)) == (60, 6)
  # eval_fraction 0 refuses a single file, as before; bad fractions are refused.
  with pytest.raises(config_check.ConfigError, match="only holds the 'train' split"):
    config_check.validate(_config(path, tmp_path, **{"data.eval_fraction": 0.0}),
                          num_devices=1, process_count=1)
  with pytest.raises(config_check.ConfigError, match=r"eval_fraction must be in \[0, 1\)"):
    config_check.validate(_config(path, tmp_path, **{"data.eval_fraction": 1.0}),
                          num_devices=1, process_count=1)
  same = _jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": f"a{i}", "rejected": "b"}
                                          for i in range(4)])
  with pytest.raises(DataError, match="every record has the same prompt"):
    experiment.load_sources(_config(same, tmp_path), str(tmp_path / "run"))


def test_pipeline_modes_for_unpaired_records():
  source = [{"prompt": "p", "chosen": "good", "rejected": None, "chosen_label": 1.0},
            {"prompt": "p", "chosen": "bad", "rejected": None, "chosen_label": 0.0}]
  kw = dict(max_prompt_len=8, max_completion_len=8)
  limits = lambda **more: pipeline.TokenizeLimits(**kw, **more)  # noqa: E731
  assert len(pipeline.tokenize(source, TOK, limits(unpaired="all"))) == 2
  kept = pipeline.tokenize(source, TOK, limits(unpaired="desirable"))
  assert [p.chosen.tolist()[:-1] for p in kept] == [list(b"good")] and kept[0].rejected is None
  with pytest.raises(DataError, match=r"^src: record 0: field 'chosen': missing: an unpaired"):
    pipeline.tokenize(source, TOK, limits(), source_name="src")
  with pytest.raises(ValueError, match="unpaired must be one of"):
    pipeline.tokenize(source, TOK, limits(unpaired="some"))
