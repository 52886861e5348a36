"""The built-in preference task: sorting digits. Needs no download.

Format (byte tokenizer friendly, prompt + completion <= 29 bytes)::

    prompt   = "sort 4 1 3 9 2:"
    chosen   = " 1 2 3 4 9"      # the digits sorted ascending
    rejected = " 1 2 4 3 9"      # same, with ONE adjacent pair of unequal digits swapped

Why it is learnable by a tiny transformer in a few hundred DPO steps: the
rejected completion always contains exactly one descent ("4 3") and the
chosen one never does, so the local rule "each digit >= the previous digit"
separates every pair. Learning it only needs the model to lower the
probability of a digit smaller than the one two tokens back -- a bigram-like
pattern one attention head can express -- and it transfers unchanged to
prompts never seen in training (other digits, other lengths). Solving the
full task (emitting the sorted multiset) is harder; that is what ``verify``
checks, for online algorithms that generate.

Splits: train and test use different seeds AND a hash partition of the
prompt space (``crc32(prompt) % 10 == 0`` is test-only), so no prompt can
ever appear in both, whatever the sizes or seeds.
"""

from __future__ import annotations

import random
import zlib

# Bump when the format or the generator changes: it keys cached TFDS copies.
TASK_VERSION = "sort-v1"

_PREFIX = "sort "
_SUFFIX = ":"
_TEST_BUCKETS = 10  # 1 in 10 prompts belongs to the test partition
_SPLIT_OFFSETS = {"train": 0, "test": 1}


def format_prompt(digits: list[int]) -> str:
  return _PREFIX + " ".join(str(d) for d in digits) + _SUFFIX


def format_completion(digits: list[int]) -> str:
  # Leading space: the completion continues the prompt "...:" as " 1 2 3".
  return "".join(f" {d}" for d in digits)


def parse_prompt(prompt: str) -> list[int]:
  """Digits of a task prompt; ValueError if ``prompt`` is not one."""
  if not (prompt.startswith(_PREFIX) and prompt.endswith(_SUFFIX)):
    raise ValueError(f"not a sorting prompt: {prompt!r}")
  fields = prompt[len(_PREFIX):-len(_SUFFIX)].split(" ")
  if not fields or not all(len(f) == 1 and f.isdigit() for f in fields):
    raise ValueError(f"not a sorting prompt: {prompt!r}")
  return [int(f) for f in fields]


def partition_of(prompt: str) -> str:
  """'test' or 'train': a stable hash partition of the prompt space."""
  return "test" if zlib.crc32(prompt.encode("utf-8")) % _TEST_BUCKETS == 0 else "train"


def verify(prompt: str, completion: str) -> bool:
  """True iff ``completion`` lists the prompt's digits in ascending order.

  Whitespace between digits is not significant (generated text may differ
  in spacing); anything else (missing, extra or unsorted digits, other
  characters) fails. Raises ValueError if ``prompt`` is not a task prompt.
  """
  want = sorted(parse_prompt(prompt))
  got = completion.split()
  return got == [str(d) for d in want]


def score(prompt: str, completion: str) -> float:
  """A graded rule-based reward in [0, 1]: 1 iff ``verify``, else partial credit.

  Partial credit is the fraction of the sorted answer's digits that the completion has in
  the right place, times ½ (so any wrong answer scores below any right one). Online rounds
  use it as the preference oracle: responses of a weak policy are rarely right, and a 0/1
  reward would leave most pairs tied.
  """
  if verify(prompt, completion):
    return 1.0
  want = [str(d) for d in sorted(parse_prompt(prompt))]
  got = completion.split()
  hits = sum(1 for w, g in zip(want, got) if w == g)
  return 0.5 * hits / max(len(want), len(got))


def _make_pair(rng: random.Random, min_digits: int, max_digits: int) -> dict | None:
  n = rng.randint(min_digits, max_digits)
  digits = [rng.randrange(10) for _ in range(n)]
  ordered = sorted(digits)
  # Only unequal neighbours make a real near miss (swapping equal digits
  # would make rejected == chosen).
  candidates = [i for i in range(n - 1) if ordered[i] != ordered[i + 1]]
  if not candidates:
    return None
  i = rng.choice(candidates)
  wrong = list(ordered)
  wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
  return {
      "prompt": format_prompt(digits),
      "chosen": format_completion(ordered),
      "rejected": format_completion(wrong),
  }


def make_examples(num: int, seed: int, *, partition: str | None = None,
                  min_digits: int = 3, max_digits: int = 6) -> list[dict]:
  """``num`` distinct-prompt preference pairs, a pure function of the arguments.

  ``partition`` ('train' / 'test' / None) restricts prompts to one side of
  the hash partition; use ``make_split`` for the standard splits.
  """
  if not 2 <= min_digits <= max_digits <= 9:
    raise ValueError(f"need 2 <= min_digits <= max_digits <= 9, got "
                     f"{min_digits}, {max_digits}")
  if partition not in (None, "train", "test"):
    raise ValueError(f"partition must be None, 'train' or 'test', got {partition!r}")
  # random.Random with an int seed is stable across Python versions.
  rng = random.Random(seed)
  out: list[dict] = []
  seen: set[str] = set()
  # Generous bound so impossible requests (more prompts than exist) fail
  # loudly instead of looping forever.
  budget = 100 * num + 10_000
  while len(out) < num:
    budget -= 1
    if budget < 0:
      raise ValueError(
          f"could not draw {num} distinct prompts with {min_digits}..{max_digits} "
          f"digits (partition={partition!r}); the prompt space is too small")
    pair = _make_pair(rng, min_digits, max_digits)
    if pair is None or pair["prompt"] in seen:
      continue
    if partition is not None and partition_of(pair["prompt"]) != partition:
      continue
    seen.add(pair["prompt"])
    out.append(pair)
  return out


def make_split(split: str, num: int, *, seed: int = 0, min_digits: int = 3,
               max_digits: int = 6) -> list[dict]:
  """The standard 'train' / 'test' split: disjoint seeds and disjoint prompts."""
  if split not in _SPLIT_OFFSETS:
    raise ValueError(f"synthetic splits are {sorted(_SPLIT_OFFSETS)}, got {split!r}")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  # 2*seed + offset: the train and test seed sets never intersect.
  return make_examples(num, 2 * seed + _SPLIT_OFFSETS[split], partition=split,
                       min_digits=min_digits, max_digits=max_digits)
