"""Tests of data.math_answers, the 0/1 final-answer reward for online RL on math (PRIME).

What is checked:

* a table of (completion, reference, expected) cases through ``is_correct`` / ``score``:
  each extraction rule (last ``\\boxed{}``/``\\fbox{}``, GSM8K ``####``, "the answer is",
  last number), each MATH normalization rule (spaces, ``\\left``/``\\right``, ``^\\circ``,
  ``\\$``, ``\\text{ unit}``, ``\\dfrac``/``\\tfrac``, ``\\frac12``, ``a/b``, leading
  ``.5``, ``x=``, trailing ``.``), numeric equality (commas, fractions, decimals,
  tolerance, percent), tuples and intervals, and the negative cases (wrong number,
  ``0.5`` vs ``1/3``, ``\\frac{1}{2}`` vs ``\\frac{1}{3}``, ``(1,2)`` vs ``[1,2]``, an
  answer only in the middle of the text with a different last number, empty text);
* the extraction order and the helpers ``extract_answer``, ``normalize``, ``equivalent``;
* ``reference_answer``: GSM8K's ``#### 1,234`` -> ``1234``, boxed solutions, numbers, and
  the refusals (bool, None, NaN, infinity, empty, other types) with messages naming the
  type and value;
* robustness: random bytes and unicode, unbalanced braces, huge numbers (``1e999``,
  10,000-digit strings), deep nesting never raise;
* speed: 100,000-character completions (prose, adversarial braces, digits, repeated
  markers) are scored well under 0.1 s each.
"""

import math
import random
import time

import pytest

from data.math_answers import (equivalent, extract_answer, is_correct, normalize,
                               reference_answer, score)

CASES = [
  # --- extraction: boxed
  ("So the total is \\boxed{42}.", "42", True),
  ("First \\boxed{3}, on reflection \\boxed{5}.", "5", True),
  ("First \\boxed{3}, on reflection \\boxed{5}.", "3", False),
  ("Hence \\boxed{\\frac{3}{4}}", "0.75", True),
  ("Hence \\fbox{7}", "7", True),
  ("nested \\boxed{\\boxed{12}}", "12", True),
  ("unclosed last box: \\boxed{4} then \\boxed{9", "4", True),
  ("$\\boxed 8$", "8", True),
  ("\\boxed{7} and the last number is 9", "7", True),
  # --- extraction: GSM8K ####
  ("She pays 3 * 4 = 12 dollars.\n#### 12", "12", True),
  ("Total 1,000 + 234 = 1234\n#### 1,234", "The sum.\n#### 1,234", True),
  ("Total is 1234\n#### 1234", "#### 1,234", True),
  ("#### 13\nsome trailing 12", "13", True),
  # --- extraction: "the answer is"
  ("The answer is 42. I hope it is correct.", "42", True),
  ("Therefore, the answer is $\\frac{1}{2}$. Then 7 more.", "0.5", True),
  ("THE ANSWER IS: (1, 2)\nChecking: 3 and 4", "(1,2)", True),
  # --- extraction: last number
  ("We get 3 + 4 = 7", "7", True),
  ("the result is -5", "-5", True),
  ("Answer only in the middle: 42, then we compute 2 * 3 = 6", "42", False),
  ("", "0", False),
  ("I do not know.", "0", False),
  # --- MATH normalization
  ("\\boxed{x^2 + 1}", "x^2+1", True),
  ("\\boxed{y = x^2+1}", "x^2+1", True),
  ("\\boxed{x^2+2}", "x^2+1", False),
  ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})", True),
  ("\\boxed{30^\\circ}", "30", True),
  ("\\boxed{30^{\\circ}}", "30", True),
  ("\\boxed{\\$18.00}", "18", True),
  ("\\boxed{5\\text{ cm}^2}", "5", True),
  ("\\boxed{\\dfrac{1}{2}}", "\\frac12", True),
  ("\\boxed{\\tfrac{2}{3}}", "2/3", True),
  ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
  ("\\boxed{.5}", "\\frac{1}{2}", True),
  ("\\boxed{\\text{(A)}}", "(A)", True),
  ("\\boxed{\\text{(A)}}", "(B)", False),
  ("The answer is 12.", "12.", True),
  # --- numbers
  ("\\boxed{1,234}", "1234", True),
  ("\\boxed{1234.0}", "1,234", True),
  ("\\boxed{-\\frac{1}{2}}", "-0.5", True),
  ("\\boxed{\\frac{-1}{2}}", "-1/2", True),
  ("\\boxed{0.3333333}", "\\frac{1}{3}", True),
  ("\\boxed{0.5}", "1/3", False),
  ("\\boxed{\\frac{1}{2}}", "\\frac{1}{3}", False),
  ("\\boxed{0.33}", "\\frac{1}{3}", False),
  ("\\boxed{10000001}", "10000000", False),
  ("\\boxed{41}", "42", False),
  ("\\boxed{1.5e3}", "1500", True),
  # --- percent: dropped on both sides; a percent reference also accepts its fraction
  ("\\boxed{50\\%}", "50", True),
  ("\\boxed{50}", "50\\%", True),
  ("\\boxed{0.5}", "50\\%", True),
  ("\\boxed{50\\%}", "0.5", False),
  # --- tuples and intervals
  ("\\boxed{(1, 2)}", "(1,2)", True),
  ("\\boxed{(1, 2)}", "[1,2]", False),
  ("\\boxed{(0.5, 2)}", "(\\frac{1}{2},2)", True),
  ("\\boxed{(0, 1]}", "(0,1)", False),
  ("\\boxed{[0, 1)}", "[0,1)", True),
  ("\\boxed{(1, 2, 3)}", "(1,2)", False),
  ("\\boxed{(1, (2, 0.5))}", "(1,(2,1/2))", True),
  # --- non-string references
  ("\\boxed{42}", 42, True),
  ("\\boxed{0.75}", 0.75, True),
  ("\\boxed{3}", 3.0, True),
]


