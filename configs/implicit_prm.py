"""Implicit PRM (Yuan et al. 2024, "Free Process Rewards without Process Labels", arXiv
2412.01981): an outcome reward r = β·log πθ/π_ref trained on answer correctness
alone, whose partial sums are process (step) rewards.

On the built-in task each chosen response is correct (label 1) and each rejected one wrong
(label 0); the "ce" objective treats them as unpaired labelled responses, "dpo" as pairs.

Presets (`--config=configs/implicit_prm.py:PRESET`):
  tiny  the DPO tiny model and task, CE objective, β = 0.05 (the official scripts' value).
"""

from configs import base, dpo

def tiny(config):
  dpo.tiny(config)
  config.loss.update(beta=0.05, prm_objective="ce")
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("implicit_prm", preset, PRESETS)
