"""T-REG (Zhou et al. 2025, arXiv 2412.02685): DPO plus a token-level reward regulariser
whose rewards come from contrastive prompting of the reference model
(training/token_rewards.py computes them once before training).

Presets (`--config=configs/t_reg.py:PRESET`):
  tiny  the DPO tiny model and task with α = 0.25 on a DPO base. The tiny model is trained
        from scratch, so its contrastive token rewards are close to 0: the preset exercises
        the machinery; the rewards mean something from an instruction-tuned init_from.
"""

from configs import base, dpo

def tiny(config):
  dpo.tiny(config)
  config.loss.update(t_reg_alpha=0.25, t_reg_base="dpo")
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("t_reg", preset, PRESETS)
