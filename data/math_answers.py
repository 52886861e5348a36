"""Final-answer verification for math problems: the 0/1 reward of online RL on math.

PRIME (Cui et al. 2025, "Process Reinforcement through Implicit Rewards", arXiv
2502.01456) rewards a sampled solution with 1 when its final answer equals the
reference answer and 0 otherwise. This module is that verifier, pure Python (no sympy):

* ``extract_answer(text)``       -- the final answer a completion states, or None.
* ``normalize(answer)``          -- the canonical string form of an answer.
* ``equivalent(pred, ref)``      -- whether two answers are the same answer.
* ``reference_answer(value)``    -- a dataset record's reference answer as text.
* ``is_correct(completion, ref)`` / ``score(completion, ref)`` -- the reward, bool / 1.0-0.0.

Extraction, in this order (the first rule that yields a non-empty answer wins):

1. the LAST ``\\boxed{...}`` or ``\\fbox{...}`` with balanced braces (PRIME-RL/PRIME and
   the Qwen2.5-Math grader; Hendrycks et al. 2021's ``last_boxed_only_string``); the
   form ``\\boxed 5`` (no braces) reads up to the next ``$`` or line end. A box that
   never closes, or an empty one, is skipped and the box before it is used
   [unverified: the sources give up (None) or read to the end of the text instead];
2. GSM8K's answer line: what follows the last ``####``, up to the end of that line;
3. "the answer is X" (case-insensitive, the last occurrence): X is the ``$...$`` /
   ``\\(...\\)`` / ``\\[...\\]`` span that follows, else the rest of the line up to the
   first sentence end (a ``.`` followed by a space or the line end);
4. the last number in the text (``-`` counts as a sign only when not preceded by a
   letter, digit or closing bracket [unverified]; ``1,234`` is one number).

Normalization (``normalize``) follows the MATH benchmark's ``is_equiv`` string rules
(Hendrycks et al. 2021, hendrycks/math ``strip_string``): line breaks and all spaces
removed, ``\\!`` removed, ``\\left``/``\\right`` removed, ``^\\circ``/``^{\\circ}``
removed, ``\\$`` removed, units given as a trailing ``\\text{ unit}`` (note the space)
removed, ``\\%``/``%`` removed, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\frac12`` ->
``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``, an integer ``a/b`` -> ``\\frac{a}{b}``,
a leading ``.5`` -> ``0.5``, a short ``x=`` prefix (left side at most 2 characters)
dropped. Added here (as in Qwen2.5-Math's ``strip_string``): surrounding ``$...$``,
``\\(...\\)``, ``\\[...\\]``, ``**...**`` and a whole-string ``\\boxed{...}`` are
unwrapped, plain ``$`` is removed, a trailing ``.`` is dropped. Also added
[unverified]: the spacing commands ``\\,`` ``\\;`` ``\\:`` ``\\ `` and ``\\displaystyle``
are removed, ``°`` is removed, and ``\\text{X}`` / ``\\textbf{X}`` / ``\\mathrm{X}`` /
``\\mbox{X}`` are unwrapped to ``X`` (so ``\\text{(A)}`` equals ``(A)``). MATH's special
case ``0.5`` -> ``\\frac{1}{2}`` is not applied: numbers are compared as numbers.

Equivalence (``equivalent``):

* equal normalized strings (neither empty: an empty answer is never correct);
* or both parse as numbers and are equal: plain numbers with an optional sign,
  decimals, exponents (``1e-7``), thousands separators (``1,234``: only valid 3-digit
  groups; a bare ``1,2`` is not a number), ``\\frac{a}{b}``, ``-\\frac{a}{b}`` and
  ``a/b`` of such numbers. Values are exact fractions; two integers must be equal
  exactly, otherwise a relative tolerance of ``REL_TOL`` (1e-6) applies [unverified:
  the exact rule for integers is a choice here, so that ``10000001`` is not accepted
  for ``10000000``; Qwen2.5-Math uses ``isclose(rel_tol=1e-4)`` throughout];
* percent [unverified, a choice]: the percent sign is dropped on both sides (MATH's
  rule), so ``50%`` equals ``50``; when the REFERENCE carries a percent sign the
  fraction it denotes is accepted too (``0.5`` is correct for ``50\\%``), but a
  percentage is not accepted for a plain reference (``50%`` is wrong for ``0.5``);
* or both are tuples / intervals -- ``(...)`` or ``[...]`` with top-level commas --
  with the same brackets (``(1,2)`` is not ``[1,2]``, ``(0,1]`` is not ``(0,1)``), the
  same length and equivalent elements, compared in order; nesting is followed
  ``MAX_DEPTH`` levels deep.

Not handled (by design, no computer algebra): algebraic equivalence (``x^2+1`` vs
``1+x^2``), unordered sets, mixed numbers (``1\\frac{1}{2}``), units written as plain
words (``18 dollars`` is not ``18``), symbolic constants (``\\pi`` vs ``3.14159``).

Robustness: nothing here raises on any completion text (model output is garbage early
in training), and the work is bounded: only the last ``MAX_TEXT_CHARS`` characters of
a completion are read, every regular expression is linear (no nested quantifiers),
braces are matched by one counting pass, an answer longer than ``MAX_ANSWER_CHARS`` is
compared only as its stripped string, and a number longer than ``MAX_NUMBER_CHARS``
characters or with an exponent beyond ``MAX_EXPONENT`` is not parsed as a number (no
huge integers, no ``inf``: ``1e999`` only equals itself as a string).
"""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction

