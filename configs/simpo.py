"""SimPO (Meng, Xia, Chen 2024, Eq. 6): reference-free, length-normalised rewards with a
target margin γ.

Presets (`--config=configs/simpo.py:PRESET`):
  tiny  the DPO tiny model and task with SimPO's β = 2 and γ/β = 0.5 (β is ~100x DPO's
        because the rewards are per-token means).
"""

from configs import base, dpo

def tiny(config):
  dpo.tiny(config)
  config.loss.update(beta=2.0, simpo_gamma_beta_ratio=0.5)
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("simpo", preset, PRESETS)
