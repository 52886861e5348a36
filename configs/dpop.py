"""DPO-Positive (Pal et al. 2024, "Smaug", arXiv 2402.13228, Eq. 3): DPO plus a penalty
λ·max(0, −ℓ_w) inside the log-sigmoid that keeps the chosen response at least as likely as
under the reference.

Presets (`--config=configs/dpop.py:PRESET`):
  tiny  the DPO tiny model and task (configs/dpo.py) with β = 0.1, λ = 50.
"""

from configs import base, dpo

PRESETS = {"tiny": dpo.tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("dpop", preset, PRESETS)
