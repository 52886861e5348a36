"""The SLiC-style hinge as TRL implements it: max(0, 1 − βh).

Presets (`--config=configs/hinge.py:PRESET`):
  tiny  the DPO tiny model and task (configs/dpo.py).
"""

from configs import base, dpo

PRESETS = {"tiny": dpo.tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("hinge", preset, PRESETS)
