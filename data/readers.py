"""Readers for local preference files in TRL's dataset layout.

Accepted inputs (``read_preferences(path, split)``):

* a single ``.jsonl`` / ``.json`` (a list of objects) / ``.parquet`` file,
  which holds the ``train`` split only;
* a directory with one file (or ``name-*`` shards) per split, e.g.
  ``train.jsonl`` + ``test.jsonl``, or Hugging Face style
  ``data/train-00000-of-00001.parquet``. ``test`` and ``validation`` stand in
  for each other when only one of them exists.

Record layouts (README.md, "Data layouts", has the table):

* standard (TRL): ``prompt``, ``chosen``, ``rejected`` are strings;
* conversational (TRL): ``chosen`` / ``rejected`` (and optionally ``prompt``)
  are lists of ``{"role": ..., "content": ...}`` messages, roles ``system``,
  ``user`` or ``assistant``. Without ``prompt`` (TRL's implicit-prompt
  format) the prompt is the longest shared prefix of the two conversations;
* UltraFeedback-binarized: ``prompt`` is a string while ``chosen`` /
  ``rejected`` are whole conversations that repeat the user turn: the shared
  prefix of the conversations is the prompt (the string is then redundant; a
  conversation sharing nothing gets it as its user message), the differing
  tails are the completions; ``score_chosen`` / ``score_rejected`` are read as
  ``chosen_score`` / ``rejected_score``;
* Anthropic HH-RLHF: ``chosen`` / ``rejected`` are transcripts
  (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``) without ``prompt``: the
  prompt is their common prefix up to and including its last
  ``"\\n\\nAssistant:"``, the completions are the rest;
* unpaired (TRL's KTO layout): ``prompt`` / ``completion`` (strings, or
  messages) and a boolean ``label``: one response, desirable or not. Its
  ``rejected`` is None and the label travels as ``chosen_label`` (1 / 0); which
  losses train on such records is the pipeline's business
  (``data.pipeline.UNPAIRED_MODES``);
* prompts only (TRL's prompt-only layout, the prompt sets of online methods:
  RLHFlow's iterative prompts, Eurus-2-RL-Data): ``prompt`` (a string or
  messages) and no response; ``chosen`` and ``rejected`` are None. Only the
  online rounds read them (they sample the responses).

A split holds one layout.

Conversations are kept as messages (``record["messages"]``: the prompt's
messages and each completion's) for ``data.pipeline``, which renders them with
the tokenizer's chat template (``data.chat_template``). Their text fields use
the built-in format, one block per message::

    <|{role}|>\\n{content}\\n

The prompt is its messages rendered, followed by the generation header
``<|assistant|>\\n``; each completion must start with an assistant message
and is rendered without that header, so ``prompt + completion`` is exactly
the rendering of the full conversation. The built-in format is what the
byte-level tokenizer and checkpoints without a template train on.

Every layout may carry the numbers of ``PAIR_FIELDS`` (``chosen_label``,
``rejected_label``, ``preference_prob``, ``chosen_score``, ``rejected_score``):
finite numbers, or null for "not given". They reach the batches unchanged. A
field of ``TOKEN_FIELDS`` in a file is an error (per-token values cannot be
aligned with a tokenizer's tokens from text), not silently dropped.

Every layout may carry a reference ``answer`` (a string or a number: GSM8K's ``#### 42``
solution line, MATH's ``\\boxed{...}``, a bare value), kept as text; the online rounds'
verifier checks sampled answers against it (``training.oracles.VerifierOracle``,
``data.math_answers``).

Every problem raises ``DataError`` naming the file, the line (JSONL, and JSON
syntax errors) or record index, and the field.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterator, Sequence

import numpy as np

from data.errors import DataError, locate

# Bump whenever parsing or rendering changes the produced text: it is mixed
# into the TFDS cache key of local datasets (see data.tfds_builders).
# 2: PAIR_FIELDS are read; 3: messages kept, HH, UltraFeedback, unpaired; 4: `answer` kept
READER_VERSION = "4"

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
ROLES = ("system", "user", "assistant")
GENERATION_HEADER = "<|assistant|>\n"
_FIELDS = ("prompt", "chosen", "rejected", "completion")
# The assistant header of Anthropic HH-RLHF transcripts; the prompt ends with the last one.
HH_ASSISTANT = "\n\nAssistant:"
# UltraFeedback-binarized's names for PAIR_FIELDS.
_FIELD_ALIASES = {"score_chosen": "chosen_score", "score_rejected": "rejected_score"}
_LAYOUTS_HINT = ("expected prompt/chosen/rejected (preference pairs), prompt/completion/label "
                 "(unpaired records) or a prompt alone (online rounds)")
# Optional numbers of a record that travel with its pair into batches as [B] float arrays:
# outcome labels (implicit PRM, PRIME), an oracle's preference probability (DNO's soft
# form) and per-response regression targets (GPO / SPPO).
PAIR_FIELDS = ("chosen_label", "rejected_label", "preference_prob", "chosen_score",
               "rejected_score")
# Per-completion-token extras, collated to [B, T] at the completion positions. They exist
# only for pairs built in memory (an online round): a file cannot align them with tokens.
TOKEN_FIELDS = ("chosen_token_rewards", "rejected_token_rewards", "chosen_advantages",
                # an online round's frozen models (π_ref, π_t), computed once per round
                "ref_chosen_logps", "ref_rejected_logps", "prev_chosen_logps",
                "prev_rejected_logps")


def token_field_side(field: str) -> str:
  """"chosen" or "rejected": the side of a TOKEN_FIELDS name, whose mask it follows."""
  return "rejected" if "rejected" in field else "chosen"
# A requested split falls back to these names, in order.
_SPLIT_ALIASES = {"test": ("test", "validation"), "validation": ("validation", "test")}


def render_message(role: str, content: str) -> str:
  return f"<|{role}|>\n{content}\n"


def render_messages(messages: list[dict]) -> str:
  """Renders a validated conversation with the template documented above."""
  return "".join(render_message(m["role"], m["content"]) for m in messages)


# --------------------------------------------------------------------------
# Locating files


def _split_of(filename: str) -> str | None:
  """'train-00000-of-00002.parquet' -> 'train'; None for unsupported files."""
  stem, ext = os.path.splitext(filename)
  if ext not in EXTENSIONS or filename.startswith("."):
    return None
  return stem.split("-", 1)[0]


def _files_by_split(directory: str) -> dict[str, list[str]]:
  """Split name -> sorted files, from ``directory`` or else ``directory/data``."""
  for d in (directory, os.path.join(directory, "data")):
    if not os.path.isdir(d):
      continue
    found: dict[str, list[str]] = {}
    for name in sorted(os.listdir(d)):
      split = _split_of(name)
      if split and os.path.isfile(os.path.join(d, name)):
        found.setdefault(split, []).append(os.path.join(d, name))
    if found:
      return found
  return {}


def _check_exists(path: str) -> None:
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file or directory")


def available_splits(path: str) -> list[str]:
  """Split names readable from ``path`` (a single file only has 'train')."""
  _check_exists(path)
  if os.path.isfile(path):
    return ["train"]
  return sorted(_files_by_split(path))


def split_files(path: str, split: str) -> list[str]:
  """The files holding ``split`` under ``path``, in reading order."""
  _check_exists(path)
  if os.path.isfile(path):
    if os.path.splitext(path)[1] not in EXTENSIONS:
      raise DataError(f"{path}: unsupported file type; expected one of "
                      f"{', '.join(EXTENSIONS)}")
    if split != "train":
      raise DataError(f"{path}: a single file only holds the 'train' split, "
                      f"not {split!r}; use a directory with {split}.* files")
    return [path]
  by_split = _files_by_split(path)
  for name in _SPLIT_ALIASES.get(split, (split,)):
    if name in by_split:
      files = by_split[name]
      exts = {os.path.splitext(f)[1] for f in files}
      if len(exts) > 1:
        raise DataError(f"{path}: split {name!r} has files of several types "
                        f"({', '.join(sorted(exts))}); keep one")
      return files
  raise DataError(f"{path}: no {split!r} split; found splits {sorted(by_split)} "
                  f"(expected files like {split}.jsonl, {split}.json or {split}.parquet)")


def held_out_of(path: str, eval_split: str) -> str | None:
  """The split an eval split missing from ``path`` can be held out of: the path's only
  split. None when ``eval_split`` exists, or when the path has several splits (then
  naming one of them is the fix, not holding records out)."""
  splits = available_splits(path)
  names = _SPLIT_ALIASES.get(eval_split, (eval_split,))
  if len(splits) != 1 or any(name in splits for name in names):
    return None
  return splits[0]


# --------------------------------------------------------------------------
# Validating one record


def _as_text(value, file, line, index, field) -> str:
  """A field value as a str that is valid UTF-8, else DataError."""
  if isinstance(value, bytes):  # Parquet binary columns
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{locate(file, line=line, record=index, field=field)}: "
                      f"not valid UTF-8 (byte {e.start})") from None
  if not isinstance(value, str):
    raise DataError(f"{locate(file, line=line, record=index, field=field)}: "
                    f"must be a string, got {type(value).__name__}")
  try:
    value.encode("utf-8")  # JSON "\ud800" escapes give lone surrogates
  except UnicodeEncodeError:
    raise DataError(f"{locate(file, line=line, record=index, field=field)}: "
                    f"not valid UTF-8 (lone surrogate)") from None
  return value


def _messages(value, file, line, index, field) -> list[dict]:
  where = lambda sub: locate(file, line=line, record=index, field=sub)  # noqa: E731
  if not isinstance(value, list):
    raise DataError(f"{where(field)}: must be a list of messages in the "
                    f"conversational format, got {type(value).__name__}")
  out = []
  for i, msg in enumerate(value):
    sub = f"{field}[{i}]"
    if not isinstance(msg, dict):
      raise DataError(f"{where(sub)}: a message must be an object with "
                      f"'role' and 'content', got {type(msg).__name__}")
    for key in ("role", "content"):
      if msg.get(key) is None:
        raise DataError(f"{where(f'{sub}.{key}')}: missing")
    role = _as_text(msg["role"], file, line, index, f"{sub}.role")
    if role not in ROLES:
      raise DataError(f"{where(f'{sub}.role')}: unknown role {role!r}; "
                      f"expected one of {', '.join(ROLES)}")
    content = _as_text(msg["content"], file, line, index, f"{sub}.content")
    out.append({"role": role, "content": content})
  return out


def _completion_text(messages: list[dict], offset: int, file, line, index, field) -> str:
  """Renders completion messages (starting at conversation index ``offset``)."""
  where = locate(file, line=line, record=index, field=f"{field}[{offset}]")
  if not messages:
    raise DataError(f"{locate(file, line=line, record=index, field=field)}: empty "
                    f"completion (chosen and rejected share every message)")
  if messages[0]["role"] != "assistant":
    raise DataError(f"{where}: the completion must start with an 'assistant' "
                    f"message, got role {messages[0]['role']!r}")
  if not any(m["content"].strip() for m in messages):
    raise DataError(f"{where}: empty completion")
  return render_messages(messages)[len(GENERATION_HEADER):]


def _shared_prefix(a: list, b: list) -> int:
  """How many leading messages two conversations share."""
  k = 0
  while k < min(len(a), len(b)) and a[k] == b[k]:
    k += 1
  return k


def _conversation(record: dict, file, line, index) -> dict:
  """A conversational record (TRL's, or UltraFeedback's string prompt) -> prompt messages
  and each side's completion messages, as text and as ``messages``."""
  sides = ("completion",) if record.get("chosen") is None else ("chosen", "rejected")
  convs = {side: _messages(record[side], file, line, index, side) for side in sides}
  prompt, offset = record.get("prompt"), 0
  if isinstance(prompt, list):
    prompt_msgs = _messages(prompt, file, line, index, "prompt")
  else:
    # Implicit prompt (TRL), or UltraFeedback's string prompt next to whole conversations:
    # the conversations' shared prefix is the prompt either way.
    text = None if prompt is None else _as_text(prompt, file, line, index, "prompt")
    if len(sides) == 2:
      offset = _shared_prefix(convs["chosen"], convs["rejected"])
    elif text is None:
      raise DataError(f"{locate(file, line=line, record=index, field='prompt')}: missing "
                      f"(an unpaired record needs prompt, completion and label)")
    prompt_msgs = convs[sides[0]][:offset]
    if text is not None and not offset:
      prompt_msgs = [{"role": "user", "content": text}]
    convs = {side: conv[offset:] for side, conv in convs.items()}
  texts = {side: _completion_text(conv, offset, file, line, index, side)
           for side, conv in convs.items()}
  return {"prompt": render_messages(prompt_msgs) + GENERATION_HEADER, **texts,
          "messages": {"prompt": prompt_msgs, **convs}}


