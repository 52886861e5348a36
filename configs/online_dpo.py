"""Online DPO: DPO on best / worst pairs of the policy's own samples, against the FIXED
starting policy π_0 (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback", arXiv 2402.04792): the baseline every online table compares against. DNO is the
same round with the anchor moved to π_t.

Presets (`--config=configs/online_dpo.py:PRESET`, run with `python -m experiments.iterate`):
  tiny  3 rounds on the built-in task (configs/online.py), β = 0.1 as DNO's η, and the NLL
        term on the chosen responses (loss.sft_weight = 1, see configs/online.py).
"""

from configs import base, dno

PRESETS = dno.PRESETS  # the same task, rounds and NLL term; only the anchor differs


def get_config(preset: str = "tiny"):
  return base.algorithm_config("online_dpo", preset, PRESETS)
