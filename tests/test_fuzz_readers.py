"""Fuzz: hostile records either load correctly or raise DataError naming the file.

The strategies and the per-example checks live in ``tests/fuzz_records.py`` (shared with
``experiments/reliability_table.py``, which lists the outcomes in docs/reliability.md). Here
each run is asserted to have executed its examples: together at least 500 hostile records
in every CI run, deterministic (``derandomize=True``).
"""

import pytest

import fuzz_records

_counts = {}


@pytest.mark.parametrize("fmt", list(fuzz_records.RUNS))
def test_hostile_records_load_or_raise_data_error(fmt, tmp_path):
  outcomes = fuzz_records.RUNS[fmt](str(tmp_path), fuzz_records.EXAMPLES[fmt])
  # hypothesis stops early only when it runs out of distinct inputs, which these
  # strategies never do; fewer examples would mean the fuzz silently shrank.
  assert len(outcomes) >= fuzz_records.EXAMPLES[fmt]
  refused = [o for o in outcomes if o.message is not None]
  # The generators must stay hostile: most examples are refused, and some load.
  assert len(refused) >= len(outcomes) // 2, len(refused)
  assert len(refused) < len(outcomes)
  _counts[fmt] = sum(o.hostile for o in outcomes)


def test_at_least_500_hostile_records_in_total():
  planned = sum(fuzz_records.EXAMPLES.values())
  assert planned >= 500
  if len(_counts) == len(fuzz_records.RUNS):  # the whole module ran: check what actually ran
    assert sum(_counts.values()) >= 500, _counts
