"""LD-DPO (Liu et al. 2024, arXiv 2409.06411): DPO on a length-desensitised
likelihood, the tokens past the shorter response's length weighted by α.

Presets (`--config=configs/ld_dpo.py:PRESET`):
  tiny  the DPO tiny model and task with α = 0.5 (the paper's best value on Llama3-8B) and
        the reference weighted too (TRL >= 0.29).
"""

from configs import base, dpo

def tiny(config):
  dpo.tiny(config)
  config.loss.update(ld_alpha=0.5, ld_apply_to_ref=True)
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("ld_dpo", preset, PRESETS)
