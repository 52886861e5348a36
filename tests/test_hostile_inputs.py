"""Hostile inputs are refused before compute, with messages that name file, line and field.

The cases themselves live in ``experiments/reliability_table.py`` (which writes them, with
the messages they produce, to docs/reliability.md); here each one is run and checked, the
doc is checked to list them all, and the real command line and ``experiment.build`` are checked
to refuse before any compute starts.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from configs import dpo
from data import pipeline
from data.errors import DataError
from data.tokenizer import ByteTokenizer
from experiments import reliability_table as table
from tests.conftest import ROOT, micro_config
from training import config_check
from training import experiment

_FILE_GROUPS = ("JSON Lines", "JSON", "Parquet", "Conversational", "Layouts", "Paths",
                "Pipeline")


@pytest.mark.parametrize("case", table.CASES, ids=lambda c: f"{c.group}: {c.what}")
def test_case_fails_as_documented(case, tmp_path):
  scratch = str(tmp_path.resolve())
  try:
    logged = case.run(scratch)
  except Exception as e:  # noqa: BLE001 -- the type is what is checked
    assert case.error is not None and isinstance(e, case.error), repr(e)[:500]
    message = str(e).replace(scratch, "DIR")
  else:
    assert case.error is None, f"{case.what}: not refused"
    message = logged
  assert case.expect in message, message
  if case.error is DataError and case.group in _FILE_GROUPS:
    assert message.startswith("DIR/"), message  # names the file


def test_doc_lists_every_case_with_its_message():
  with open(table.DOC, encoding="utf-8") as f:
    doc = f.read()
  assert table.BEGIN in doc and table.END in doc
  rows = {line.split(" | ")[0][2:]: line for line in doc.splitlines() if line.startswith("| ")}
  for case in table.CASES:
    row = rows.get(table.cell(case.what))
    assert row is not None, f"docs/reliability.md lacks {case.what!r}: rerun the script"
    assert table.cell(case.expect) in row, f"stale row (rerun the script): {row}"
  totals = rows["**all**"].split(" | ")
  assert int(totals[2].strip("*")) >= 500 and totals[-1].strip(" |*") == "0", totals
  assert "\n## Preemption and resume\n" in doc


@pytest.mark.parametrize("preset", list(dpo.PRESETS))
def test_presets_pass_the_added_checks(preset):
  config_check.validate(dpo.get_config(preset), num_devices=1, process_count=1)


# --------------------------------------------------------------------------
# The real command line refuses before anything is written.


@pytest.mark.parametrize("flag, expected", [
    ("--config.loss.bogus=1", "bogus"),
    ("--config.loss.beta=abc", "could not convert string to float: 'abc'"),
    ("--config.loss.beta=-1", "config.loss.beta must be > 0.0"),
    ("--config.data.path={tmp}/missing.jsonl", "config.data.path: {tmp}/missing.jsonl does not "
     "exist"),
])
def test_cli_refuses_before_compute(flag, expected, tmp_path):
  workdir = tmp_path / "workdir"
  done = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=configs/dpo.py:tiny",
       f"--workdir={workdir}", flag.format(tmp=tmp_path)],
      cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode != 0
  assert expected.format(tmp=tmp_path) in done.stderr, done.stderr[-2000:]
  assert not workdir.exists()


# --------------------------------------------------------------------------
# The loop: pipeline options come from the config, counts are logged, errors come first.


class _ComputeStarted(Exception):
  pass


def _local_data(tmp_path, extra_train):
  d = tmp_path / "prefs"
  d.mkdir()
  good = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(10)]
  for name, records in (("train.jsonl", good + extra_train), ("test.jsonl", good[:4])):
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(d)


def _build_until_compute(tmp_path, monkeypatch, extra_train, **overrides):
  def no_compute(*args, **kwargs):
    raise _ComputeStarted

  monkeypatch.setattr(experiment, "init_params", no_compute)
  config = micro_config(**{"data.path": _local_data(tmp_path, extra_train),
                           "data.data_dir": str(tmp_path / "tfds"), **overrides})
  experiment.build(config, str(tmp_path / "run"))


def test_identical_pair_error_stops_build_before_compute(tmp_path, monkeypatch):
  same = {"prompt": "p", "chosen": "x", "rejected": "x"}
  with pytest.raises(DataError, match=r"prefs/train\.jsonl:12: record 11: field 'rejected': "
                                      r"identical to 'chosen'"):
    _build_until_compute(tmp_path, monkeypatch, [{"prompt": "p", "chosen": "y",
                                                  "rejected": "z"}, same],
                         **{"data.on_identical_pair": "error"})


def test_dropped_and_truncated_counts_are_logged_per_split(tmp_path, monkeypatch, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  extra = [{"prompt": "p", "chosen": "x", "rejected": "x"},
           {"prompt": "long " * 20, "chosen": "x", "rejected": "y"}]
  with pytest.raises(_ComputeStarted):
    _build_until_compute(tmp_path, monkeypatch, extra, **{"data.on_long_prompt": "drop"})
  lines = [r.getMessage() for r in caplog.records if "data split" in r.getMessage()]
  assert lines == [
      "data split 'train': 12 pairs: 10 kept, 2 dropped (1 chosen == rejected, 1 prompt over "
      "max_prompt_len, 0 no signal after truncation); truncated: 0 prompts, 0 completions",
      "data split 'test': 4 pairs: 4 kept, 0 dropped (0 chosen == rejected, 0 prompt over "
      "max_prompt_len, 0 no signal after truncation); truncated: 0 prompts, 0 completions"]


# --------------------------------------------------------------------------
# Pipeline options on plain record lists.

TOK = ByteTokenizer()
_KW = dict(max_prompt_len=4, max_completion_len=4)


def test_identical_pairs_drop_or_error():
  source = [{"prompt": "p", "chosen": "x", "rejected": "y"},
            {"prompt": "p", "chosen": "same", "rejected": "same"}]
  pairs = pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(**_KW))
  assert [p.example_id for p in pairs] == [0]
  assert (pairs.stats.dropped, pairs.stats.dropped_identical) == (1, 1)
  with pytest.raises(DataError, match=r"^prefs\.jsonl: record 1: field 'rejected': identical"):
    pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(on_identical_pair="error", **_KW),
                      source_name="prefs.jsonl")
  with pytest.raises(ValueError, match="on_identical_pair must be one of"):
    pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(on_identical_pair="keep", **_KW))


def test_long_prompts_truncate_or_drop():
  source = [{"prompt": "abcdef", "chosen": "x", "rejected": "y"},
            {"prompt": "ab", "chosen": "x", "rejected": "y"}]
  kept = pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(**_KW))
  assert kept[0].prompt.tolist() == [TOK.bos_id, *b"def"]  # keeps the end
  assert (len(kept), kept.stats.truncated_prompt, kept.stats.dropped) == (2, 1, 0)
  dropped = pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(on_long_prompt="drop",
                                                                    **_KW))
  assert [p.example_id for p in dropped] == [1]
  s = dropped.stats
  assert (s.dropped, s.dropped_long_prompt, s.truncated_prompt) == (1, 1, 0)
  with pytest.raises(ValueError, match="on_long_prompt must be one of"):
    pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(on_long_prompt="cut", **_KW))


def test_nothing_usable_is_a_data_error_naming_the_source():
  source = [{"prompt": "p", "chosen": "x", "rejected": "x"}]
  pairs = pipeline.tokenize(source, TOK, pipeline.TokenizeLimits(**_KW),
                            source_name="eval.jsonl")
  kw = dict(buckets=(8,))
  with pytest.raises(DataError, match=r"^eval\.jsonl: no usable pairs to evaluate"):
    pipeline.EvalBatches(pairs, batch_size=1, **kw)
  with pytest.raises(DataError, match=r"^eval\.jsonl: only 0 usable pairs"):
    pipeline.PreferenceBatcher(pairs, batch_size=1, seed=0, **kw)