REL_TOL = 1e-6
MAX_TEXT_CHARS = 200_000     # a completion's tail that extraction reads
MAX_ANSWER_CHARS = 1_000     # longer answers are compared as stripped strings only
MAX_NUMBER_CHARS = 200       # longer digit strings are not parsed as numbers
MAX_EXPONENT = 400           # |exponent| of 1e<exponent> parsed as a number
MAX_DEPTH = 4                # tuple nesting followed by equivalent
MAX_ELEMENTS = 64            # tuple length compared element-wise

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"[{}]")
_ANSWER_IS_RE = re.compile(r"answer\s{0,8}is\b", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
_LAST_NUMBER_RE = re.compile(
    r"(?:(?<![0-9A-Za-z)\]}])-)?"
    r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE][-+]?\d+)?", re.ASCII)
_PLAIN_NUMBER_RE = re.compile(
    r"([-+]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?", re.ASCII)
_GROUPED_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", re.ASCII)
_FRAC_NUMBER_RE = re.compile(r"([-+]?)\\frac\{([^{}]*)\}\{([^{}]*)\}")
_INT_SLASH_RE = re.compile(r"(-?\d+)/(\d+)", re.ASCII)
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_SPACING_RE = re.compile(r"\\[,;: ]")
_UNIT_RE = re.compile(r"\\(?:text|mbox)\{ ")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")
_SQRT_RE = re.compile(r"\\sqrt\s*([^{\[\\\s])")
_FRAC_BARE_BOTH_RE = re.compile(r"\\frac([^{}\\A-Za-z\s])([^{}\\\s])")
_FRAC_BARE_FIRST_RE = re.compile(r"\\frac([^{}\\A-Za-z\s])")
_FRAC_BARE_SECOND_RE = re.compile(r"\\frac(\{[^{}]*\})([^{}\\\s])")
_WHITESPACE_RE = re.compile(r"\s+")
_OPEN, _CLOSE = "([{", ")]}"


# ----------------------------------------------------------------------------- extraction

def _close_brace(text: str, open_pos: int) -> int | None:
  """Index of the ``}`` matching the ``{`` at ``open_pos``, None if it never closes."""
  depth = 0
  for m in _BRACE_RE.finditer(text, open_pos):
    if m.group() == "{":
      depth += 1
    else:
      depth -= 1
      if depth == 0:
        return m.start()
  return None


def _brace_table(text: str, start: int) -> dict[int, int]:
  """``{`` position -> matching ``}`` position for every brace pair from ``start`` on."""
  stack: list[int] = []
  table: dict[int, int] = {}
  for m in _BRACE_RE.finditer(text, start):
    if m.group() == "{":
      stack.append(m.start())
    elif stack:
      table[stack.pop()] = m.start()
  return table