@pytest.mark.parametrize("completion,reference,expected", CASES)
def test_table(completion, reference, expected):
  assert is_correct(completion, reference) is expected
  assert score(completion, reference) == (1.0 if expected else 0.0)


def test_table_size():
  assert len(CASES) >= 40


def test_extraction_order():
  # boxed beats ####, "answer is" and the last number.
  assert extract_answer("The answer is 1.\n#### 2\n\\boxed{3} 4") == "3"
  # #### beats "answer is" and the last number.
  assert extract_answer("The answer is 1.\n#### 2\nthen 4") == "2"
  # "answer is" beats the last number.
  assert extract_answer("the answer is 1. Check: 2 + 2 = 4") == "1"
  assert extract_answer("we have 2 + 2 = 4") == "4"
  assert extract_answer("no digits here") is None
  assert extract_answer("") is None


def test_extract_details():
  assert extract_answer("\\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"
  assert extract_answer("\\boxed{} and 5") == "5"  # an empty box is no answer
  assert extract_answer("\\boxed{  } \\boxed{6}") == "6"
  assert extract_answer("#### \nthe answer is 3") == "3"  # an empty #### line is skipped
  assert extract_answer("the answer is $x+1$, so") == "x+1"
  assert extract_answer("the answer is **7**.") == "7"
  assert extract_answer("total 1,234,567 items") == "1,234,567"
  assert extract_answer("it is 3.14.") == "3.14"
  assert extract_answer("from 3-5") == "5"  # a minus after a digit is not a sign
  assert extract_answer("it was -2") == "-2"
  assert extract_answer(b"\\boxed{9}") == "9"
  with pytest.raises(TypeError, match="NoneType"):
    extract_answer(None)


def test_normalize():
  assert normalize(" \\left( 1 , 2 \\right) ") == "(1,2)"
  assert normalize("\\dfrac12") == "\\frac{1}{2}"
  assert normalize("\\frac1{2}") == "\\frac{1}{2}"
  assert normalize("\\frac{1}2") == "\\frac{1}{2}"
  assert normalize("3/4") == "\\frac{3}{4}"
  assert normalize("\\sqrt2") == "\\sqrt{2}"
  assert normalize("x = 3") == "3"
  assert normalize("x+y = 3") == "x+y=3"  # a longer left side is kept
  assert normalize("$\\$5.$") == "5"
  assert normalize("10\\%") == "10"
  assert normalize("0.5") == "0.5"  # numbers stay numbers (no 0.5 -> \frac{1}{2})
  for s in ["\\left( 1 , \\dfrac12 \\right)", "$x = .5$", "\\boxed{5\\text{ cm}}"]:
    assert normalize(normalize(s)) == normalize(s)


def test_equivalent():
  assert equivalent("1,234", "1234")
  assert equivalent("-0", "0")
  assert equivalent("1e-7", "0.0000001")
  assert not equivalent("1,2", "12")  # not a valid thousands grouping
  assert not equivalent("", "")
  assert not equivalent("5", "")
  assert not equivalent(None, "5")
  assert equivalent("\\frac{1}{0}", "\\frac{1}{0}")  # equal strings
  assert not equivalent("\\frac{1}{0}", "1")
  assert not equivalent("(1)+(2)", "(1)+(3)")
  assert not equivalent("x^2+1", "1+x^2")  # no algebra [unverified by design]


def test_reference_answer():
  gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,234"
  assert reference_answer(gsm8k) == "1234"
  assert reference_answer("#### 72") == "72"
  assert reference_answer("So it is $\\boxed{\\frac{3}{4}}$.") == "\\frac{3}{4}"
  assert reference_answer("  x^2+1 ") == "x^2+1"
  assert reference_answer("(1,234)") == "(1,234)"
  assert reference_answer(42) == "42"
  assert reference_answer(-7) == "-7"
  assert reference_answer(3.0) == "3"
  assert reference_answer(0.75) == "0.75"
  assert reference_answer(1e20) == "100000000000000000000"


@pytest.mark.parametrize("value,words", [
  (True, ["bool", "True"]),
  (None, ["NoneType", "None"]),
  (float("nan"), ["float", "nan"]),
  (float("inf"), ["float", "inf"]),
  ("", ["empty"]),
  ("   ", ["empty"]),
  ("#### ", ["empty"]),
  ([1, 2], ["list", "[1, 2]"]),
  (b"42", ["bytes", "b'42'"]),
  ({"answer": 1}, ["dict"]),
])
def test_reference_refusals(value, words):
  with pytest.raises(ValueError) as info:
    reference_answer(value)
  for word in words:
    assert word in str(info.value)
  with pytest.raises(ValueError):
    is_correct("\\boxed{1}", value)


def _fragments():
  return ["\\boxed{", "\\fbox{", "{", "}", "####", "the answer is ", "\\frac", "\\left(",
          "\\right)", "1,234", "%", "\\%", "$", "(", ")", "[", "]", ",", "=", "\\text{ ",
          "1e999", "-", ".", "/", "0", "9" * 50, "\\sqrt", "^\\circ", "\n", " ", "\\"]


def _check_never_raises(text):
  answer = extract_answer(text)
  assert answer is None or isinstance(answer, str)
  for reference in ["5", "(1,2)", "50\\%", "\\frac{1}{2}"]:
    assert score(text, reference) in (0.0, 1.0)
  if answer is not None:
    normalize(answer)
    assert equivalent(answer, answer) in (True, False)


def test_random_bytes_and_unicode():
  rng = random.Random(0)
  for _ in range(200):
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    _check_never_raises(raw.decode("utf-8", errors="replace"))
    _check_never_raises(raw.decode("latin-1"))
    chars = [chr(rng.randrange(0x110000)) for _ in range(rng.randrange(100))]
    _check_never_raises("".join(chars))  # lone surrogates included
    pieces = [rng.choice(_fragments()) for _ in range(rng.randrange(60))]
    _check_never_raises("".join(pieces))
    assert equivalent("".join(pieces), "".join(reversed(pieces))) in (True, False)


@pytest.mark.parametrize("text", [
  "\\boxed{" * 1000,
  "}" * 1000 + "\\boxed{5",
  "\\boxed{" * 1000 + "5",
  "{" * 1000 + "\\boxed{5}" + "}" * 3,
  "\\boxed{\\frac{1}{2}" * 500,
  "\\left(" * 2000 + "\\right)" * 1000,
])
def test_unbalanced_braces(text):
  _check_never_raises(text)


def test_huge_numbers():
  assert is_correct("\\boxed{1e999}", "1e999")  # equal strings
  assert not is_correct("\\boxed{1e999}", "2e999")  # not numbers: no inf, no 10**999
  assert not is_correct("\\boxed{1e999999999}", "1")
  assert not is_correct("\\boxed{1e-999999999}", "0")
  digits = "7" * 10_000
  assert is_correct(f"\\boxed{{{digits}}}", digits)
  assert not is_correct(f"\\boxed{{{digits}}}", digits[:-1] + "8")
  assert is_correct(f"so {digits}", digits)
  grouped = "1" + ",000" * 5000
  assert is_correct(f"total {grouped}", "1" + "000" * 5000) in (True, False)
  assert reference_answer(grouped) == "1" + "000" * 5000
  assert reference_answer(10 ** 100) == "1" + "0" * 100
  with pytest.raises(ValueError, match="int"):
    reference_answer(10 ** 20_000)  # beyond int -> str's digit limit
  _check_never_raises(digits + "." + digits + "e" + digits)
  assert equivalent("1e400", "1e400") and not equivalent("1e401", "1e400")


def test_deep_nesting():
  deep = "(" * 10_000 + "1" + ")" * 10_000
  _check_never_raises(deep)
  assert equivalent(deep, deep)
  assert not equivalent(deep, deep.replace("1", "2"))
  nested = "(" * 50 + "1,2" + ")" * 50
  assert not equivalent(nested, nested.replace("2", "3"))
  boxes = "\\boxed{" * 5000 + "5" + "}" * 5000
  assert extract_answer(boxes) == "5"
  assert is_correct(boxes, "5")
  _check_never_raises("\\frac{" * 5000 + "1" + "}" * 5000)
  _check_never_raises("\\text{" * 5000)


def _speed_texts():
  prose = ("We compute the sum step by step, carrying digits as needed. " * 1700)[:99_980]
  return {
    "prose": prose + " \\boxed{42}",
    "prose_no_answer_marker": prose + " so 42",
    "open_braces": "\\boxed" + "{" * 100_000,
    "close_braces": "}" * 100_000 + "\\boxed{42}",
    "many_boxes": "\\boxed{" * 14_000 + "x" * 2000,
    "unclosed_last_box": "\\boxed{1}" + "{a}" * 33_000 + "\\boxed{",
    "digits": "1" * 100_000,
    "grouped": "1" + ",234" * 25_000,
    "answer_is": "the answer is " * 7_200,
    "hashes": "#" * 100_000,
    "dollars": "$" * 100_000,
    "minus_dots": "-." * 50_000,
    "boxed_huge": "\\boxed{" + "(1," * 33_000 + "}",
  }


@pytest.mark.parametrize("name", sorted(_speed_texts()))
def test_speed_100k(name):
  text = _speed_texts()[name]
  assert len(text) >= 99_000
  best = math.inf
  for _ in range(3):  # best of three: the machine may be busy
    start = time.perf_counter()
    score(text, "42")
    score(text, "(1,2)")
    best = min(best, time.perf_counter() - start)
  assert best < 0.1, f"{name}: {best:.3f} s"
