r"""Runs algorithms in their small worlds with known optima (verification ladder, rung 1).

    python -m experiments.worlds --algorithm=dpo
    python -m experiments.worlds --algorithm=all

Prints a readable line per world (value, target, criterion, wall time, notes) and then, LAST,
one JSON object per line and world with the keys `algorithm`, `world`, `metric`, `value`,
`target`, `tolerance`, `passed` (plus `criterion` and `runtime_s`). `criterion` says how
`passed` was judged: "within" |value − target| ≤ tolerance, "at_most" value ≤ target +
tolerance, "at_least" value ≥ target − tolerance. The exit code is 0 whether or not every
world passed (the JSON says which); 2 for an unknown algorithm.

The worlds, their targets and why each target is the right one are documented in
`verification/` (start at `verification/worlds.py`).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

_ALGORITHM = flags.DEFINE_string(
    "algorithm", "all", "A registry name with worlds (see --algorithm=list), or 'all'.")


def run_all(names):
  from verification import worlds
  results = []
  for name in names:
    results.extend(worlds.run(name))
  return results


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep JAX's backend notices off the output
  from verification import worlds
  name = _ALGORITHM.value
  if name == "list":
    print("\n".join(worlds.names()))
    return
  if name != "all" and name not in worlds.WORLDS:
    print(f"error: no worlds for --algorithm={name!r}; known: all, "
          f"{', '.join(worlds.names())}", file=sys.stderr)
    sys.exit(2)
  results = run_all(worlds.names() if name == "all" else [name])
  for r in results:
    verdict = "PASS" if r.passed else ("MISS (documented)" if r.expected_shortfall else "FAIL")
    print(f"{verdict:5s} {r.algorithm}/{r.world}: {r.metric} = {r.value:.6g} "
          f"(target {r.target:.6g}, {r.criterion}, tolerance {r.tolerance:.4g}) "
          f"[{r.runtime_s:.2f} s]")
    if r.note:
      print(f"      {r.note}")
  sys.stdout.flush()
  for r in results:
    print(json.dumps(r.record(), ensure_ascii=False))


if __name__ == "__main__":
  app.run(main)