def _last_box(text: str) -> str | None:
  """Content of the last complete, non-empty ``\\boxed``/``\\fbox`` in ``text``."""
  starts = [m.end() for m in _BOX_RE.finditer(text)]
  table = None
  for k, pos in enumerate(reversed(starts)):
    i = pos
    while i < len(text) and text[i] in " \t":
      i += 1
    if i < len(text) and text[i] == "{":
      if k == 0:
        close = _close_brace(text, i)
      else:
        if table is None:  # one counting pass serves every earlier box
          table = _brace_table(text, starts[0])
        close = table.get(i)
      if close is None:
        continue
      content = text[i + 1:close].strip()
    else:  # "\boxed 5": up to the next "$" or the line end
      end = len(text)
      for stop in ("$", "\n"):
        j = text.find(stop, i, end)
        if j != -1:
          end = j
      content = text[i:end].strip()
    if content:
      return content
  return None


def _gsm8k_answer(text: str) -> str | None:
  idx = text.rfind("####")
  if idx == -1:
    return None
  rest = text[idx + 4:]
  return rest.split("\n", 1)[0].strip() or None


def _stated_answer(text: str) -> str | None:
  """X of the last "the answer is X"."""
  last = None
  for last in _ANSWER_IS_RE.finditer(text):
    pass
  if last is None:
    return None
  rest = text[last.end():last.end() + MAX_ANSWER_CHARS].lstrip(" \t:")
  for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if rest.startswith(opener):
      end = rest.find(closer, len(opener))
      if end != -1:
        return rest[len(opener):end].strip() or None
      rest = rest[len(opener):]
      break
  line = rest.split("\n", 1)[0]
  m = _SENTENCE_END_RE.search(line)
  if m is not None:
    line = line[:m.start()]
  answer = line.strip().strip("*").strip()
  return answer or None


def _last_number(text: str) -> str | None:
  last = None
  for last in _LAST_NUMBER_RE.finditer(text):
    pass
  return None if last is None else last.group()


def extract_answer(text: str) -> str | None:
  """The final answer ``text`` states, None if it states none.

  Rules, in order: the last balanced ``\\boxed{}``/``\\fbox{}``, GSM8K's last
  ``#### X`` line, the last "the answer is X", the last number (see the module
  docstring). Reads only the last ``MAX_TEXT_CHARS`` characters. ``bytes`` are decoded
  as UTF-8 with replacement; any other non-``str`` is a TypeError (a caller's bug,
  not model output).
  """
  if isinstance(text, (bytes, bytearray)):
    text = bytes(text).decode("utf-8", errors="replace")
  if not isinstance(text, str):
    raise TypeError(f"completion must be str, got {type(text).__name__}: {text!r:.80}")
  if len(text) > MAX_TEXT_CHARS:
    text = text[-MAX_TEXT_CHARS:]
  for rule in (_last_box, _gsm8k_answer, _stated_answer, _last_number):
    answer = rule(text)
    if answer:
      return answer
  return None


# -------------------------------------------------------------------------- normalization

def _unwrap(s: str) -> str:
  """Strips a trailing ``.`` and surrounding ``$``/``\\(``/``\\[``/``**``/``\\boxed{}``."""
  for _ in range(8):
    before = s
    if s.endswith(".") and not s.endswith(".."):
      s = s[:-1].rstrip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"),
                           ("**", "**")):
      if len(s) >= len(opener) + len(closer) and s.startswith(opener) and s.endswith(closer):
        s = s[len(opener):len(s) - len(closer)].strip()
        break
    m = _BOX_RE.match(s)
    if m is not None:
      i = m.end()
      while i < len(s) and s[i] == " ":
        i += 1
      if i < len(s) and s[i] == "{" and _close_brace(s, i) == len(s) - 1:
        s = s[i + 1:-1].strip()
    if s == before:
      break
  return s


def _strip_units(s: str) -> str:
  """MATH's ``_remove_right_units``: drops a ``\\text{ unit}`` and all after it."""
  m = _UNIT_RE.search(s)
  if m is not None and s[:m.start()].strip():
    s = s[:m.start()]
  return s