def _transcripts(record: dict, file, line, index) -> dict:
  """Anthropic HH-RLHF: chosen / rejected transcripts; the prompt is their common prefix up
  to and including its last assistant header."""
  chosen = _as_text(record["chosen"], file, line, index, "chosen")
  rejected = _as_text(record["rejected"], file, line, index, "rejected")
  end = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
  if end < 0:
    raise DataError(f"{locate(file, line=line, record=index, field='prompt')}: missing (the "
                    f"standard format needs prompt, chosen and rejected; transcripts without "
                    f"a prompt need a shared {HH_ASSISTANT!r} header, as in Anthropic HH-RLHF)")
  end += len(HH_ASSISTANT)
  return {"prompt": chosen[:end], "chosen": chosen[end:], "rejected": rejected[end:]}


def _label(record: dict, file, line, index) -> float:
  """An unpaired record's ``label`` (true: a desirable completion) as 1.0 / 0.0."""
  value = record.get("label")
  where = locate(file, line=line, record=index, field="label")
  if value is None:
    raise DataError(f"{where}: missing (an unpaired record needs prompt, completion and a "
                    f"boolean label)")
  if isinstance(value, (bool, np.bool_)) or value in (0, 1):
    return float(value)
  raise DataError(f"{where}: must be true or false, got {value!r}")


