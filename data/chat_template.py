"""Rendering conversations to text: a checkpoint's Jinja chat template, or the built-in format.

A Hugging Face tokenizer directory carries its model's chat template either as
``chat_template.jinja`` or under the key ``chat_template`` of ``tokenizer_config.json``
(a string, or a list of ``{"name", "template"}`` of which ``default`` is used); the file
wins when both exist, as in transformers. Templates are rendered the way transformers'
``apply_chat_template`` renders them, so a record becomes exactly the text (and, tokenized
without adding special tokens, exactly the ids) the model was trained on:

* jinja2's ``ImmutableSandboxedEnvironment`` (templates come with downloaded checkpoints:
  they are untrusted code) with ``trim_blocks``, ``lstrip_blocks`` and the ``loopcontrols``
  extension; a ``{% generation %}`` block renders its body (it only marks assistant text
  for masks in transformers);
* the globals ``raise_exception(message)`` (a template refusing a conversation, e.g. a
  system prompt it has no place for), ``strftime_now(format)``, ``dict`` and ``namespace``
  (one refusing underscore-prefixed names), and the filter ``tojson`` with
  ``ensure_ascii=False`` and ``indent`` / ``separators`` / ``sort_keys`` options;
* the variables ``messages``, ``add_generation_prompt``, ``tools`` and ``documents``
  (None), and the named special tokens (``bos_token``, ``eos_token``, ``unk_token``,
  ``sep_token``, ``pad_token``, ``cls_token``, ``mask_token``) the tokenizer defines.

Tokenizers without a template (the byte-level tokenizer of the tiny presets, a checkpoint
that ships none) render with the built-in format of ``data.readers.render_messages``.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Mapping, Sequence

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
# The special tokens transformers passes to every template, by name.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


class TemplateRefused(ValueError):
  """The template raised while rendering (its own ``raise_exception`` or a Jinja error)."""


def _raise_exception(message):
  import jinja2

  raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # Jinja's own tojson escapes HTML characters and takes no options; templates expect
  # plain JSON with non-ASCII text kept as it is.
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt):
  return datetime.datetime.now().strftime(fmt)


def _make_dict(*args, **kwargs):
  return dict(*args, **kwargs)


def _namespace_class():
  """jinja2's Namespace refusing underscore-prefixed names: a namespace is the one object a
  template can write attributes on, so dunder names would reach Python internals."""
  import jinja2

  def check(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
          f"a chat template cannot set the underscore-prefixed name {name!r} on a namespace")

  class Namespace(jinja2.utils.Namespace):

    def __init__(*args, **kwargs):  # noqa: N805 -- Namespace's own signature trick
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for name in attrs:
        check(name)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      check(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

  return Namespace


def _generation_extension():
  """The ``{% generation %}`` tag: renders its body unchanged (no assistant masks here)."""
  import jinja2.ext
  import jinja2.nodes

  class Generation(jinja2.ext.Extension):
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  return Generation


def _environment():
  import jinja2.ext
  import jinja2.sandbox

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_generation_extension(), jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                     dict=_make_dict, namespace=_namespace_class())
  return env


class ChatTemplate:
  """A compiled chat template and the special-token variables it is rendered with.

  Args:
    source: the Jinja text of the template.
    special_tokens: name -> token text, e.g. ``{"bos_token": "<s>"}`` (None values are left
      out, as transformers leaves out the tokens a tokenizer does not define).
    origin: where the template came from, for messages.
  """

  def __init__(self, source: str, special_tokens: Mapping[str, str | None] | None = None,
               origin: str = "chat template"):
    import jinja2

    self.source = source
    self.origin = origin
    self.variables = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    try:
      self._template = _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise ValueError(f"{origin}: not a valid Jinja template: {e.message} "
                       f"(line {e.lineno})") from None

  def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = False) -> str:
    """The conversation as text; TemplateRefused when the template raises."""
    import jinja2

    try:
      return self._template.render(
          messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
          tools=None, documents=None, **self.variables)
    except jinja2.exceptions.TemplateError as e:
      raise TemplateRefused(str(e)) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
      raise TemplateRefused(f"{type(e).__name__}: {e}") from None

  def __repr__(self) -> str:
    return f"ChatTemplate({self.origin!r})"


def _template_from_config(value, where: str) -> str | None:
  """The template text of a tokenizer_config ``chat_template`` value (str or named list)."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, list):
    named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(named.get("default"), str):
      return named["default"]
    raise ValueError(f"{where}: chat_template lists templates {sorted(map(str, named))} but "
                     "none named 'default'")
  raise ValueError(f"{where}: chat_template must be a string or a list of named templates, "
                   f"got {type(value).__name__}")


def load_chat_template(directory: str, config: Mapping | None,
                       special_tokens: Mapping[str, str | None]) -> ChatTemplate | None:
  """The template of a tokenizer directory, or None when it has none.

  Args:
    directory: the tokenizer directory (``chat_template.jinja`` is looked for there).
    config: the parsed ``tokenizer_config.json``, or None when there is none.
    special_tokens: the template's special-token variables.
  """
  path = os.path.join(directory, TEMPLATE_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return ChatTemplate(f.read(), special_tokens, origin=path)
  where = os.path.join(directory, CONFIG_FILE)
  source = _template_from_config((config or {}).get("chat_template"), where)
  if source is None:
    return None
  return ChatTemplate(source, special_tokens, origin=f"{where} (chat_template)")
