"""INPO (Zhang et al. 2025, "Iterative Nash Policy Optimization", arXiv 2407.00617, Eq. 5-8 and Algorithm 1):
no-regret self-play against π_t with KL regularisation τ towards π_ref.

Presets (`--config=configs/inpo.py:PRESET`):
  tiny  3 rounds on the built-in task (configs/online.py). The paper's η = 0.0075
        targets log-ratio gaps of 1/(2η) = 67 nats, far too large for a model trained for a
        few minutes; tiny uses η = 0.1 (target 5 nats; η = 0.02 collapsed the policy, η = 0.5
        hardly moved it: docs/online.md) with the paper's τ/η = 1/3, and the NLL term on the
        chosen responses (loss.sft_weight = 1, see configs/online.py).
"""

from configs import base, online


def tiny(config):
  online.pairwise_nll(online.tiny_rounds(config))
  config.loss.update(inpo_eta=0.1, inpo_ratio=1.0 / 3.0)
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("inpo", preset, PRESETS)