def _prompt_only(record: dict, file, line, index) -> dict:
  """A prompt without responses (the prompt sets of online methods): its text (a
  conversation in the built-in format, with the generation header) and 'chosen' /
  'rejected' None."""
  prompt = record["prompt"]
  if isinstance(prompt, list):
    messages = _messages(prompt, file, line, index, "prompt")
    return {"prompt": render_messages(messages) + GENERATION_HEADER, "chosen": None,
            "rejected": None, "messages": {"prompt": messages, "chosen": None, "rejected": None}}
  text = _as_text(prompt, file, line, index, "prompt")
  if not text.strip():
    raise DataError(f"{locate(file, line=line, record=index, field='prompt')}: empty")
  return {"prompt": text, "chosen": None, "rejected": None}


def _unpaired(record: dict, file, line, index) -> dict:
  """TRL's unpaired (KTO) layout: prompt / completion / label, text or messages."""
  label = _label(record, file, line, index)
  if record.get("chosen_label") is not None:
    raise DataError(f"{locate(file, line=line, record=index, field='chosen_label')}: an "
                    f"unpaired record gives its label as 'label' only")
  if isinstance(record["completion"], list):
    out = _conversation(record, file, line, index)
    out["chosen"] = out.pop("completion")
    out["messages"]["chosen"] = out["messages"].pop("completion")
    out["messages"]["rejected"] = None
  else:
    if record.get("prompt") is None:
      raise DataError(f"{locate(file, line=line, record=index, field='prompt')}: missing "
                      f"(an unpaired record needs prompt, completion and label)")
    out = {"prompt": _as_text(record["prompt"], file, line, index, "prompt"),
           "chosen": _as_text(record["completion"], file, line, index, "completion")}
    if not out["chosen"].strip():
      raise DataError(f"{locate(file, line=line, record=index, field='completion')}: empty")
  return {**out, "rejected": None, "chosen_label": label}


