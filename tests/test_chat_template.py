"""Conversations rendered with the checkpoint's chat template give exactly the token ids of
transformers' `apply_chat_template`.

No network: a byte-level BPE with Llama 3's split pattern is trained here on a few sentences,
saved with a `tokenizer_config.json` that carries a template written in the shape of a real
one (Llama 3 headers, ChatML, Gemma turns, a template refusing system prompts), and loaded
both by `data.tokenizer.HFTokenizer` and by `transformers.AutoTokenizer`.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from data import pipeline, readers, tfds_builders
from data.chat_template import ChatTemplate, load_chat_template
from data.errors import DataError
from data.tokenizer import HFTokenizer

transformers = pytest.importorskip("transformers")

# Llama 3's pre-tokenizer pattern: "\n\n" stays one piece, so a generation prompt ending in
# it is a token prefix of the conversation, as with the real tokenizer.
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>",
                  "<|endoftext|>", "<bos>", "<eos>", "<pad>", "<start_of_turn>",
                  "<end_of_turn>", "<s>", "</s>"]
CORPUS = ["You are a helpful assistant.", "Sort the digits 3 1 2, please.", "Sure: 1 2 3.",
          "No. Do it yourself!", "What is the capital of France?", "Paris, of course.",
          "héllo wörld 🙂 — ça va?", "system user assistant model", "[INST] [/INST]"]

LLAMA3 = (
    "{%- for message in messages -%}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' -%}"
    "{%- if loop.index0 == 0 -%}{%- set content = bos_token + content -%}{%- endif -%}"
    "{{- content -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}")
CHATML = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') +"
    " message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}")
NO_SYSTEM = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ raise_exception('System role not supported') }}"
    "{%- elif message['role'] == 'user' -%}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + message['content'] + eos_token }}{%- endif -%}"
    "{%- endfor -%}")

SHAPES = {
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "chatml": (CHATML, {"bos_token": None, "eos_token": "<|im_end|>",
                        "pad_token": "<|endoftext|>"}),
    "gemma": (GEMMA, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
}


def _msg(role, content):
  return {"role": role, "content": content}


SYSTEM = _msg("system", "You are a helpful assistant.")
# (prompt messages, chosen completion, rejected completion)
CONVERSATIONS = [
    ([_msg("user", "Sort the digits 3 1 2, please.")],
     [_msg("assistant", "Sure: 1 2 3.")], [_msg("assistant", "No. Do it yourself!")]),
    ([SYSTEM, _msg("user", "What is the capital of France?")],
     [_msg("assistant", "Paris, of course.")], [_msg("assistant", "  héllo wörld 🙂  ")]),
    ([_msg("user", "héllo wörld 🙂 — ça va?"), _msg("assistant", "Sure: 1 2 3."),
      _msg("user", "What is the capital of France?")],
     [_msg("assistant", "Paris, of course.")], [_msg("assistant", "No.")]),
]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
  """A byte-level BPE tokenizer.json holding every template's special tokens."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

  raw = Tokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  raw.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  raw.train_from_iterator(CORPUS * 10, trainer=trainer)
  path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
  raw.save(str(path))
  return str(path)


def write_tokenizer_dir(directory, tokenizer_json: str, template, specials: dict) -> str:
  """A tokenizer directory: the BPE plus a tokenizer_config.json carrying `template`."""
  os.makedirs(directory, exist_ok=True)
  with open(tokenizer_json, encoding="utf-8") as src, \
      open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as dst:
    dst.write(src.read())
  config = {k: v for k, v in specials.items() if v is not None}
  if template is not None:
    config["chat_template"] = template
  config["tokenizer_class"] = "PreTrainedTokenizerFast"
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  return str(directory)


def reference_ids(hf, messages, add_generation_prompt=False) -> list[int]:
  """transformers' `apply_chat_template(tokenize=True)` ids."""
  out = hf.apply_chat_template(messages, tokenize=True,
                               add_generation_prompt=add_generation_prompt)
  return list(out["input_ids"] if hasattr(out, "keys") else out)


