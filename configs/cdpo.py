"""Conservative DPO (Mitchell 2023, cDPO note): −(1−ε) log σ(βh) − ε log σ(−βh), labels flipped with probability ε.

Presets (`--config=configs/cdpo.py:PRESET`):
  tiny  the DPO tiny model and task (configs/dpo.py) with ε = 0.1.
"""

from configs import base, dpo

PRESETS = {"tiny": dpo.tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("cdpo", preset, PRESETS, label_smoothing=0.1)