def normalize_record(record, *, file: str, line: int | None = None,
                     index: int | None = None) -> dict:
  """One raw record of any layout -> the project's record.

  Returns {'prompt', 'chosen', 'rejected'} text ('rejected' None for an unpaired record),
  the PAIR_FIELDS it gives, and for conversations 'messages': {'prompt', 'chosen',
  'rejected'} lists of messages.
  """
  if not isinstance(record, dict):
    raise DataError(f"{locate(file, line=line, record=index)}: a record must be an "
                    f"object, got {type(record).__name__}")
  numbers = {**_numbers(record, file, line, index), **_answer(record, file, line, index)}
  if record.get("chosen") is None and record.get("completion") is not None:
    return {**numbers, **_unpaired(record, file, line, index)}
  if all(record.get(f) is None for f in ("chosen", "rejected", "completion")) and (
      record.get("prompt") is not None):
    return {**numbers, **_prompt_only(record, file, line, index)}
  for field in ("chosen", "rejected"):
    if record.get(field) is None:
      raise DataError(f"{locate(file, line=line, record=index, field=field)}: missing "
                      f"({_LAYOUTS_HINT})")
  chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
  if isinstance(chosen, list) or isinstance(rejected, list):
    return {**_conversation(record, file, line, index), **numbers}
  if prompt is None:
    out = _transcripts(record, file, line, index)
  else:
    out = {f: _as_text(record[f], file, line, index, f) for f in ("prompt", "chosen", "rejected")}
  for field in ("chosen", "rejected"):
    if not out[field].strip():
      raise DataError(f"{locate(file, line=line, record=index, field=field)}: empty")
  return {**out, **numbers}