def _records(layout: str) -> list[dict]:
  """CONVERSATIONS as raw records of a layout, then normalized by the readers."""
  raw = []
  for prompt, chosen, rejected in CONVERSATIONS:
    if layout == "explicit":
      raw.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    elif layout == "implicit":
      raw.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
    else:  # UltraFeedback-binarized: a string prompt next to whole conversations
      raw.append({"prompt": prompt[-1]["content"], "chosen": prompt + chosen,
                  "rejected": prompt + rejected})
  return [readers.normalize_record(r, file="c.jsonl", index=i) for i, r in enumerate(raw)]


def _pairs(records, tokenizer, source_name=None, **kw):
  kw = dict(dict(max_prompt_len=512, max_completion_len=512), **kw)
  return pipeline.tokenize(records, tokenizer, pipeline.TokenizeLimits(**kw),
                           source_name=source_name)


@pytest.mark.parametrize("layout", ["explicit", "implicit", "ultrafeedback"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_token_ids_equal_apply_chat_template(shape, layout, tokenizer_json, tmp_path):
  template, specials = SHAPES[shape]
  d = write_tokenizer_dir(tmp_path / shape, tokenizer_json, template, specials)
  hf = transformers.AutoTokenizer.from_pretrained(d)
  tok = HFTokenizer(d)
  pairs = _pairs(_records(layout), tok)
  assert len(pairs) == len(CONVERSATIONS)
  for pair, (prompt, chosen, rejected) in zip(pairs, CONVERSATIONS):
    assert pair.prompt.tolist() == reference_ids(hf, prompt, add_generation_prompt=True)
    for ids, completion in ((pair.chosen, chosen), (pair.rejected, rejected)):
      want = reference_ids(hf, prompt + completion)
      if tok.eos_id not in want[len(pair.prompt):]:
        want = want + [tok.eos_id]  # a turn end that is not the eos: the eos follows it
      assert pair.prompt.tolist() + ids.tolist() == want
  if specials["bos_token"]:  # written once, by the template
    assert pairs[0].prompt[0] == tok.bos_id and pairs[0].prompt[1] != tok.bos_id
  if shape == "llama3":  # its turns end with the eos: exactly the template's ids
    assert pairs[0].chosen[-1] == tok.eos_id
    assert pairs[0].chosen.tolist().count(tok.eos_id) == 1


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_rendered_text_equals_transformers(shape, tokenizer_json, tmp_path):
  template, specials = SHAPES[shape]
  d = write_tokenizer_dir(tmp_path / shape, tokenizer_json, template, specials)
  hf = transformers.AutoTokenizer.from_pretrained(d)
  ours = HFTokenizer(d).chat_template
  for prompt, chosen, _ in CONVERSATIONS:
    for messages, gen in ((prompt, True), (prompt + chosen, False)):
      assert ours.render(messages, add_generation_prompt=gen) == hf.apply_chat_template(
          messages, tokenize=False, add_generation_prompt=gen)


def test_template_helpers_match_transformers(tokenizer_json, tmp_path):
  """tojson's options and non-ASCII text, namespace, loop controls, a generation block."""
  template = (
      "{%- set ns = namespace(turns=0) -%}"
      "{%- for m in messages -%}"
      "{%- if m['role'] == 'system' -%}{%- continue -%}{%- endif -%}"
      "{%- set ns.turns = ns.turns + 1 -%}"
      "{{ m | tojson }}|{{ m | tojson(indent=2) }}|{{ m | tojson(separators=(',', ':')) }}"
      "{%- if m['role'] == 'assistant' -%}{% generation %}{{ m['content'] }}{% endgeneration %}"
      "{%- endif -%}"
      "{%- if ns.turns > 1 -%}{%- break -%}{%- endif -%}"
      "{%- endfor -%}{{ ns.turns }}{{ dict(a=1) | tojson }}{{ eos_token }}")
  d = write_tokenizer_dir(tmp_path / "t", tokenizer_json, template,
                          {"bos_token": "<s>", "eos_token": "</s>"})
  hf = transformers.AutoTokenizer.from_pretrained(d)
  messages = [SYSTEM, _msg("user", "héllo wörld 🙂 <b>"), _msg("assistant", "Sure."),
              _msg("user", "never reached")]
  ours = HFTokenizer(d).chat_template.render(messages)
  assert ours == hf.apply_chat_template(messages, tokenize=False)
  assert "héllo wörld 🙂 <b>" in ours  # not escaped to \\u00e9 or &lt;b&gt;
  year = ChatTemplate("{{ strftime_now('%Y') }}").render([])
  assert year.isdigit() and len(year) == 4
  with pytest.raises(Exception, match="underscore"):
    ChatTemplate("{% set ns = namespace(_x=1) %}").render([])


def test_where_the_template_is_read_from(tmp_path):
  named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
  assert load_chat_template(str(tmp_path), {"chat_template": named}, {}).source == "D"
  assert load_chat_template(str(tmp_path), {}, {}) is None
  with pytest.raises(ValueError, match="none named 'default'"):
    load_chat_template(str(tmp_path), {"chat_template": named[:1]}, {})
  # chat_template.jinja wins over the config's key, as in transformers.
  (tmp_path / "chat_template.jinja").write_text("J")
  assert load_chat_template(str(tmp_path), {"chat_template": "C"}, {}).source == "J"
  with pytest.raises(ValueError, match="not a valid Jinja template"):
    ChatTemplate("{% for %}")


def _jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


def test_a_template_refusing_a_system_prompt_names_the_record(tokenizer_json, tmp_path):
  d = write_tokenizer_dir(tmp_path / "tok", tokenizer_json, NO_SYSTEM,
                          {"bos_token": "<s>", "eos_token": "</s>"})
  hf = transformers.AutoTokenizer.from_pretrained(d)
  prompt, chosen, rejected = CONVERSATIONS[1]  # has a system prompt
  with pytest.raises(Exception, match="System role not supported"):
    hf.apply_chat_template(prompt, tokenize=False)
  data = tmp_path / "prefs"
  data.mkdir()
  _jsonl(data / "train.jsonl", [{"prompt": p, "chosen": c, "rejected": r}
                                for p, c, r in CONVERSATIONS[:2]])
  source = tfds_builders.load_preference_source(str(data), "train", str(tmp_path / "tfds"))
  with pytest.raises(DataError) as info:
    _pairs(source, HFTokenizer(d))
  message = str(info.value)
  assert message.startswith(f"{data}/train.jsonl:2: record 1: field 'prompt': the chat "
                            f"template of "), message
  assert message.endswith("refused the conversation: System role not supported"), message
  # Without a system prompt the same template is fine (and ends turns with its eos).
  pairs = _pairs(_records("explicit")[:1], HFTokenizer(d))
  want = reference_ids(hf, CONVERSATIONS[0][0] + CONVERSATIONS[0][1])
  assert pairs[0].prompt.tolist() + pairs[0].chosen.tolist() == want


def _write_ab_tokenizer(directory, template):
  """A BPE whose one merge joins "a" and "b": a prompt ending in "a" before a completion
  starting with "b" is no token prefix of the conversation."""
  from tokenizers import Tokenizer, models

  vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, "ab": 5, "\n": 6}
  raw = Tokenizer(models.BPE(vocab, [("a", "b")]))
  raw.add_special_tokens(["<s>", "</s>"])
  os.makedirs(directory, exist_ok=True)
  raw.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}, f)
  return str(directory)


