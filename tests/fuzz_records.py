"""Hostile preference records: hypothesis strategies and the runs that feed them to the readers.

Shared by ``tests/test_fuzz_readers.py``, which asserts that every run has its examples, and
``experiments/reliability_table.py``, which tabulates the same derandomized runs in
``docs/reliability.md``. Each example is written to a file and read back through the
project's own entry points; the contract checked for every one is:

* it loads: every record is prompt/chosen/rejected ``str`` (valid UTF-8), chosen and rejected
  are not blank, and the well-formed records written before the hostile one come back intact;
* or it raises ``data.errors.DataError`` whose message starts with the file's path (and, for
  JSON Lines, names a line at or after the hostile one).

Anything else (a ``KeyError``, ``RecursionError``, an Arrow exception, ...) propagates, and
hypothesis reports the smallest input that causes it.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import re

from hypothesis import HealthCheck, given, settings, strategies as st

from data import pipeline, readers, tfds_builders
from data.errors import DataError
from data.tokenizer import ByteTokenizer

GOOD = {"prompt": "Sort 312.", "chosen": "123", "rejected": "132"}
# derandomize: CI sees the same examples on every run (seeded from the test function's
# source), so a failure reproduces and the counts in docs/reliability.md are stable.
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example,
                                       HealthCheck.filter_too_much])


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What one example did: ``message`` is None when it loaded."""

  fmt: str
  hostile: int         # hostile records (or files of garbage) in the example
  message: str | None  # the DataError message, with the example's path replaced by FILE


# --------------------------------------------------------------------------
# Strategies

_ODD_TEXT = ["", " ", "\n\t ", "\x00", "\ufeff", "\u2028", "null", "é🙂", "<|assistant|>\n"]
_SURROGATES = ["\ud800", "\udfff", "x\udc80y"]
ROLE_NAMES = ["system", "user", "assistant", "bot", "User", "assistant ", "tool", ""]


# Strategies are built once (module level below): building st.recursive & co. inside
# every draw costs more than the reading under test.


def texts(surrogates: bool = True) -> st.SearchStrategy[str]:
  """Strings users do not expect: empty, blank, control characters, huge, lone surrogates."""
  options = [
      st.text(max_size=12),
      st.text(st.characters(codec="utf-8"), max_size=8),  # any encodable code point
      st.sampled_from(_ODD_TEXT + (_SURROGATES if surrogates else [])),
      # Huge: up to 800 KB of UTF-8 in one field.
      st.builds(lambda ch, n: ch * n, st.sampled_from(["a", " ", "é", "🙂", "\n"]),
                st.integers(2_000, 200_000)),
  ]
  if surrogates:
    options.append(st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3))
  return st.one_of(options)


def json_values(leaf_text: st.SearchStrategy[str]) -> st.SearchStrategy:
  """Arbitrary JSON-able values, nested, with keys that look like record fields."""
  keys = st.sampled_from(["prompt", "chosen", "rejected", "role", "content", ""]) | st.text(
      max_size=4)
  scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
             | leaf_text)
  return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(keys, inner, max_size=3), max_leaves=8)


TEXT = texts()
JSON = json_values(TEXT)


def messages() -> st.SearchStrategy[list]:
  """Conversations: plausible ones, bad roles, missing keys, wrong content types."""
  role = st.sampled_from(ROLE_NAMES) | TEXT | JSON
  content = TEXT | JSON
  plausible = st.fixed_dictionaries({"role": st.sampled_from(readers.ROLES),
                                     "content": TEXT})
  hostile = st.one_of(st.fixed_dictionaries({"role": role, "content": content}),
                      st.fixed_dictionaries({}, optional={"role": role, "content": content}),
                      JSON)
  return st.lists(plausible, min_size=1, max_size=4) | st.lists(plausible | hostile,
                                                                max_size=4)


MESSAGES = messages()


def records() -> st.SearchStrategy:
  """One hostile record: fields missing, mistyped, blank, identical, or not a record at all."""
  field = st.one_of(TEXT, JSON, MESSAGES)
  standard = st.fixed_dictionaries({}, optional={"prompt": field, "chosen": field,
                                                 "rejected": field, "extra": JSON})
  # Right shape, hostile text (blank, huge, control characters, lone surrogates).
  plausible = st.fixed_dictionaries({"prompt": TEXT, "chosen": TEXT, "rejected": TEXT})
  conversational = st.fixed_dictionaries({"chosen": MESSAGES, "rejected": MESSAGES},
                                         optional={"prompt": MESSAGES | field})
  identical = TEXT.map(lambda t: {"prompt": "p", "chosen": t, "rejected": t})
  return st.one_of(standard, plausible, conversational, identical, JSON)