def normalize(answer: str) -> str:
  """The canonical string form of ``answer`` (MATH's ``is_equiv`` rules, module docstring).

  Answers longer than ``MAX_ANSWER_CHARS`` come back only stripped.
  """
  if not isinstance(answer, str):
    raise TypeError(f"answer must be str, got {type(answer).__name__}: {answer!r:.80}")
  s = answer.strip()
  if len(s) > MAX_ANSWER_CHARS:
    return s
  s = _WHITESPACE_RE.sub(" ", s)
  s = _unwrap(s)
  s = s.replace("\\!", "").replace("\\\\", "\\")
  s = _SPACING_RE.sub("", s).replace("\\displaystyle", "")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = _LEFT_RIGHT_RE.sub("", s)
  s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\u00b0", "")
  s = s.replace("\\$", "").replace("$", "")
  s = _strip_units(s)
  for _ in range(4):
    unwrapped = _TEXT_WRAP_RE.sub(r"\1", s)
    if unwrapped == s:
      break
    s = unwrapped
  s = s.replace("\\%", "").replace("%", "")
  s = s.replace(" .", " 0.").replace("{.", "{0.").strip()
  if s.startswith("."):
    s = "0" + s
  parts = s.split("=")
  if len(parts) == 2 and len(parts[0].strip()) <= 2:
    s = parts[1]
  s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
  s = _WHITESPACE_RE.sub("", s)
  s = _FRAC_BARE_BOTH_RE.sub(r"\\frac{\1}{\2}", s)
  s = _FRAC_BARE_FIRST_RE.sub(r"\\frac{\1}", s)
  s = _FRAC_BARE_SECOND_RE.sub(r"\\frac\1{\2}", s)
  m = _INT_SLASH_RE.fullmatch(s)
  if m is not None:
    s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
  if s.endswith(".") and not s.endswith(".."):
    s = s[:-1]
  return s


# ---------------------------------------------------------------------------- equivalence

def _plain_number(s: str) -> Fraction | None:
  if len(s) > MAX_NUMBER_CHARS:
    return None
  m = _PLAIN_NUMBER_RE.fullmatch(s)
  if m is None:
    return None
  sign, mantissa, exponent = m.groups()
  value = Fraction(mantissa.replace(",", "").rstrip(".") or "0")
  if exponent is not None:
    e = int(exponent)
    if abs(e) > MAX_EXPONENT:
      return None
    value *= Fraction(10) ** e
  return -value if sign == "-" else value


def _as_number(s: str) -> Fraction | None:
  """The value of a normalized numeric answer, None if it is not one."""
  value = _plain_number(s)
  if value is not None:
    return value
  m = _FRAC_NUMBER_RE.fullmatch(s)
  if m is not None:
    sign, num, den = m.groups()
  elif s.count("/") == 1:
    sign, (num, den) = "", s.split("/")
  else:
    return None
  a, b = _plain_number(num), _plain_number(den)
  if a is None or b is None or b == 0:
    return None
  return -(a / b) if sign == "-" else a / b


def _close(a: Fraction, b: Fraction) -> bool:
  if a == b:
    return True
  if a.denominator == 1 and b.denominator == 1:
    return False
  return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _split_tuple(s: str) -> tuple[str, str, list[str]] | None:
  """(opening, closing, elements) of ``(a,b)``-like strings, None for anything else."""
  if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
    return None
  elements, depth, start = [], 0, 1
  for i in range(1, len(s) - 1):
    c = s[i]
    if c in _OPEN:
      depth += 1
    elif c in _CLOSE:
      depth -= 1
      if depth < 0:  # "(1)+(2)": the first bracket closes early
        return None
    elif c == "," and depth == 0:
      elements.append(s[start:i])
      start = i + 1
      if len(elements) > MAX_ELEMENTS:
        return None
  if depth != 0:
    return None
  elements.append(s[start:len(s) - 1])
  return s[0], s[-1], elements