def test_misaligned_prompt_and_completion_are_refused(tmp_path):
  record = readers.normalize_record(
      {"prompt": [_msg("user", "c")], "chosen": [_msg("assistant", "b")],
       "rejected": [_msg("assistant", "cc")]}, file="x.jsonl", line=1, index=0)
  # The generation prompt "a" merges with the completion's first letter.
  joins = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% else %}"
           "{{ 'a' + m['content'] }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ 'a' }}{% endif %}")
  tok = HFTokenizer(_write_ab_tokenizer(tmp_path / "joins", joins))
  with pytest.raises(DataError, match=r"^x\.jsonl: record 0: field 'chosen': the prompt's "
                                      r"tokens are not a prefix"):
    _pairs([record], tok, source_name="x.jsonl")
  # A generation prompt the whole conversation does not start with (like a "thinking"
  # header added only to the generation prompt).
  differs = ("{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ 'a\n' }}{% endif %}")
  tok = HFTokenizer(_write_ab_tokenizer(tmp_path / "differs", differs))
  with pytest.raises(DataError, match=r"field 'chosen': the chat template's rendering of the "
                                      r"conversation does not start with its rendering of the "
                                      r"prompt"):
    _pairs([record], tok, source_name="x.jsonl")


def test_truncation_keeps_the_template_bos(tokenizer_json, tmp_path):
  template, specials = SHAPES["llama3"]
  tok = HFTokenizer(write_tokenizer_dir(tmp_path / "t", tokenizer_json, template, specials))
  full = _pairs(_records("explicit"), tok)
  cut = _pairs(_records("explicit"), tok, max_prompt_len=6)
  for a, b in zip(full, cut):
    assert b.prompt.tolist() == [tok.bos_id] + a.prompt.tolist()[-5:]
  assert cut.stats.truncated_prompt == len(CONVERSATIONS)