RECORDS = records()


_JUNK = st.sampled_from([b"", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"}", b"\\",
                         b",", b"\xef\xbb\xbf"]) | st.binary(max_size=4)


def _dumps(draw, value) -> bytes:
  """JSON bytes; with ensure_ascii=False lone surrogates become invalid UTF-8 (CESU)."""
  text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
  return text.encode("utf-8", "surrogatepass")


def _mangle(draw, data: bytes) -> bytes:
  """Cuts ``data`` short or splices junk bytes (invalid UTF-8 included) into it."""
  pos = draw(st.integers(0, len(data)))
  junk = draw(_JUNK)
  return data[:pos] + junk + (b"" if draw(st.booleans()) else data[pos:])


@st.composite
def jsonl_lines(draw) -> bytes:
  """One hostile JSON Lines line (no newline inside)."""
  kind = draw(st.sampled_from(["record", "record", "mangled", "bytes", "deep", "bigint"]))
  if kind == "bytes":
    line = draw(st.binary(max_size=64))
  elif kind == "deep":  # nesting past the recursion limit
    n = draw(st.integers(1, 100_000))
    line = b"[" * n + b"]" * n
  elif kind == "bigint":  # an integer literal past Python's 4300-digit limit
    line = b'{"prompt": "p", "chosen": ' + b"7" * draw(st.integers(4000, 6000)) + b"}"
  else:
    line = _dumps(draw, draw(RECORDS))
    if kind == "mangled":
      line = _mangle(draw, line)
  return line.replace(b"\n", b" ")


# Well-formed lines of ordinary text, some identical, some with long prompts: mixed into the
# pipeline run so that tokenization, truncation and dropping see inputs that load.
ORDINARY_LINES = st.fixed_dictionaries({
    "prompt": st.text(max_size=40), "chosen": st.text(min_size=1, max_size=16),
    "rejected": st.text(min_size=1, max_size=16)}).flatmap(
        lambda r: st.sampled_from([r, dict(r, rejected=r["chosen"])])).map(
            lambda r: json.dumps(r).encode())


@st.composite
def json_files(draw) -> tuple[bytes, int, bool]:
  """(a .json file's bytes, good records before the hostile one, whether intact)."""
  k = draw(st.integers(0, 2))
  kind = draw(st.sampled_from(["list", "list", "mangled", "top"]))
  if kind == "top":  # anything at the top level, a list of garbage included
    value = draw(JSON)
  else:
    value = [GOOD] * k + [draw(RECORDS)]
  data = _dumps(draw, value)
  if draw(st.booleans()):
    data = json.dumps(json.loads(data.decode("utf-8", "surrogatepass")), indent=1,
                      ensure_ascii=True).encode() if kind != "top" else data
  if kind == "mangled":
    data = _mangle(draw, data)
  if draw(st.integers(0, 9)) == 0:
    data = b"\xef\xbb\xbf" + data  # a BOM is accepted
  return data, (k if kind != "top" else 0), kind == "list"


TEXT_UTF8 = texts(surrogates=False)


def _parquet_column(draw):
  """(arrow array of one value, or None for a missing column), of a random type."""
  import pyarrow as pa

  kind = draw(st.sampled_from(["string", "string", "binary", "int", "float", "bool", "null",
                               "list_str", "messages", "struct", "timestamp", "missing"]))
  text = TEXT_UTF8  # Arrow strings must be valid UTF-8; "binary" covers the rest
  if kind == "missing":
    return None
  if kind == "string":
    return pa.array([draw(text | st.none())], pa.string())
  if kind == "binary":
    return pa.array([draw(st.binary(max_size=16) | text.map(str.encode))], pa.binary())
  if kind == "int":
    return pa.array([draw(st.integers(-2**63, 2**63 - 1))], pa.int64())
  if kind == "float":
    return pa.array([draw(st.floats())], pa.float64())
  if kind == "bool":
    return pa.array([draw(st.booleans())], pa.bool_())
  if kind == "null":
    return pa.array([None], pa.null())
  if kind == "list_str":
    return pa.array([draw(st.lists(text, max_size=3))], pa.list_(pa.string()))
  if kind == "timestamp":  # to_pylist overflows Python's datetime
    return pa.array([draw(st.integers(-2**62, 2**62))], pa.timestamp("ms"))
  if kind == "struct":
    return pa.array([{"role": draw(text), "content": draw(st.integers(-2**63, 2**63 - 1))}])
  msg = st.fixed_dictionaries({"role": st.sampled_from(ROLE_NAMES) | text | st.none(),
                               "content": text | st.none()})
  return pa.array([draw(st.lists(msg, max_size=3))],
                  pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))


