"""General Preference Model (Zhang et al. 2025, arXiv 2410.02197): a 2k-dim
preference embedding at the last token and a skew-symmetric operator, so that cyclic
preferences can be represented (models/heads.py, algorithms/preference.py).

Presets (`--config=configs/gpm.py:PRESET`):
  tiny  the DPO tiny decoder with a GPM head (k = 2, τ = 0.1), trained from scratch on the
        built-in task's pairs.
"""

from configs import base, dpo

def tiny(config):
  dpo.tiny(config)
  config.loss.update(preference_tau=0.1)
  config.preference_model.update(value_dim=4, normalize=False, prompt_head=False)
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("gpm", preset, PRESETS)