def test_builtin_format_without_a_template_is_logged_once(tokenizer_json, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  tok = HFTokenizer(write_tokenizer_dir(tmp_path / "plain", tokenizer_json, None,
                                        {"eos_token": "</s>"}))
  assert tok.chat_template is None
  records = _records("explicit")
  for _ in range(2):
    pairs = _pairs(records, tok)
  assert pairs[0].prompt.tolist() == tok.encode(records[0]["prompt"])
  assert records[0]["prompt"].startswith("<|user|>\n")
  notes = [r for r in caplog.records if "has no chat template" in r.getMessage()]
  assert len(notes) == 1, [r.getMessage() for r in notes]


# --------------------------------------------------------------------------
# End to end: the tiny DPO preset on a conversational JSONL file with a Llama 3 template.


def _llama3_run(tmp_path, tokenizer_json):
  """(config, records, checkpoint dir): configs/dpo.py:tiny at test size, from a Llama-3
  style checkpoint directory, on conversational train / test JSONL files (16 + 8 records,
  explicit and implicit prompts)."""
  import models
  from flax import nnx
  from tests.conftest import micro_config

  template, specials = SHAPES["llama3"]
  hf_dir = write_tokenizer_dir(tmp_path / "hf", tokenizer_json, template, specials)
  cfg = models.ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, max_position_embeddings=128)
  models.to_hf(models.Transformer(cfg, rngs=nnx.Rngs(0)), hf_dir)
  rng = np.random.default_rng(0)
  records = []
  for i in range(24):
    prompt, chosen, rejected = CONVERSATIONS[i % len(CONVERSATIONS)]
    words = " ".join(rng.choice(["cat", "sat", "mat", "Paris", "digits"], 3))
    prompt = prompt[:-1] + [_msg("user", f"{prompt[-1]['content']} {words}")]
    records.append({"chosen": prompt + chosen, "rejected": prompt + rejected} if i % 2 else
                   {"prompt": prompt, "chosen": chosen, "rejected": rejected})
  data = tmp_path / "prefs"
  data.mkdir()
  _jsonl(data / "train.jsonl", records[:16])
  _jsonl(data / "test.jsonl", records[16:])
  config = micro_config(**{
      "model.init_from": hf_dir, "data.tokenizer": hf_dir, "data.path": str(data),
      "data.data_dir": str(tmp_path / "tfds"), "data.max_prompt_len": 96,
      "data.max_completion_len": 32, "data.buckets": (128,), "total_steps": 2,
      "eval_every": 0, "checkpoint_every": 0})
  return config, records, hf_dir


