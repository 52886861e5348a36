"""DNO (Rosset et al. 2024, "Direct Nash Optimization", arXiv 2404.03715), the practical
DNO-Prct (Algorithm 2): sample K responses per prompt from π_t, pair the best and worst by
win-rate, and train a DPO-style loss against π_t (η = config.loss.beta).

Presets (`--config=configs/dno.py:PRESET`):
  tiny  3 rounds on the built-in task (configs/online.py): SFT warm-up, 256 prompts
        x 4 samples scored by the sorting verifier, 32 training steps; η = 0.1.
"""

from configs import base, online

def tiny(config):
  online.tiny_rounds(config)
  config.loss.beta = 0.1
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("dno", preset, PRESETS)
