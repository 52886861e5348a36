"""Tokenizer interface and the two implementations the project ships.

Everything downstream (the batch pipeline, generation in online algorithms)
talks to a tokenizer only through the small ``Tokenizer`` protocol below, so
a byte-level tokenizer for toy runs and a Hugging Face ``tokenizer.json`` for
real models are interchangeable.

``encode`` never adds special tokens: the pipeline decides where BOS/EOS go,
which keeps the mask arithmetic in one place (``data.pipeline``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Protocol, Sequence, runtime_checkable

from data.chat_template import SPECIAL_TOKEN_NAMES, TEMPLATE_FILE, load_chat_template


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of the code base needs from a tokenizer."""

  @property
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can emit (the model's vocab may be larger)."""
    ...

  @property
  def pad_id(self) -> int:
    ...

  @property
  def bos_id(self) -> int | None:
    """Beginning-of-sequence id, or None if the tokenizer has no BOS."""
    ...

  @property
  def eos_id(self) -> int:
    ...

  def encode(self, text: str) -> list[int]:
    """Text to ids, without any special tokens."""
    ...

  def decode(self, ids: Sequence[int]) -> str:
    """Ids to text; special tokens are skipped."""
    ...

  # Optional: `chat_template`, a data.chat_template.ChatTemplate (None or absent: the
  # conversational records render in the built-in format of data.readers); `fingerprint()`,
  # a string that changes whenever `encode` or the template could give other ids (absent:
  # tokenized splits are not cached, data/tokenized_cache.py).


def _identity(tokenizer) -> str:
  """The class and special ids of a tokenizer: a subclass that changes them (or `encode`)
  never shares a fingerprint with its base."""
  kind = type(tokenizer)
  return (f"{kind.__module__}.{kind.__qualname__} vocab={tokenizer.vocab_size} "
          f"pad={tokenizer.pad_id} bos={tokenizer.bos_id} eos={tokenizer.eos_id}")


class ByteTokenizer:
  """UTF-8 bytes as tokens: ids 0..255 are bytes, then pad=256, bos=257, eos=258.

  Needs no files, so tests and the synthetic task run anywhere. ``vocab_size``
  may exceed 259 so that it can match a model whose embedding table is
  rounded up; the extra ids are never produced by ``encode`` and are
  ignored by ``decode``.
  """

  PAD = 256
  BOS = 257
  EOS = 258
  NUM_RESERVED = 259

  def __init__(self, vocab_size: int = 512):
    if vocab_size < self.NUM_RESERVED:
      raise ValueError(
          f"ByteTokenizer needs vocab_size >= {self.NUM_RESERVED} "
          f"(256 bytes + pad/bos/eos), got {vocab_size}")
    self._vocab_size = int(vocab_size)

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self.PAD

  @property
  def bos_id(self) -> int:
    return self.BOS

  @property
  def eos_id(self) -> int:
    return self.EOS

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def fingerprint(self) -> str:
    """What its ids depend on: the class and the special ids (bytes are bytes)."""
    return _identity(self)

  def decode(self, ids: Sequence[int]) -> str:
    # Sampled sequences may contain specials or unused ids; drop them, and
    # replace (rather than fail on) byte sequences cut mid-character.
    data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return f"ByteTokenizer(vocab_size={self._vocab_size})"


# Files of a Hugging Face tokenizer directory, in the order their special
# tokens are applied; a later file overrides an earlier one, as in
# transformers (special_tokens_map.json wins over tokenizer_config.json).
_TOKENIZER_FILE = "tokenizer.json"
_SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _token_content(value) -> str | None:
  """A special token entry is either a string or a serialized AddedToken dict."""
  if value is None:
    return None
  if isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  return None


class HFTokenizer:
  """A Hugging Face ``tokenizer.json`` loaded with the ``tokenizers`` library.

  Special tokens (eos, bos, pad) are read from ``tokenizer_config.json`` and
  ``special_tokens_map.json`` when present. ``pad`` falls back to ``eos``
  (padding is always masked, so reusing eos is safe); ``bos`` may be absent.
  ``chat_template`` is the directory's ``data.chat_template.ChatTemplate``, or None.

  ``encode`` matches added tokens in the text (the ``tokenizers`` library always does,
  special or not), so the ``<|start_header_id|>`` a chat template writes becomes that one
  token, exactly as transformers' ``apply_chat_template(tokenize=True)`` tokenizes it.
  """

  def __init__(self, directory: str | os.PathLike):
    # Deferred import: `tokenizers` is only needed for real tokenizers.
    import tokenizers

    directory = os.fspath(directory)
    if os.path.basename(directory) == _TOKENIZER_FILE:
      directory = os.path.dirname(directory) or "."
    self.directory = directory
    path = os.path.join(directory, _TOKENIZER_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"HFTokenizer: {path} not found (expected a Hugging Face "
          f"tokenizer directory containing {_TOKENIZER_FILE})")
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library raises a bare Exception
      raise ValueError(f"HFTokenizer: cannot parse {path}: {e}") from e

    specials: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    tokenizer_config = None
    for name in _SPECIAL_TOKEN_FILES:
      cfg_path = os.path.join(directory, name)
      if not os.path.isfile(cfg_path):
        continue
      try:
        with open(cfg_path, encoding="utf-8") as f:
          cfg = json.load(f)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"HFTokenizer: cannot parse {cfg_path}: {e}") from e
      if not isinstance(cfg, dict):
        raise ValueError(f"HFTokenizer: {cfg_path} must hold a JSON object")
      if name == "tokenizer_config.json":
        tokenizer_config = cfg
      for key in SPECIAL_TOKEN_NAMES:
        if key in cfg:
          specials[key] = _token_content(cfg[key])
          sources[key] = cfg_path

    def token_id(key: str) -> int | None:
      token = specials.get(key)
      if token is None:
        return None
      tid = self._tok.token_to_id(token)
      if tid is None:
        raise ValueError(
            f"HFTokenizer: {key} {token!r} from {sources[key]} is not in "
            f"the vocabulary of {path}")
      return tid

    eos = token_id("eos_token")
    if eos is None:
      raise ValueError(
          f"HFTokenizer: no eos_token found for {path}; set it in "
          f"{' or '.join(os.path.join(directory, n) for n in _SPECIAL_TOKEN_FILES)}")
    self._eos = eos
    self._bos = token_id("bos_token")
    pad = token_id("pad_token")
    self._pad = eos if pad is None else pad
    # Rendered with the named special tokens as given (pad_token only when one is defined).
    self.chat_template = load_chat_template(
        directory, tokenizer_config, {k: specials.get(k) for k in SPECIAL_TOKEN_NAMES})

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def bos_id(self) -> int | None:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos

  def encode(self, text: str) -> list[int]:
    # add_special_tokens=False: the tokenizer's own post-processor (e.g. a
    # BOS template) must not fight the pipeline, which adds bos/eos itself.
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Optional fast path used by the pipeline (Rust-side parallelism)."""
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def fingerprint(self) -> str:
    """What its ids depend on: a hash of the directory's tokenizer files (the chat template
    included), the special ids, and the versions of the libraries that encode and render."""
    import jinja2
    import tokenizers

    h = hashlib.sha256(f"{_identity(self)} tokenizers={tokenizers.__version__} "
                       f"jinja2={jinja2.__version__}".encode())
    for name in (_TOKENIZER_FILE, *_SPECIAL_TOKEN_FILES, TEMPLATE_FILE):
      path = os.path.join(self.directory, name)
      if os.path.isfile(path):
        h.update(f"\0{name}\0".encode())
        with open(path, "rb") as f:
          for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

  def __repr__(self) -> str:
    return f"HFTokenizer({self.directory!r})"


def load_tokenizer(path: str) -> Tokenizer:
  """'' gives the default ``ByteTokenizer()``; anything else is a HF tokenizer directory."""
  if not path:
    return ByteTokenizer()
  return HFTokenizer(path)