def _numbers(record: dict, file, line, index) -> dict:
  """The record's PAIR_FIELDS (or their aliases) as floats (null = not given); TOKEN_FIELDS
  are refused."""
  where = lambda field: locate(file, line=line, record=index, field=field)  # noqa: E731
  for field in TOKEN_FIELDS:
    if record.get(field) is not None:
      raise DataError(f"{where(field)}: per-token values cannot be read from a file (they "
                      f"must align with the tokenizer's tokens); they are computed during "
                      f"training")
  named, alias_of = record, {}
  for alias, field in _FIELD_ALIASES.items():
    if record.get(alias) is None:
      continue
    if record.get(field) is not None:
      raise DataError(f"{where(alias)}: given with {field!r}, its other name; give one")
    named, alias_of[field] = {**named, field: record[alias]}, alias
  return pair_numbers(named, lambda field: where(alias_of.get(field, field)))


def _answer(record: dict, file, line, index) -> dict:
  """{'answer': text} when the record gives a reference answer (a non-empty string or a
  finite number) as `answer`, or as `reward_model.ground_truth` (Eurus-2-RL-Data's layout,
  PRIME's data), else {}."""
  value, field = record.get("answer"), "answer"
  nested = record.get("reward_model")
  if value is None and isinstance(nested, dict) and nested.get("ground_truth") is not None:
    value, field = nested["ground_truth"], "reward_model.ground_truth"  # Eurus-2-RL-Data
  if value is None:
    return {}
  where = locate(file, line=line, record=index, field=field)
  if isinstance(value, str):
    if not value.strip():
      raise DataError(f"{where}: empty (give the reference answer, or leave the field out)")
    return {"answer": value.strip()}
  if (isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
      and math.isfinite(float(value))):
    return {"answer": str(value)}
  raise DataError(f"{where}: must be a string or a finite number (the reference answer), got "
                  f"{value!r}")


def pair_numbers(record, where) -> dict:
  """The PAIR_FIELDS a record gives (None = not given) as floats; anything but a finite
  number is a DataError at `where(field)`. Files and in-memory records share this rule."""
  out = {}
  for field in PAIR_FIELDS:
    value = record.get(field)
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
        not math.isfinite(float(value))):
      raise DataError(f"{where(field)}: must be a finite number or null, got {value!r}")
    out[field] = float(value)
  return out


# --------------------------------------------------------------------------
# Reading files


