"""Small worlds with known optima: the first rung of the verification ladder (DESIGN.md).

Each registered algorithm has one or more worlds: a contextual bandit with a few prompts and
a few responses, a tabular policy (`tabular`), and a target computed independently of the
loss under test (`games`). The policy is trained on the EXACT expected loss (every pair
enumerated, its probability as pair weight, soft labels where the method has them), so the
only error is the optimiser's. `run(name)` runs an algorithm's worlds and returns
`WorldResult`s; `python -m experiments.worlds` prints them as JSON lines and
`python -m experiments.verification_report` writes docs/verification.md.

Worlds, targets and criteria (details in each world function's docstring):

  dpo           BT labels -> π_ref e^(r/β)/Z                      TV ≤ 0.02
  ipo           summed log-probs -> least-squares optimum          TV ≤ 0.02
  ld_dpo        equal lengths -> KL optimum                        TV ≤ 0.02
                length-biased labels: LD drift / DPO drift         |ratio| ≤ 1/3
                the same with a shared per-token policy            |ratio| ≤ 1/3
                length-correlated data, length-blind labels        |ratio| ≤ 1/3
  dno           transitive: last iterate; cyclic: average iterate  duality gap ≤ 0.02
  inpo          transitive and cyclic, last iterate                regularised gap ≤ 0.02
  gpo           GPM score game, average iterate                    scaled gap ≤ 0.02
  gpm           cyclic tournaments                                 accuracy ≥ 0.99
  bt_reward     cyclic tournaments                                 accuracy within 0.5 ± 0.1
  t_reg         r̂ = 0 -> KL optimum                                TV ≤ 0.02
                deciding-token credit vs DPO                       share gain ≥ 0
  implicit_prm  CE and DPO, step rewards                           AUC ≥ 0.9
  prime         online, exact E[outcome]                           rise ≥ 0.3
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

from verification import game_worlds, length_worlds, offline_worlds, step_worlds
from verification.common import WorldResult, timed


def _ld_dpo_worlds() -> Iterator[WorldResult]:
  """The tabular LD-DPO worlds, the length world with a shared-parameter policy, then the
  length-correlated-data worlds."""
  return itertools.chain(offline_worlds.ld_dpo_worlds(),
                         length_worlds.shared_parameter_length_worlds(),
                         length_worlds.length_correlated_data_worlds())


WORLDS: dict[str, Callable[[], Iterator[WorldResult]]] = {
    "dpo": offline_worlds.dpo_worlds,
    "ipo": offline_worlds.ipo_worlds,
    "ld_dpo": _ld_dpo_worlds,
    "dno": game_worlds.dno_worlds,
    "inpo": game_worlds.inpo_worlds,
    "gpo": game_worlds.gpo_worlds,
    "gpm": game_worlds.gpm_worlds,
    "bt_reward": game_worlds.bt_reward_worlds,
    "t_reg": offline_worlds.t_reg_worlds,
    "implicit_prm": step_worlds.implicit_prm_worlds,
    "prime": step_worlds.prime_worlds,
}


def names() -> list[str]:
  return list(WORLDS)


def run(algorithm: str) -> list[WorldResult]:
  """Runs every world of `algorithm` (a key of WORLDS); results carry their wall time."""
  if algorithm not in WORLDS:
    raise KeyError(f"no worlds for {algorithm!r}; known: {', '.join(WORLDS)}")
  return timed(WORLDS[algorithm])