def _equivalent(predicted: str, reference: str, depth: int) -> bool:
  p, r = normalize(predicted), normalize(reference)
  if not p or not r:
    return False
  if p == r:
    return True
  if len(p) > MAX_ANSWER_CHARS or len(r) > MAX_ANSWER_CHARS:
    return False
  pv, rv = _as_number(p), _as_number(r)
  if pv is not None and rv is not None:
    return _close(pv, rv) or ("%" in reference and _close(pv, rv / 100))
  if depth < MAX_DEPTH:
    pt, rt = _split_tuple(p), _split_tuple(r)
    if (pt is not None and rt is not None and pt[:2] == rt[:2]
        and len(pt[2]) == len(rt[2])):
      return all(_equivalent(a, b, depth + 1) for a, b in zip(pt[2], rt[2]))
  return False


def equivalent(predicted: str, reference: str) -> bool:
  """Whether ``predicted`` states the same answer as ``reference``.

  Normalized strings equal, or equal numbers (exact for two integers, else within
  ``REL_TOL``; a percent reference also accepts its fraction), or tuples/intervals
  with the same brackets and equivalent elements (module docstring). False for a
  non-``str`` or empty side; never raises.
  """
  if not isinstance(predicted, str) or not isinstance(reference, str):
    return False
  try:
    return _equivalent(predicted, reference, 0)
  except (ValueError, ArithmeticError, RecursionError):  # defensive: bounded inputs
    return False


# ------------------------------------------------------------------------------- rewards

def reference_answer(value) -> str:
  """A dataset record's reference answer as text.

  * ``str``: after the last ``####`` if there is one (GSM8K's answer field), else the
    content of the last ``\\boxed{}`` if there is one (a MATH solution), else the whole
    string; stripped. A plain number with thousands separators loses them
    (``1,234`` -> ``1234``).
  * ``int`` (and other integral numbers, e.g. numpy's): its decimal digits.
  * ``float`` (and other real numbers): without a trailing ``.0`` when integral
    (``3.0`` -> ``3``), else ``repr`` (``0.75``, ``1e-07``).

  ValueError, naming the type and value, for ``bool``, ``None``, NaN, infinities, an
  empty answer [unverified: a choice, such a record is a data bug] and other types.
  """
  if isinstance(value, bool) or value is None:
    raise ValueError(f"reference answer must be str, int or float, "
                     f"got {type(value).__name__}: {value!r}")
  if isinstance(value, str):
    text = value
    if "####" in text:
      text = text[text.rfind("####") + 4:]
    elif _BOX_RE.search(text) is not None:
      boxed = _last_box(text)
      text = boxed if boxed is not None else ""
    text = text.strip()
    if not text:
      raise ValueError(f"reference answer is empty: str: {value!r:.200}")
    if _GROUPED_NUMBER_RE.fullmatch(text):
      text = text.replace(",", "")
    return text
  if isinstance(value, numbers.Integral):
    try:
      return str(int(value))
    except ValueError:  # beyond sys.get_int_max_str_digits()
      raise ValueError(f"reference answer int is too large to format "
                       f"({int(value).bit_length()} bits)") from None
  if isinstance(value, numbers.Real):
    x = float(value)
    if not math.isfinite(x):
      raise ValueError(f"reference answer must be a finite number, "
                       f"got {type(value).__name__}: {value!r}")
    if x.is_integer():
      return str(int(x))
    return repr(x)
  raise ValueError(f"reference answer must be str, int or float, "
                   f"got {type(value).__name__}: {value!r:.200}")


def is_correct(completion: str, reference) -> bool:
  """Whether ``completion``'s final answer equals ``reference``'s.

  ``extract_answer(completion)`` compared by ``equivalent`` with
  ``reference_answer(reference)``; False when the completion states no answer. Never
  raises on completion text; a bad reference raises ``reference_answer``'s ValueError.
  """
  ref = reference_answer(reference)
  answer = extract_answer(completion)
  return answer is not None and equivalent(answer, ref)


def score(completion: str, reference) -> float:
  """The PRIME outcome reward: 1.0 if ``is_correct`` else 0.0."""
  return 1.0 if is_correct(completion, reference) else 0.0
