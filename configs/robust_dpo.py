"""Robust DPO (Chowdhury et al. 2024, Eq. 8): the unbiased loss under label noise ε.

Presets (`--config=configs/robust_dpo.py:PRESET`):
  tiny  the DPO tiny model and task (configs/dpo.py) with ε = 0.1.
"""

from configs import base, dpo

PRESETS = {"tiny": dpo.tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("robust_dpo", preset, PRESETS, label_smoothing=0.1)
