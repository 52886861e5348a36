"""Bradley-Terry reward model (the baseline of the GPM paper, Zhang et al. 2025): a
scalar reward head trained with −log σ((r_w − r_l)/τ).

Presets (`--config=configs/bt_reward.py:PRESET`):
  tiny  the DPO tiny decoder with a scalar reward head, trained from scratch on the built-in
        task's pairs, τ = 1.
"""

from configs import base, dpo

def tiny(config):
  dpo.tiny(config)
  config.loss.update(preference_tau=1.0)
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("bt_reward", preset, PRESETS)