@st.composite
def parquet_files(draw) -> bytes:
  """A one-row Parquet file with columns of random types, or broken Parquet bytes."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  kind = draw(st.sampled_from(["table", "table", "table", "strings", "garbage", "truncated"]))
  if kind == "garbage":
    return draw(st.just(b"PAR1") | st.just(b"")) + draw(st.binary(max_size=64))
  if kind == "truncated":
    table = pa.Table.from_pylist([GOOD])
  elif kind == "strings":  # the standard layout, with hostile text
    columns = {f: pa.array([draw(TEXT_UTF8)], pa.string()) for f in GOOD}
    if draw(st.booleans()):  # one field as raw bytes, often not valid UTF-8
      columns[draw(st.sampled_from(list(GOOD)))] = pa.array([draw(st.binary(max_size=8))])
    table = pa.table(columns)
  else:
    columns = {f: _parquet_column(draw) for f in ("prompt", "chosen", "rejected")}
    columns = {k: v for k, v in columns.items() if v is not None} or {"x": pa.array([1])}
    table = pa.table(columns)
  buf = io.BytesIO()
  pq.write_table(table, buf)
  data = buf.getvalue()
  return data[:draw(st.integers(0, len(data) - 1))] if kind == "truncated" else data


# --------------------------------------------------------------------------
# Checks


def check_loaded(out: list[dict], good_before: int) -> None:
  """The contract for inputs that load."""
  assert out[:good_before] == [GOOD] * good_before, out[:good_before]
  for r in out:
    assert set(r) == {"prompt", "chosen", "rejected"}, r
    for field, value in r.items():
      assert isinstance(value, str), (field, value)
      value.encode("utf-8")  # no lone surrogates got through
    assert r["chosen"].strip() and r["rejected"].strip(), r


def check_refused(e: DataError, path: str, fmt: str, good_before: int) -> str:
  """The contract for refused inputs; returns the message with ``path`` replaced by FILE."""
  msg = str(e)
  assert msg.startswith(path), msg[:300]
  line = re.match(re.escape(path) + r":(\d+)", msg)
  if fmt == "jsonl" and line:
    assert int(line.group(1)) > good_before, msg[:300]
  return msg.replace(path, "FILE")  # Arrow's messages repeat the path


def _read(path: str, fmt: str, good_before: int, hostile: int) -> Outcome:
  try:
    out = readers.read_preferences(path, "train")
  except DataError as e:
    return Outcome(fmt, hostile, check_refused(e, path, fmt, good_before))
  check_loaded(out, good_before)
  return Outcome(fmt, hostile, None)


# --------------------------------------------------------------------------
# Runs: each returns one Outcome per example hypothesis ran.


def run_jsonl(directory: str, max_examples: int) -> list[Outcome]:
  """JSON Lines: 0-2 good lines, then 1-3 hostile ones."""
  outcomes, names = [], itertools.count()

  @settings(max_examples=max_examples, **SETTINGS)
  @given(good=st.integers(0, 2), lines=st.lists(jsonl_lines(), min_size=1, max_size=3))
  def one(good, lines):
    path = os.path.join(directory, f"fuzz{next(names)}.jsonl")
    good_line = json.dumps(GOOD).encode() + b"\n"
    with open(path, "wb") as f:
      f.write(good_line * good + b"\n".join(lines) + b"\n")
    outcomes.append(_read(path, "jsonl", good, len(lines)))

  one()
  return outcomes


def run_json(directory: str, max_examples: int) -> list[Outcome]:
  """A .json list of records (0-2 good, then a hostile one), mangled bytes, or a non-list."""
  outcomes, names = [], itertools.count()

  @settings(max_examples=max_examples, **SETTINGS)
  @given(file=json_files())
  def one(file):
    data, good, intact = file
    path = os.path.join(directory, f"fuzz{next(names)}.json")
    with open(path, "wb") as f:
      f.write(data)
    outcomes.append(_read(path, "json", good if intact else 0, 1))

  one()
  return outcomes


def run_parquet(directory: str, max_examples: int) -> list[Outcome]:
  """One-row Parquet files with columns of random Arrow types, or broken Parquet bytes."""
  outcomes, names = [], itertools.count()

  @settings(max_examples=max_examples, **SETTINGS)
  @given(data=parquet_files())
  def one(data):
    path = os.path.join(directory, f"fuzz{next(names)}.parquet")
    with open(path, "wb") as f:
      f.write(data)
    outcomes.append(_read(path, "parquet", 0, 1))

  one()
  return outcomes


def run_pipeline(directory: str, max_examples: int) -> list[Outcome]:
  """JSON Lines through the TFDS LocalPreferences builder, then tokenization and truncation.

  The pipeline options are drawn too; with ``on_identical_pair="error"`` an identical pair
  must be refused with a DataError naming the file and line, like a reader error.
  """
  outcomes, names = [], itertools.count()
  cache = os.path.join(directory, "tfds")
  tok = ByteTokenizer()

  @settings(max_examples=max_examples, **SETTINGS)
  @given(good=st.integers(0, 2),
         lines=st.lists(jsonl_lines() | ORDINARY_LINES, min_size=1, max_size=3),
         identical=st.sampled_from(pipeline.IDENTICAL_PAIR_MODES),
         long_prompt=st.sampled_from(pipeline.LONG_PROMPT_MODES),
         max_prompt_len=st.integers(1, 12), max_completion_len=st.integers(1, 12))
  def one(good, lines, identical, long_prompt, max_prompt_len, max_completion_len):
    d = os.path.join(directory, f"fuzz{next(names)}")
    os.makedirs(d)
    path = os.path.join(d, "train.jsonl")
    with open(path, "wb") as f:
      f.write((json.dumps(GOOD).encode() + b"\n") * good + b"\n".join(lines) + b"\n")
    try:
      source = tfds_builders.load_preference_source(d, "train", cache)
      pairs = pipeline.tokenize(source, tok, pipeline.TokenizeLimits(
          max_prompt_len=max_prompt_len, max_completion_len=max_completion_len,
          on_identical_pair=identical, on_long_prompt=long_prompt))
    except DataError as e:
      outcomes.append(Outcome("pipeline", len(lines), check_refused(e, path, "jsonl", good)))
      return
    records = list(source)
    check_loaded([{k: r[k] for k in GOOD} for r in records], good)
    assert [r["example_id"] for r in records] == list(range(len(records)))
    s = pairs.stats
    assert s.total == len(records) and s.kept == len(pairs)
    assert s.kept + s.dropped == s.total
    assert s.dropped_identical == sum(r["chosen"] == r["rejected"] for r in records)
    assert identical == "drop" or s.dropped_identical == 0
    assert long_prompt == "truncate" or s.truncated_prompt == 0
    assert long_prompt == "drop" or s.dropped_long_prompt == 0
    for p in pairs:
      assert len(p.prompt) <= max_prompt_len and p.prompt[0] == tok.bos_id
      assert 0 < max(len(p.chosen), len(p.rejected)) <= max_completion_len
      assert p.chosen.tolist() != p.rejected.tolist()
    outcomes.append(Outcome("pipeline", len(lines), None))

  one()
  return outcomes


RUNS = {"jsonl": run_jsonl, "json": run_json, "parquet": run_parquet,
        "pipeline": run_pipeline}
# Examples per run in CI (tests/test_fuzz_readers.py) and in docs/reliability.md.
EXAMPLES = {"jsonl": 1000, "json": 400, "parquet": 300, "pipeline": 200}


def refusal_kind(message: str) -> str:
  """A refusal message without its location and variable parts, for tallying."""
  kind = re.sub(r"^FILE(:\d+)?(: record \d+)?: ", "", message)
  kind = re.sub(r"unknown role .*; expected", "unknown role …; expected", kind, flags=re.S)
  kind = re.sub(r"cannot read Parquet: (.{0,60}).*", r"cannot read Parquet: \1…", kind,
                flags=re.S)
  return re.sub(r"(?<![Uu][Tt][Ff]-)\d+", "N", kind)
