"""PRIME (Cui et al. 2025, "Process Reinforcement through Implicit Rewards", arXiv
2502.01456): PPO-clip policy updates on RLOO advantages from outcome (verifier)
rewards and an implicit PRM's process rewards.

Presets (`--config=configs/prime.py:PRESET`):
  tiny  3 rounds on the built-in task (configs/online.py): 512 prompts x 4 samples a round,
        prompts with accuracy in [0.2, 0.8] kept, clip 0.2. The implicit PRM starts as the
        SFT policy (process rewards 0 in the first rollout) and is updated on every rollout.
"""

from configs import base, online


def tiny(config):
  online.tiny_rounds(config)
  config.loss.update(ppo_clip=0.2, prime_rloo_form="code")
  return config


PRESETS = {"tiny": tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("prime", preset, PRESETS)
