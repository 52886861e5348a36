"""Cyclic preferences: rock-paper-scissors-lizard-Spock, a task no Bradley-Terry model fits.

    records = make_records(256, seed=0)       # prompt / chosen / rejected dicts
    write_splits("/tmp/rpsls", 256, 64)       # train.jsonl, test.jsonl

Each record asks for a move and pairs two different moves, the winner as `chosen`. The five
moves form the regular tournament on five players: every move beats two and loses to two
(scissors cut paper, paper covers rock, rock crushes lizard, lizard poisons Spock, Spock
smashes scissors, scissors decapitate lizard, lizard eats paper, paper disproves Spock, Spock
vaporises rock, rock crushes scissors). A scalar reward orders the moves, and no order agrees
with more than 7 of the 10 pairs (`best_order_accuracy`), so a BT reward model's pairwise
accuracy on these pairs is at most 0.7 in expectation over a uniform mix of pairs; a General
Preference Model with one 2x2 block fits all ten (the moves at angles 2πk/5 on its circle,
s = sin(θ_i − θ_j)). This is the kind of cyclic-preference set on which Zhang et al. 2025
("Beyond Bradley-Terry Models", arXiv 2410.02197) report GPM 100% against BT 62.4% / 50.0%
(algorithms.md §5.2); theirs are built from UltraFeedback, ours is five words.
"""

from __future__ import annotations

import itertools
import json
import os
import random

# In cyclic order: each move beats the next two around the circle (indices mod 5).
MOVES = ("rock", "scissors", "lizard", "paper", "Spock")


def beats(a: str, b: str) -> bool:
  """Whether move `a` beats move `b` (the rules in the module docstring)."""
  i, j = MOVES.index(a), MOVES.index(b)
  return (j - i) % len(MOVES) in (1, 2)


PROMPT = "move:"
REPEAT = 3  # each response says its move three times: see `make_records`


def make_records(num: int, seed: int) -> list[dict]:
  """`num` prompt/chosen/rejected records, each a uniformly drawn pair of different moves,
  the winner chosen. One prompt for all: what is learnt is the moves' tournament, which train
  and test share (the test measures whether a model can hold it, not generalisation).

  Why a short prompt and each move said `REPEAT` times: in a balanced tournament every move
  wins as often as it loses, so at the point where all responses embed alike the loss's
  first-order gradient vanishes (its Bradley-Terry part is at its optimum) and a GPM must
  grow from the differences between the embeddings. A randomly initialised small decoder
  reading its last token after a long prompt and one word barely tells the moves apart, and
  stays there (measured: held-out accuracy 0.27-0.34 after 300-400 steps at lr 1e-4 to
  1e-2); with the move most of the sequence it separates them at once. The paper's GPMs start
  from pretrained LMs, whose embeddings of different responses already differ."""
  rng = random.Random(seed)
  pairs = [(a, b) for a, b in itertools.permutations(MOVES, 2) if beats(a, b)]
  records = []
  for _ in range(num):
    winner, loser = rng.choice(pairs)
    say = lambda move: f" {move}" * REPEAT  # noqa: E731
    records.append({"prompt": PROMPT, "chosen": say(winner), "rejected": say(loser)})
  return records


def write_splits(directory: str, num_train: int, num_test: int, seed: int = 0) -> str:
  """train.jsonl and test.jsonl under `directory` (a path `config.data.path` reads);
  returns `directory`."""
  os.makedirs(directory, exist_ok=True)
  for split, num, s in (("train", num_train, seed), ("test", num_test, seed + 1)):
    with open(os.path.join(directory, f"{split}.jsonl"), "w") as f:
      for record in make_records(num, s):
        f.write(json.dumps(record) + "\n")
  return directory


def best_order_accuracy() -> float:
  """The largest fraction of the ten pairs that one ranking of the moves gets right, over all
  5! rankings: the ceiling of any scalar reward (Bradley-Terry) on the tournament (0.7)."""
  pairs = [(a, b) for a, b in itertools.combinations(MOVES, 2)]
  best = 0
  for order in itertools.permutations(MOVES):
    rank = {m: r for r, m in enumerate(order)}  # lower rank = higher reward
    best = max(best, sum((rank[a] < rank[b]) == beats(a, b) for a, b in pairs))
  return best / len(pairs)