def _loads(text: str, file: str, line: int | None) -> object:
  """``json.loads`` whose every failure is a DataError naming the file (and line)."""
  where = file if line is None else f"{file}:{line}"
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    # Several objects in a .json file: the usual cause is JSON Lines misnamed.
    hint = (" (JSON Lines? name the file .jsonl)"
            if e.msg == "Extra data" and line is None else "")
    row = e.lineno if line is None else line
    raise DataError(f"{file}:{row}: invalid JSON: {e.msg} (column {e.colno}){hint}") from None
  except RecursionError:  # the C scanner recurses once per nesting level
    raise DataError(f"{where}: invalid JSON: nested too deeply") from None
  except ValueError as e:  # e.g. an integer literal over Python's 4300-digit limit
    raise DataError(f"{where}: invalid JSON: {str(e).split(';')[0]}") from None


def _has_escaped_bytes(value) -> bool:
  """True for a str holding bytes that 'surrogateescape' decoding stood in for."""
  return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def _undecodable_field(record) -> str | None:
  """The first field of a 'surrogateescape'-parsed record that holds undecodable bytes.

  Walks only the layout records use (fields, then messages' role / content), so
  a hostile, deeply nested value costs nothing; None when no such field exists.
  """
  if not isinstance(record, dict):
    return None
  for field in _FIELDS:
    value = record.get(field)
    if _has_escaped_bytes(value):
      return field
    for i, msg in enumerate(value if isinstance(value, list) else ()):
      for key in ("role", "content"):
        if isinstance(msg, dict) and _has_escaped_bytes(msg.get(key)):
          return f"{field}[{i}].{key}"
  return None


def _utf8_error(raw: bytes, e: UnicodeDecodeError, file: str, line: int, what: str,
                index: int | None = None) -> DataError:
  """A DataError for undecodable bytes that names the record and field when the JSON
  still parses (``index``: the record index a JSON Lines line would have)."""
  try:
    parsed = json.loads(raw.decode("utf-8", errors="surrogateescape"))
  except (ValueError, RecursionError):
    parsed = None
  field = None
  if isinstance(parsed, dict):
    field = _undecodable_field(parsed)
  elif isinstance(parsed, list) and what == "file":  # a .json list of records
    for i, record in enumerate(parsed):
      field = _undecodable_field(record)
      if field is not None:
        index = i
        break
  if field is None:
    index = None  # the bytes broke the JSON itself: only the line is known
  return DataError(f"{locate(file, line=line, record=index, field=field)}: not valid "
                   f"UTF-8 (byte {e.start} of the {what})")


def _jsonl_lines(file: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, text) of each non-blank line; DataError on bad UTF-8."""
  records = 0
  with open(file, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM
        raw = raw[3:]
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise _utf8_error(raw, e, file, lineno, "line", index=records) from None
      if text.strip():  # blank lines are harmless, e.g. a trailing newline
        records += 1
        yield lineno, text


def _raw_jsonl(file: str) -> list[tuple[int | None, object]]:
  return [(lineno, _loads(text, file, lineno)) for lineno, text in _jsonl_lines(file)]


def _raw_json(file: str) -> list[tuple[int | None, object]]:
  with open(file, "rb") as f:
    raw = f.read()
  if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM
    raw = raw[3:]
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise _utf8_error(raw, e, file, line, "file") from None
  records = _loads(text, file, None)
  if not isinstance(records, list):
    raise DataError(f"{file}: expected a JSON list of records, got "
                    f"{type(records).__name__}")
  return [(None, r) for r in records]


def _raw_parquet(file: str) -> list[tuple[int | None, object]]:
  import pyarrow as pa  # deferred: only Parquet users pay for the import
  import pyarrow.parquet as pq

  try:
    rows = pq.read_table(file).to_pylist()
  # ValueError / OverflowError: a column pyarrow reads but cannot turn into
  # Python objects (e.g. a timestamp outside datetime's range).
  except (pa.ArrowException, OSError, ValueError, OverflowError) as e:
    raise DataError(f"{file}: cannot read Parquet: {e}") from None
  return [(None, r) for r in rows]


# (JSON Lines line number or None, the record as stored) of each record of a file.
_RAW_READERS = {"jsonl": _raw_jsonl, "json": _raw_json, "parquet": _raw_parquet}


def _raw_records(file: str) -> list[tuple[int | None, object]]:
  kind = EXTENSIONS.get(os.path.splitext(file)[1])
  if kind is None:
    raise DataError(f"{file}: unsupported file type; expected one of "
                    f"{', '.join(EXTENSIONS)}")
  try:
    return _RAW_READERS[kind](file)
  except OSError as e:  # unreadable (permissions, a directory named like a file, I/O)
    raise DataError(f"{file}: cannot read: {e.strerror or e}") from None


def read_file(file: str) -> list[dict]:
  """All records of one file, normalized to prompt/chosen/rejected text."""
  return [normalize_record(r, file=file, line=line, index=i)
          for i, (line, r) in enumerate(_raw_records(file))]


def read_column(files: Sequence[str], field: str) -> list:
  """`field` of every record of `files`, in reading order, as stored (None where a record
  lacks it): the columns normalization does not keep, e.g. RewardBench's `subset`."""
  return [r.get(field) if isinstance(r, dict) else None
          for file in files for _, r in _raw_records(file)]