def test_tiny_dpo_feeds_the_model_apply_chat_template_ids(tokenizer_json, tmp_path):
  from training import experiment

  config, records, hf_dir = _llama3_run(tmp_path, tokenizer_json)
  hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
  exp = experiment.build(config, str(tmp_path / "build"))
  seen = set()
  for split, batches, first in (("train", [exp.train_batches.batch(s) for s in range(2)], 0),
                                ("test", list(exp.eval_batches), 16)):
    for batch in batches:
      for row, example_id in enumerate(batch["example_id"]):
        raw = records[first + int(example_id)]
        prompt = raw.get("prompt") or raw["chosen"][:-1]
        for side in ("chosen", "rejected"):
          ids = batch[f"{side}_ids"][row]
          n = int(batch[f"{side}_attention_mask"][row].sum())
          start = int(np.argmax(batch[f"{side}_loss_mask"][row]))
          assert ids[:start].tolist() == reference_ids(hf, prompt, add_generation_prompt=True)
          assert ids[:n].tolist() == reference_ids(hf, prompt + raw[side][-1:])
        seen.add((split, int(example_id)))
  assert len(seen) == 16 + 8  # every record of both splits
  assert exp.train_batches.stats.truncated_prompt == exp.eval_batches.stats.truncated_prompt == 0


@pytest.mark.slow  # a compile of the step on this checkpoint's shapes: ~15 s
def test_tiny_dpo_trains_on_templated_conversations(tokenizer_json, tmp_path):
  from training import loop

  config, _, _ = _llama3_run(tmp_path, tokenizer_json)
  summary = loop.train(config, str(tmp_path / "run"))
  assert summary["final_step"] == 2
  assert np.isfinite(summary["final_eval"]["eval/loss"])


# --------------------------------------------------------------------------
# Online rounds on a templated math dataset.


def _online_run(tmp_path, tokenizer_json, shape, loss, splits, **online):
  """(config, hf tokenizer) of `loss`'s micro online preset on a random-init checkpoint with
  the `shape` chat template, reading `splits` (name -> records) written as JSONL."""
  import models
  from flax import nnx
  from tests.conftest import micro_online

  template, specials = SHAPES[shape]
  hf_dir = write_tokenizer_dir(tmp_path / "hf", tokenizer_json, template, specials)
  cfg = models.ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, max_position_embeddings=128)
  models.to_hf(models.Transformer(cfg, rngs=nnx.Rngs(0)), hf_dir)
  data = tmp_path / "data"
  data.mkdir()
  for split, records in splits.items():
    _jsonl(data / f"{split}.jsonl", records)
  config = micro_online(loss, str(tmp_path / "tfds"), rounds=1, **online)
  config.model.init_from = config.data.tokenizer = hf_dir
  config.data.update(path=str(data), eval_split=[n for n in splits if n != "train"][0],
                     max_prompt_len=96, max_completion_len=32, buckets=(128,))
  config.update(total_steps=2, batch_size=8)
  return config, transformers.AutoTokenizer.from_pretrained(hf_dir)


def _round_file(workdir, name):
  with open(os.path.join(workdir, "round_1", name)) as f:
    return json.load(f)


def _prompt_of(records, text):
  """The record whose prompt messages render (built-in format) to `text`."""
  return next(r for r in records
              if readers.render_messages(r["prompt"]) + readers.GENERATION_HEADER == text)


