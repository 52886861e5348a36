"""Supervised fine-tuning on the chosen responses (token-mean NLL), the stage the online presets warm up with.

Presets (`--config=configs/sft.py:PRESET`):
  tiny  the DPO tiny model and task (configs/dpo.py).
"""

from configs import base, dpo

PRESETS = {"tiny": dpo.tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("sft", preset, PRESETS)