def read_files(files: Sequence[str]) -> list[dict]:
  """The records of one split's files, in order (conversations with their ``messages``).

  A split without records is refused, and so is one mixing layouts (pairs, unpaired
  records, prompts only).
  """
  records: list[dict] = []
  for file in files:
    records.extend(read_file(file))
  if not records:
    raise DataError(f"{', '.join(files)}: no records (only blank lines or an empty "
                    f"list); a split needs at least one preference pair")
  _check_one_layout(records, files)
  return records


def layout_of(record: dict) -> str:
  """"pairs", "unpaired" (prompt/completion/label) or "prompts" (a prompt alone)."""
  if record["chosen"] is None:
    return "prompts"
  return "unpaired" if record["rejected"] is None else "pairs"


_LAYOUT_NAMES = {"pairs": "pairs (prompt/chosen/rejected)",
                 "unpaired": "unpaired (prompt/completion/label)",
                 "prompts": "prompts only (prompt, no responses)"}


def _check_one_layout(records: list[dict], files: Sequence[str]) -> None:
  # A batch holds pairs or single responses, never both (data.pipeline.collate).
  first = layout_of(records[0])
  for i, record in enumerate(records):
    layout = layout_of(record)
    if layout != first:
      field = {"pairs": "chosen", "unpaired": "completion", "prompts": "prompt"}[layout]
      raise DataError(f"{locate_record(files, i, field)}: this split's first record is "
                      f"{_LAYOUT_NAMES[first]}, this one is {_LAYOUT_NAMES[layout]}; keep "
                      f"one layout per split")


def read_preferences(path: str, split: str) -> list[dict]:
  """Records of ``split`` under ``path`` as text: prompt / chosen / rejected strings
  (conversations in the built-in format; 'rejected' None for unpaired records) and the
  PAIR_FIELDS they give."""
  return [{k: v for k, v in r.items() if k != "messages"}
          for r in read_files(split_files(path, split))]


def locate_record(files: Sequence[str], index: int, field: str | None = None) -> str:
  """Where record ``index`` of a split read from ``files`` comes from (errors.locate form).

  For error messages about a record found bad after reading (e.g. chosen equal
  to rejected): re-counts the records of each file, so it costs a pass over the
  files but only runs when there is something to report.
  """
  offset = index
  for file in files:
    kind = EXTENSIONS.get(os.path.splitext(file)[1])
    if kind == "jsonl":
      lines = [n for n, _ in _jsonl_lines(file)]  # it read cleanly: one record per line
      if offset < len(lines):
        return locate(file, line=lines[offset], record=offset, field=field)
      offset -= len(lines)
    else:
      count = len(read_file(file))
      if offset < count:
        return locate(file, record=offset, field=field)
      offset -= count
  return locate(", ".join(files), record=index, field=field)