def test_online_round_samples_after_the_templates_generation_prompt(tokenizer_json, tmp_path):
  """A DNO round on conversational records with reference answers and a Llama 3 template:
  every sampled prompt is `apply_chat_template(prompt, add_generation_prompt=True)`, the
  teacher candidate is the chosen turn as training tokenizes it, and the verifier judges
  answers against each record's `answer` (the teacher states it, so it is always right)."""
  from training import rounds

  records = []
  for i in range(24):
    a, b = divmod(i * 7 + 3, 10)
    prompt = [SYSTEM, _msg("user", f"What is {a} + {b}?")] if i % 2 else [
        _msg("user", f"What is {a} + {b}?")]
    records.append({"prompt": prompt,
                    "chosen": [_msg("assistant", f"{a} + {b} = \\boxed{{{a + b}}}")],
                    "rejected": [_msg("assistant", "No idea.")], "answer": a + b})
  config, hf = _online_run(tmp_path, tokenizer_json, "llama3", "dno",
                           {"train": records[:16], "test": records[16:]}, teacher=True,
                           sft_steps=0, num_prompts=16, eval_prompts=8)
  workdir = str(tmp_path / "run")
  summary = rounds.iterate(config, workdir)
  assert [r["round"] for r in summary["rounds"]] == [0, 1]
  samples = _round_file(workdir, "samples.json")
  assert len(samples["prompts"]) == 16
  for p in samples["prompts"]:
    record = _prompt_of(records[:16], p["prompt"])
    assert p["answer"] == str(record["answer"])
    prompt_ids = reference_ids(hf, record["prompt"], add_generation_prompt=True)
    assert p["ids"] == prompt_ids
    assert p["teacher"] == reference_ids(hf, record["prompt"] + record["chosen"])[
        len(prompt_ids):]
  correct = np.asarray(_round_file(workdir, "scores.json")["correct"])
  assert correct.shape == (16, config.online.num_samples + 1)
  np.testing.assert_array_equal(correct[:, -1], 1.0)  # the teacher's boxed sum
  assert 0.0 <= _round_file(workdir, "eval.json")["eval/accuracy"] <= 1.0  # answers: accuracy


def test_the_verifier_refuses_a_record_without_an_answer_before_training(tokenizer_json,
                                                                         tmp_path):
  from tests.conftest import micro_online
  from training import rounds

  data = tmp_path / "chat"
  data.mkdir()
  rows = [{"prompt": f"Say hi {i}", "chosen": "hi", "rejected": "no", "answer": "hi"}
          for i in range(12)]
  del rows[5]["answer"]
  _jsonl(data / "train.jsonl", rows)
  _jsonl(data / "test.jsonl", rows[:4])
  config = micro_online("dno", str(tmp_path / "tfds"), rounds=1, sft_steps=0)
  config.data.path = str(data)
  with pytest.raises(DataError, match=r"train\.jsonl:6: record 5: field 'answer': missing"):
    rounds.iterate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "round_0" / "policy")


@pytest.mark.long
def test_prime_rounds_on_a_prompt_only_math_set(tokenizer_json, tmp_path):
  """PRIME on prompts alone (Eurus-2-RL-Data's layout: messages and
  `reward_model.ground_truth`) through a ChatML template: the rows are the sampled groups,
  each response labelled by the math verifier against its prompt's reference; an SFT
  warm-up, which needs chosen responses, is refused before any compute."""
  from training import rounds

  records = [{"prompt": [_msg("user", f"What is {i} + {i}? Put it in \\boxed{{}}.")],
              "reward_model": {"ground_truth": str(2 * i), "style": "rule"}}
             for i in range(24)]
  config, hf = _online_run(tmp_path, tokenizer_json, "chatml", "prime",
                           {"train": records[:16], "validation": records[16:]},
                           sft_steps=150, num_prompts=8, eval_prompts=8)
  with pytest.raises(DataError, match=r"train\.jsonl:1: record 0: field 'chosen': missing; "
                                      r"config\.online\.sft_steps=150 train on"):
    rounds.iterate(config, str(tmp_path / "sft"))
  config.online.sft_steps = 0
  workdir = str(tmp_path / "run")
  summary = rounds.iterate(config, workdir)
  assert [r["round"] for r in summary["rounds"]] == [0, 1]
  for p in _round_file(workdir, "samples.json")["prompts"]:
    record = _prompt_of(records, p["prompt"])
    assert p["answer"] == record["reward_model"]["ground_truth"] and p["teacher"] is None
    assert p["ids"] == reference_ids(hf, record["prompt"], add_generation_prompt=True)
  rows = _round_file(workdir, "rows.json")
  assert len(rows) == 8 * config.online.num_samples  # accuracy_range (0, 1) keeps every group
  assert {r["extras"]["chosen_label"] for r in rows} <= {0.0, 1.0}
  with open(os.path.join(workdir, "round_0", "eval.json")) as f:
    assert "eval/accuracy" in json.load(f)
