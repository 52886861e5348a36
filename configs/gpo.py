"""GPO (Zhang et al. 2025, "Beyond Bradley-Terry Models: A General Preference Model for
Language Model Alignment", arXiv 2410.02197): SPPO-style self-play whose targets are
preference scores of the policy's own samples against each other.

Presets (`--config=configs/gpo.py:PRESET`):
  tiny  3 rounds on the built-in task (configs/online.py), scores s(i ≻ j) = r_i − r_j
        from the sorting verifier, the "sppo_score" loss with β = 1 (the paper's β = 1e-3
        sets targets of ±1000 nats: for 7B models trained for an epoch).
"""

from configs import base, online


def tiny(config):
  online.tiny_rounds(config)
  config.loss.update(beta=1.0, gpo_loss_type="sppo_score")
  config.online.verifier_tau = 1.0
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("gpo", preset, PRESETS)
