"""DNO (Rosset et al. 2024, "Direct Nash Optimization", arXiv 2404.03715), the practical
DNO-Prct (Algorithm 2): sample K responses per prompt from π_t, pair the best and worst by
win-rate, and train a DPO-style loss against π_t (η = config.loss.beta).

Presets (`--config=configs/dno.py:PRESET`):
  tiny  3 rounds on the built-in task (configs/online.py): SFT warm-up, 512 prompts
        x 4 samples a round scored by the sorting verifier, 64 training steps; η = 0.1, and the
        NLL term on the chosen responses (loss.sft_weight = 1, see configs/online.py).
"""

from configs import base, online


def tiny(config):
  return online.pairwise_nll(online.tiny_rounds(config))  # η = β = 0.1, the default


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("dno", preset, PRESETS)
